"""The model zoo: every ResNet-family architecture rexport can export, by name.

One `ResNet` class builds all of them from a block type, a list of stage depths and a few
switches, the way torchvision's does:

- ImageNet ResNet / ResNeXt / Wide ResNet (torchvision-compatible: identical state-dict keys,
  shapes and forward; stride on the 3x3 conv, "ResNet v1.5");
- the ResNet paper's CIFAR networks (6n+2 layers, 16/32/64 channels, 32x32 input) with
  shortcut option A (parameter-free: stride-2 subsampling + zero-padded channels) or B
  (1x1 projection where the shape changes);
- pre-activation ResNets ("Identity Mappings in Deep Residual Networks": BN-ReLU-conv order,
  a final BN-ReLU before pooling; projection shortcuts);
- plain (no-shortcut) counterparts for the paper's degradation comparison.

State-dict keys follow torchvision's naming everywhere: `conv1`, `bn1`, `layer{s}.{i}.conv{k}`,
`layer{s}.{i}.bn{k}`, `layer{s}.0.downsample.{0,1}`, `fc`; pre-activation networks add
`bn_final`. Users' checkpoints depend on these names: they are a public contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
import torch.nn.functional as F
from torch import nn

from rexport.errors import InputError


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ShortcutA(nn.Module):
    """The ResNet paper's option A: identity with stride-2 subsampling and zero-padded
    extra channels. No parameters, so no state-dict keys."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        if (out_planes - in_planes) % 2:
            raise ValueError("option-A shortcuts need an even channel increase")
        self.stride = stride
        self.pad = (out_planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convs. `downsample` is the shortcut where the shape changes (projection or
    option A); `residual=False` gives the plain network's block."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 residual: bool = True):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu2(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, stride here as in torchvision), 1x1 expand."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 residual: bool = True):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu3(out)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv twice; a projection shortcut takes the pre-activated input."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 residual: bool = True):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("PreActBasicBlock supports only groups=1 and base_width=64")
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut if self.residual else out


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 residual: bool = True):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(inplanes, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + shortcut if self.residual else out


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock] | type[PreActBottleneck]


