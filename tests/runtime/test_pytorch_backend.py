"""PyTorch behind the Backend interface: the reference of parity, validate and bundles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rexport.demo import data
from rexport.errors import InputError
from rexport.runtime import load
from rexport.runtime.backends.pytorch import PyTorchBackend


def test_it_checks_inputs_like_every_backend_and_matches_the_onnx(demo_fp32):
    with load(demo_fp32, backend="onnxruntime") as onnx:
        torch_model = PyTorchBackend.from_checkpoint(data.WEIGHTS_FILE, onnx.info)
        assert torch_model.name == f"PyTorch FP32 ({data.WEIGHTS_FILE.name})"
        x = np.random.default_rng(0).standard_normal((5, *onnx.info.input_shape), dtype=np.float32)
        np.testing.assert_allclose(torch_model.run(x), onnx.run(x), atol=1e-4, rtol=1e-4)
        with pytest.raises(InputError, match="input has shape"):
            torch_model.run(x[:, :, :-1])
        with pytest.raises(InputError, match="NaN or Inf"):
            torch_model.run(np.full_like(x, np.nan))
        with pytest.raises(InputError, match="does not record its arch"):
            PyTorchBackend.from_checkpoint(data.WEIGHTS_FILE, dataclasses.replace(onnx.info, arch=""))
