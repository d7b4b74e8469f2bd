"""trt_compat on its own: names, compute capabilities, the flavour gates and the logger, with the
real TensorRT for RTX module where it is installed (it is in the `dev` extra)."""

from __future__ import annotations

import importlib.util

import pytest

from rexport.errors import CompatibilityError, InputError
from rexport.runtime.trt_compat import (DEFAULT_RTX_TARGETS, TensorRT, format_compute_capability, load_tensorrt,
                                        parse_compute_capability, product_name)

needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                               reason="TensorRT for RTX is not installed (pip install 'rexport[rtx]')")


@pytest.mark.parametrize("text, cc", [("8.6", (8, 6)), ("12.0", (12, 0)), ("sm_89", (8, 9)), ("SM120", (12, 0)),
                                      ("121", (12, 1)), ((7, 5), (7, 5)), (" 9.0 ", (9, 0))])
def test_compute_capabilities_read_every_usual_spelling(text, cc):
    assert parse_compute_capability(text) == cc
    assert format_compute_capability(cc) == f"{cc[0]}.{cc[1]}"


@pytest.mark.parametrize("text", ["8.x", "", "eight", "8.6.1", "sm_"])
def test_a_bad_compute_capability_is_one_clear_line(text):
    with pytest.raises(InputError, match="compute capability must look like 8.6 or 12.0"):
        parse_compute_capability(text)


def test_names_and_an_unknown_flavour():
    assert product_name("tensorrt", "10.3.0.30") == "TensorRT 10.3"
    assert product_name("rtx", "1.7.1.116") == "TensorRT for RTX 1.7"
    with pytest.raises(InputError, match="TensorRT flavour must be one of tensorrt, rtx, not 'trt'"):
        load_tensorrt(flavour="trt")


@pytest.fixture(scope="module")
def rtx() -> TensorRT:
    return load_tensorrt(flavour="rtx")


@needs_rtx
def test_rtx_is_a_flavour_with_its_own_gates(rtx):
    assert rtx.rtx and not rtx.legacy and rtx.name.startswith("TensorRT for RTX 1.")
    assert set(DEFAULT_RTX_TARGETS) <= set(rtx.compute_capabilities())
    assert {"7.5", "8.6", "8.9", "12.0"} <= set(rtx.compute_capabilities())
    assert "8.7" not in rtx.compute_capabilities() and "9.0" not in rtx.compute_capabilities()
    assert rtx.network_flags("default") == rtx.network_flags("strong") == 0
    gates = [(lambda: rtx.network_flags("weak"), "a weakly typed network"),
             (lambda: rtx.require_precision_flag("FP16"), "BuilderFlag.FP16"),
             (lambda: rtx.calibrator_base("entropy"), "the INT8 calibrator"),
             (lambda: rtx.require_calibration_cache(), "a calibration cache"),
             (lambda: rtx.hardware_compatibility("ampere_plus"), "a hardware compatibility level"),
             (rtx.require_version_compatible, "a version-compatible engine"),
             (rtx.require_timing_cache, "a timing cache"),
             (lambda: rtx.check_dla(None, 0), "DLA")]
    for gate, feature in gates:
        with pytest.raises(CompatibilityError, match=f"^{feature}.* is not available on {rtx.name}; "):
            gate()
    with pytest.raises(CompatibilityError, match="cannot build for compute capability 8.7, 9.0: it builds for 7.5"):
        rtx.check_targets(("8.6", "8.7", "9.0"))
    assert rtx.check_targets(("8.6", "12.0")) == ("8.6", "12.0")


@needs_rtx
def test_one_bounded_logger_per_module(rtx):
    """TensorRT keeps the first logger it was given, so rexport has one per module; it keeps only
    the last messages above VERBOSE, and explains what came after a mark."""
    severity = rtx.trt.ILogger.Severity
    logger = rtx.make_logger()
    assert load_tensorrt(flavour="rtx").make_logger() is logger
    mark = logger.mark()
    for i in range(1500):
        logger.log(severity.INFO, f"info {i}")
        logger.log(severity.VERBOSE, f"verbose {i}")
    assert len(logger.messages) == 1000 and all(s != "VERBOSE" for _, s, _ in logger.messages)
    logger.log(severity.ERROR, "first error\nwith a second line")
    after = logger.mark()
    assert logger.explain(mark) == "first error"
    assert logger.explain(after) == "TensorRT logged no reason (run with -v to see its full log)"
    logger.log(severity.WARNING, "a warning")
    assert logger.explain(after) == "no error was logged; the last warning: a warning"
    logger.log(severity.INTERNAL_ERROR, "broken")
    assert logger.errors(after) == ["broken"]