class ResNet(nn.Module):
    """Stem -> stages of blocks -> (final BN-ReLU for pre-activation) -> pool -> fc.

    stem="imagenet": 7x7/2 conv (+BN-ReLU unless pre-activation) and 3x3/2 max-pool;
    stem="cifar": 3x3/1 conv (+BN-ReLU unless pre-activation).
    shortcut="B": 1x1 projection (+BN unless pre-activation) where the shape changes;
    shortcut="A": parameter-free subsample + zero-pad (CIFAR, as in the ResNet paper);
    shortcut="none": the plain network.
    """

    def __init__(self, block: Block, layers: list[int], *, widths: tuple[int, ...] = (64, 128, 256, 512),
                 stem: str = "imagenet", shortcut: str = "B", preact: bool = False,
                 num_classes: int = 1000, in_channels: int = 3, groups: int = 1,
                 width_per_group: int = 64, zero_init_residual: bool = False):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError("one stage depth per stage width")
        if shortcut not in ("A", "B", "none"):
            raise ValueError(f"shortcut must be 'A', 'B' or 'none', not {shortcut!r}")
        self.preact = preact
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, stride=2, padding=3, bias=False)
        elif stem == "cifar":
            self.conv1 = conv3x3(in_channels, self.inplanes)
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', not {stem!r}")
        if not preact:
            self.bn1 = nn.BatchNorm2d(self.inplanes)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None
        for i, (width, depth) in enumerate(zip(widths, layers)):
            stage = self._make_layer(block, width, depth, 1 if i == 0 else 2, shortcut)
            setattr(self, f"layer{i + 1}", stage)
        self.num_stages = len(layers)
        features = widths[-1] * block.expansion
        if preact:
            self.bn_final = nn.BatchNorm2d(features)
            self.relu_final = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual and not preact:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if shortcut != "none" and (stride != 1 or self.inplanes != out_planes):
            if shortcut == "A":
                downsample = ShortcutA(self.inplanes, out_planes, stride)
            elif self.preact:
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, stride))
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, stride),
                                           nn.BatchNorm2d(out_planes))
        residual = shortcut != "none"
        kwargs = dict(groups=self.groups, base_width=self.base_width, residual=residual)
        stage = [block(self.inplanes, planes, stride, downsample, **kwargs)]
        self.inplanes = out_planes
        stage += [block(self.inplanes, planes, **kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.preact:
            x = self.relu(self.bn1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        if self.preact:
            x = self.relu_final(self.bn_final(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Arch:
    """One public architecture name and how to build it."""

    name: str
    family: str
    block: Block
    layers: tuple[int, ...]
    input_size: int  # default square input side
    num_classes: int  # default number of classes (ImageNet 1000, CIFAR 10)
    options: dict = field(default_factory=dict)  # fixed ResNet(...) keyword arguments
    shortcuts: tuple[str, ...] = ()  # user-selectable shortcut options, first is the default

    @property
    def cifar(self) -> bool:
        return self.options.get("stem") == "cifar"

    def build(self, *, num_classes: int | None = None, in_channels: int = 3,
              shortcut: str | None = None, zero_init_residual: bool = False) -> ResNet:
        options = dict(self.options)
        if shortcut is not None:
            if shortcut not in self.shortcuts:
                allowed = ", ".join(self.shortcuts) or "none (the shortcut is fixed)"
                raise InputError(f"{self.name} does not take shortcut {shortcut!r}; choices: {allowed}")
            options["shortcut"] = shortcut
        elif self.shortcuts:
            options["shortcut"] = self.shortcuts[0]
        if num_classes is not None and num_classes < 1:
            raise InputError(f"num_classes must be at least 1, not {num_classes}")
        if in_channels < 1:
            raise InputError(f"in_channels must be at least 1, not {in_channels}")
        return ResNet(self.block, list(self.layers), num_classes=num_classes or self.num_classes,
                      in_channels=in_channels, zero_init_residual=zero_init_residual, **options)


ARCHS: dict[str, Arch] = {}


def _register(name: str, family: str, block: Block, layers, *, cifar: bool = False,
              shortcuts: tuple[str, ...] = (), **options) -> None:
    if cifar:
        options = {"stem": "cifar", "widths": (16, 32, 64), **options}
    ARCHS[name] = Arch(name, family, block, tuple(layers), 32 if cifar else 224,
                       10 if cifar else 1000, options, shortcuts)


_IMAGENET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
                    50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
                    152: (Bottleneck, (3, 8, 36, 3))}
_PREACT_BLOCK = {BasicBlock: PreActBasicBlock, Bottleneck: PreActBottleneck}

for _depth, (_block, _layers) in _IMAGENET_DEPTHS.items():
    _register(f"resnet{_depth}", "resnet", _block, _layers)
_register("resnext50_32x4d", "resnext", Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4)
_register("resnext101_32x8d", "resnext", Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=8)
_register("resnext101_64x4d", "resnext", Bottleneck, (3, 4, 23, 3), groups=64, width_per_group=4)
_register("wide_resnet50_2", "wide_resnet", Bottleneck, (3, 4, 6, 3), width_per_group=128)
_register("wide_resnet101_2", "wide_resnet", Bottleneck, (3, 4, 23, 3), width_per_group=128)
for _depth in (20, 32, 44, 56, 110, 1202):  # 6n+2 layers
    _register(f"resnet{_depth}", "cifar_resnet", BasicBlock, [(_depth - 2) // 6] * 3, cifar=True,
              shortcuts=("A", "B"))
for _depth, (_block, _layers) in _IMAGENET_DEPTHS.items():
    _register(f"preact_resnet{_depth}", "preact_resnet", _PREACT_BLOCK[_block], _layers, preact=True)
_register("preact_resnet110", "preact_cifar", PreActBasicBlock, (18, 18, 18), cifar=True, preact=True)
for _depth in (164, 1001):  # 9n+2 layers, bottleneck blocks
    _register(f"preact_resnet{_depth}", "preact_cifar", PreActBottleneck, [(_depth - 2) // 9] * 3,
              cifar=True, preact=True)
for _depth, (_block, _layers) in _IMAGENET_DEPTHS.items():
    _register(f"plain{_depth}", "plain", _block, _layers, shortcut="none")
for _depth in (20, 32, 44, 56, 110):
    _register(f"plain{_depth}", "plain_cifar", BasicBlock, [(_depth - 2) // 6] * 3, cifar=True,
              shortcut="none")


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, ARCHS, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(f"unknown arch {name!r}; {hint}run `rexport models` to list them") from None


def build_model(arch: str, *, num_classes: int | None = None, in_channels: int = 3,
                shortcut: str | None = None, zero_init_residual: bool = False) -> ResNet:
    """Build an architecture by name, randomly initialised, in train mode (like torchvision).

    `num_classes` defaults to the arch's dataset (1000 for ImageNet-size, 10 for CIFAR);
    `shortcut` is "A" or "B" for the CIFAR ResNets (default "A", as in the paper).
    """
    return get_arch(arch).build(num_classes=num_classes, in_channels=in_channels,
                                shortcut=shortcut, zero_init_residual=zero_init_residual)


def state_dict_shapes(arch: str, *, num_classes: int | None = None, in_channels: int = 3,
                      shortcut: str | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the arch's state dict, computed without allocating weights."""
    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def count_parameters(arch: str, **kwargs) -> int:
    with torch.device("meta"):
        model = build_model(arch, **kwargs)
    return sum(p.numel() for p in model.parameters())


def list_models() -> list[Arch]:
    return list(ARCHS.values())

