from __future__ import annotations

import pytest


@pytest.fixture
def realistic_model():
    """A zoo model with deterministic, realistically scaled weights and BN statistics."""
    from helpers import deterministic_state_dict

    from rexport.exporter import build_model

    def make(arch: str, **kwargs):
        model = build_model(arch, **kwargs)
        model.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}))
        return model.eval()

    return make
