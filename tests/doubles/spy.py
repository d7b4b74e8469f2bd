"""PipelineSpy: records what `rexport trt` asks of the rest of rexport, then calls the real code.

exporter/tensorrt.py imports rexport.calibration.to_fp16 / quantize,
rexport.runtime.data.load_dataset and rexport.runtime.validate.validate_backends when
it needs them. The spy replaces those module attributes (monkeypatch restores them) with wrappers
that record each call, its arguments bound to the real signature (defaults filled in), and its
result or exception, and otherwise return what the real function returned. Nothing is faked: the
FP16 and Q/DQ ONNX files, the calibration data and the validation reports are rexport's own.

Only the calls the builder makes itself are recorded (quantize loading its own data is not).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import rexport.calibration
import rexport.runtime.data
import rexport.runtime.validate

SPIED = {"to_fp16": rexport.calibration, "quantize": rexport.calibration,
         "load_dataset": rexport.runtime.data, "validate_backends": rexport.runtime.validate}


@dataclass
class Call:
    name: str
    arguments: dict[str, Any]  # by parameter name, defaults applied
    result: Any = None
    error: BaseException | None = None

    def __getitem__(self, parameter: str) -> Any:
        return self.arguments[parameter]


@dataclass
class PipelineSpy:
    calls: list[Call] = field(default_factory=list)

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def calls_to(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def only(self, name: str) -> Call:
        calls = self.calls_to(name)
        assert len(calls) == 1, f"expected one call to {name}, got {len(calls)} (all calls: {self.names()})"
        return calls[0]

    def wrap(self, name: str, real):
        signature = inspect.signature(real)

        @functools.wraps(real)
        def spy(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            call = Call(name, dict(bound.arguments))
            self.calls.append(call)
            try:
                call.result = real(*args, **kwargs)
            except BaseException as e:
                call.error = e
                raise
            return call.result

        return spy


def install_pipeline_spy(monkeypatch) -> PipelineSpy:
    spy = PipelineSpy()
    for name, module in SPIED.items():
        monkeypatch.setattr(module, name, spy.wrap(name, getattr(module, name)))
    return spy
