from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_fp32(tmp_path_factory) -> Path:
    """The embedded demo model (real trained weights) as an FP32 rexport ONNX."""
    from rexport.demo import data
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_model

    out = tmp_path_factory.mktemp("demo") / "demo.onnx"
    export_onnx(load_model(data.WEIGHTS_FILE, data.ARCH), out,
                ExportConfig(arch=data.ARCH, labels=data.LABELS, preprocess=data.demo_preprocess(),
                             parity=ParityConfig(enabled=False)))
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export a zoo arch with deterministic weights: exported("resnet18") -> path (64x64 for ImageNet archs)."""
    from helpers import deterministic_state_dict

    from rexport.exporter import ExportConfig, ParityConfig, build_model, export_onnx
    from rexport.exporter.checkpoint import LoadedModel
    from rexport.exporter.zoo import get_arch

    cache: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            model = build_model(arch)
            model.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}))
            spec = get_arch(arch)
            out = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
            export_onnx(LoadedModel(model.eval(), arch, spec.num_classes, 3, {}, None, []), out,
                        ExportConfig(arch=arch, input_size=None if spec.cifar else (64, 64),
                                     parity=ParityConfig(enabled=False)))
            cache[arch] = out
        return cache[arch]

    return make
