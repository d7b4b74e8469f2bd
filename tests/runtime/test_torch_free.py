"""The runtime works on a device without torch: nothing heavy is imported until it is needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd)


def test_importing_the_runtime_imports_no_torch_onnx_or_tensorrt(tmp_path):
    proc = run_python("""
        import json, sys
        import rexport.runtime
        from rexport.runtime import load, Predictor, Prediction
        import rexport.runtime.bundle, rexport.runtime.archive, rexport.runtime.manifest, rexport.runtime.selftest
        import rexport.runtime.bench, rexport.runtime.validate, rexport.runtime.inspect
        import rexport.runtime.backends.tensorrt, rexport.runtime.backends.openvino, rexport.runtime.trt_compat
        import rexport.runtime.environment
        import rexport.calibration
        heavy = [m for m in ("torch", "onnx", "tensorrt", "onnxruntime", "openvino", "cuda") if m in sys.modules]
        print(json.dumps(heavy))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


BLOCK_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name == "torchvision":
            raise ImportError(f"No module named {name!r} (blocked: this device has no torch)")
        return None

sys.meta_path.insert(0, NoTorch())
"""


def test_a_bundle_runs_with_torch_unimportable(demo_bundle, tmp_path):
    image = tmp_path / "digit.png"
    from PIL import Image

    from rexport.demo import data

    test = data.split("test")
    Image.fromarray(test.images[5], "L").save(image)
    proc = run_python(BLOCK_TORCH + f"""
import json
try:
    import torch
    raise SystemExit("torch imported although it was blocked")
except ImportError:
    pass
from rexport.runtime import load
with load({str(demo_bundle)!r}, model="int8") as model:
    prediction = model.predict({str(image)!r})
    report = model.selftest()
print(json.dumps({{"label": prediction.label, "selftest": report.passed,
                   "torch": "torch" in sys.modules}}))
""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"label": str(test.labels[5]), "selftest": True, "torch": False}


def test_the_cli_runtime_commands_work_without_torch(demo_bundle, tmp_path):
    proc = run_python(BLOCK_TORCH + f"""
import sys
from rexport.cli import main
sys.argv = ["rexport", "selftest", {str(demo_bundle)!r}]
main()
""", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
