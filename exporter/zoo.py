"""The model zoo: every ResNet-family architecture rexport can export, by name.

One `ResNet` class builds all of them from a block kind, a list of stage depths and a few
switches, the way torchvision's does. There are two block kinds, `BasicBlock` (two 3x3 convs)
and `Bottleneck` (1x1-3x3-1x1); both are a `Block`, which writes the conv-BN-ReLU units, their
pre-activation order (`preact=True`), the shortcut and the plain variant once. The arch names
are written out in one table at the end (`_imagenet`, `_cifar` and `_register` rows), so that
grepping for a name finds its definition. The families:

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


class Block(nn.Module):
    """A chain of units, one per conv, around a shortcut; BasicBlock and Bottleneck give the convs.

    Post-activation (the ResNet paper, torchvision): unit k is conv{k}-bn{k}-relu{k}, and the
    last ReLU comes after the addition. Pre-activation: unit k is bn{k}-relu{k}-conv{k}, the sum
    is the output, and a projection shortcut takes the first pre-activated input.
    `downsample` is the shortcut where the shape changes (projection or option A);
    `residual=False` gives the plain network's block. The numbered names are torchvision's
    state-dict keys (and the ONNX node names), so the units are attributes fetched by number.
    """

    def __init__(self, convs: list[nn.Conv2d], downsample: nn.Module | None = None, *,
                 preact: bool = False, residual: bool = True):
        super().__init__()
        self.preact, self.residual, self.depth = preact, residual, len(convs)
        order = ("bn", "relu", "conv") if preact else ("conv", "bn", "relu")
        for k, conv in enumerate(convs, 1):
            unit = {"conv": conv, "relu": nn.ReLU(inplace=True),
                    "bn": nn.BatchNorm2d(conv.in_channels if preact else conv.out_channels)}
            for name in order:
                self.add_module(f"{name}{k}", unit[name])
        self.downsample = downsample

    def unit(self, k: int) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.ReLU]:
        return getattr(self, f"conv{k}"), getattr(self, f"bn{k}"), getattr(self, f"relu{k}")

    def zero_init_last(self) -> None:
        """Zero the last BN's scale, so that a post-activation block starts as its shortcut."""
        _, bn, _ = self.unit(self.depth)
        nn.init.constant_(bn.weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = [self.unit(k) for k in range(1, self.depth + 1)]
        out = shortcut = x
        if self.preact:  # BN-ReLU-conv per unit; the sum is the output
            for k, (conv, bn, relu) in enumerate(units):
                out = relu(bn(out))
                if k == 0 and self.downsample is not None:
                    shortcut = self.downsample(out)  # a projection sees the pre-activated input
                out = conv(out)
            return out + shortcut if self.residual else out
        for conv, bn, relu in units[:-1]:  # conv-BN-ReLU per unit; the last ReLU after the sum
            out = relu(bn(conv(out)))
        conv, bn, relu = units[-1]
        out = bn(conv(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return relu(out)


class BasicBlock(Block):
    """Two 3x3 convs (ResNet-18/34, the CIFAR ResNets)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, *, preact: bool = False, residual: bool = True):
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        super().__init__([conv3x3(inplanes, planes, stride), conv3x3(planes, planes)], downsample,
                         preact=preact, residual=residual)


class Bottleneck(Block):
    """1x1 reduce, 3x3 (grouped for ResNeXt, stride here as in torchvision), 1x1 expand."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, *, preact: bool = False, residual: bool = True):
        width = int(planes * (base_width / 64.0)) * groups
        convs = [conv1x1(inplanes, width), conv3x3(width, width, stride, groups),
                 conv1x1(width, planes * self.expansion)]
        super().__init__(convs, downsample, preact=preact, residual=residual)


# The pre-activation blocks' names before `preact=` replaced them: full pickles of older models
# (--unsafe-pickle reads their state dict) still find their classes.
PreActBasicBlock, PreActBottleneck = BasicBlock, Bottleneck


class ResNet(nn.Module):
    """Stem -> stages of blocks -> (final BN-ReLU for pre-activation) -> pool -> fc.

    stem="imagenet": 7x7/2 conv (+BN-ReLU unless pre-activation) and 3x3/2 max-pool;
    stem="cifar": 3x3/1 conv (+BN-ReLU unless pre-activation).
    shortcut="B": 1x1 projection (+BN unless pre-activation) where the shape changes;
    shortcut="A": parameter-free subsample + zero-pad (CIFAR, as in the ResNet paper);
    shortcut="none": the plain network.
    """

    def __init__(self, block: type[Block], layers: list[int], *, widths: tuple[int, ...] = (64, 128, 256, 512),
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
            if getattr(m, "weight", None) is not None and m.weight.is_meta:
                continue  # shapes only (count_parameters, state_dict_shapes): nothing to initialise
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual and not preact:
            for m in self.modules():
                if isinstance(m, Block):
                    m.zero_init_last()

    def _make_layer(self, block: type[Block], planes: int, blocks: int, stride: int,
                    shortcut: str) -> nn.Sequential:
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
        kwargs = dict(groups=self.groups, base_width=self.base_width, preact=self.preact, residual=residual)
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
    block: type[Block]
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

# What the archs of a family share: `cifar` (3x3 stem, 16/32/64 channels, 32x32 input, 10 classes;
# otherwise ImageNet's 224x224 and 1000 classes), the `shortcuts` a user may choose (first is the
# default), and fixed ResNet(...) options. ARCHS lists the families in this order.
_FAMILIES: dict[str, dict] = {
    "resnet": {},
    "resnext": {},
    "wide_resnet": {"width_per_group": 128},
    "cifar_resnet": {"cifar": True, "shortcuts": ("A", "B")},
    "preact_resnet": {"preact": True},
    "preact_cifar": {"cifar": True, "preact": True},
    "plain": {"shortcut": "none"},
    "plain_cifar": {"cifar": True, "shortcut": "none"},
}


def _register(name: str, family: str, block: type[Block], layers: tuple[int, ...], **options) -> None:
    """Add one arch: its family's settings plus its own ResNet(...) options."""
    options = {**_FAMILIES[family], **options}
    cifar, shortcuts = options.pop("cifar", False), options.pop("shortcuts", ())
    if cifar:
        options = {"stem": "cifar", "widths": (16, 32, 64), **options}
    ARCHS[name] = Arch(name, family, block, layers, 32 if cifar else 224, 10 if cifar else 1000,
                       options, shortcuts)


def _imagenet(resnet: str, preact: str, plain: str, block: type[Block], layers: tuple[int, ...]) -> None:
    _register(resnet, "resnet", block, layers)
    _register(preact, "preact_resnet", block, layers)
    _register(plain, "plain", block, layers)


def _cifar(resnet: str, plain: str, layers: tuple[int, ...]) -> None:
    _register(resnet, "cifar_resnet", BasicBlock, layers)
    _register(plain, "plain_cifar", BasicBlock, layers)


# Every public name. torchvision's ImageNet depths, each also with pre-activation blocks and plain:
#         ResNet       pre-activation      plain       block       blocks per stage
_imagenet("resnet18",  "preact_resnet18",  "plain18",  BasicBlock, (2, 2, 2, 2))
_imagenet("resnet34",  "preact_resnet34",  "plain34",  BasicBlock, (3, 4, 6, 3))
_imagenet("resnet50",  "preact_resnet50",  "plain50",  Bottleneck, (3, 4, 6, 3))
_imagenet("resnet101", "preact_resnet101", "plain101", Bottleneck, (3, 4, 23, 3))
_imagenet("resnet152", "preact_resnet152", "plain152", Bottleneck, (3, 8, 36, 3))
_register("resnext50_32x4d", "resnext", Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4)
_register("resnext101_32x8d", "resnext", Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=8)
_register("resnext101_64x4d", "resnext", Bottleneck, (3, 4, 23, 3), groups=64, width_per_group=4)
_register("wide_resnet50_2", "wide_resnet", Bottleneck, (3, 4, 6, 3))
_register("wide_resnet101_2", "wide_resnet", Bottleneck, (3, 4, 23, 3))
# The ResNet paper's CIFAR nets (6n+2 layers: n basic blocks per stage), each also plain:
_cifar("resnet20",  "plain20",  (3, 3, 3))
_cifar("resnet32",  "plain32",  (5, 5, 5))
_cifar("resnet44",  "plain44",  (7, 7, 7))
_cifar("resnet56",  "plain56",  (9, 9, 9))
_cifar("resnet110", "plain110", (18, 18, 18))
_register("resnet1202", "cifar_resnet", BasicBlock, (200, 200, 200))
# "Identity Mappings"' CIFAR nets: 110 layers of basic blocks; 9n+2 layers of bottlenecks
_register("preact_resnet110", "preact_cifar", BasicBlock, (18, 18, 18))
_register("preact_resnet164", "preact_cifar", Bottleneck, (18, 18, 18))
_register("preact_resnet1001", "preact_cifar", Bottleneck, (111, 111, 111))
# family by family, in _FAMILIES's order (a row above registers several families)
ARCHS = dict(sorted(ARCHS.items(), key=lambda item: list(_FAMILIES).index(item[1].family)))


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

