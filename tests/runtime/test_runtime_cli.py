"""`rexport bundle / predict / inspect / selftest / bench` from the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import assert_clean_error
from rexport.runtime.bench import BenchConfig, bench, measure
from rexport.runtime.manifest import save_manifest


def test_bundle_predict_inspect_selftest(run_cli, tmp_path, demo_fp32):
    from PIL import Image

    from rexport.demo import data

    test = data.split("test")
    images = tmp_path / "images"
    for i in range(5):
        (images / str(test.labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i], "L").save(images / str(test.labels[i]) / f"{i}.png")
    made = run_cli("bundle", demo_fp32, "-o", "b", "--val-data", images, "--checkpoint", data.WEIGHTS_FILE)
    assert made.exit_code == 0, made
    assert "PyTorch FP32" in made.stdout

    files = sorted(str(p) for p in images.rglob("*.png"))
    predicted = run_cli("predict", "b", *files, "-k", "2", "--json", "-")
    assert predicted.exit_code == 0, predicted
    top = {f: r["top"][0]["label"] for f, r in json.loads(predicted.stdout).items()}
    assert all(top[f] == f.split("/")[-2] for f in files)  # class folder = label

    shown = run_cli("inspect", "b")
    assert shown.exit_code == 0 and "every file matches its sha256" in shown.stdout and "resnet20" in shown.stdout
    onnx_info = json.loads(run_cli("inspect", demo_fp32, "--json", "-").stdout)
    assert onnx_info["census"]["layers"] == 20 and onnx_info["model"]["precision"] == "fp32"

    checked = run_cli("selftest", "b")
    assert checked.exit_code == 0 and "PASS" in checked.stdout

    data_file = tmp_path / "b" / "demo.onnx"
    data_file.write_bytes(data_file.read_bytes()[:-10])
    assert_clean_error(run_cli("selftest", "b"), "does not match its sha256")
    assert_clean_error(run_cli("predict", "b", files[0]), "truncated")


def test_selftest_failure_exits_3(run_cli, tmp_path, demo_bundle):
    """A bundle whose reference logits no longer match its model: the self-test fails with exit code 3."""
    import hashlib

    b = tmp_path / "b"
    shutil.copytree(demo_bundle, b)
    with np.load(b / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["reference"] = np.roll(arrays["reference"], 1, axis=1)  # every reference class shifted by one
    with open(b / "reference.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    manifest = json.loads((b / "rexport.json").read_text())  # re-sign it: the bundle is consistent, but wrong
    entry = manifest["files"]["reference.npz"]
    entry["sha256"] = hashlib.sha256((b / "reference.npz").read_bytes()).hexdigest()
    entry["bytes"] = (b / "reference.npz").stat().st_size
    save_manifest(b, manifest)
    result = run_cli("selftest", b)
    assert result.exit_code == 3 and "FAIL" in result.stdout and "Traceback" not in result.stderr


def test_bench_command(run_cli, demo_fp32, tmp_path):
    result = run_cli("bench", demo_fp32, demo_fp32, "--batch-sizes", "1,4", "--iterations", "20", "--warmup", "2",
                     "--json", "bench.json")
    assert result.exit_code == 0, result
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["batch"]) for r in report["rows"]] == [1, 4]  # the same file twice is one model
    for row in report["rows"]:
        assert row["calls"] == 20 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput"] > 0
    assert report["preprocess_ms_per_image"] > 0
    assert_clean_error(run_cli("bench", demo_fp32, "--batch-sizes", "1,x"), "--batch-sizes takes")


def test_backend_flag_on_every_loading_command(run_cli, demo_fp32, demo_bundle, tmp_path):
    """--backend picks the engine: the same answers on OpenVINO and ONNX Runtime; bench --backend
    all measures every installed one side by side; all is bench's alone."""
    pytest.importorskip("openvino")
    from PIL import Image

    from rexport.demo import data

    image = tmp_path / "d.png"
    Image.fromarray(data.split("test").images[3], "L").save(image)
    tops = {}
    for backend in ("openvino", "onnxruntime"):
        result = run_cli("predict", demo_fp32, image, "--backend", backend, "--json", "-")
        assert result.exit_code == 0, result
        tops[backend] = json.loads(result.stdout)[str(image)]["top"][0]["label"]
        checked = run_cli("selftest", demo_bundle, "--model", "int8", "--backend", backend, "--json", "-")
        assert checked.exit_code == 0 and json.loads(checked.stdout)["backend"].startswith(backend), checked
    assert tops["openvino"] == tops["onnxruntime"] == str(data.split("test").labels[3])
    validated = run_cli("validate", demo_bundle, "--backend", "openvino", "--json", "-")
    assert validated.exit_code == 0 and json.loads(validated.stdout)["passed"], validated
    benched = run_cli("bench", demo_fp32, "--backend", "all", "--iterations", "5", "--warmup", "1", "--json", "-")
    assert benched.exit_code == 0, benched
    assert {r["backend"] for r in json.loads(benched.stdout)["rows"]} == {"openvino CPU", "onnxruntime CPU"}
    assert_clean_error(run_cli("predict", demo_fp32, image, "--backend", "all"), "backend must be one of")


def test_bench_saves_the_fastest_backend_for_auto(run_cli, demo_bundle, tmp_path):
    """bench --backend all --save-choice writes, for this machine, each model's fastest backend
    into the bundle directory; load(auto) then uses it; other machines' choices are kept."""
    pytest.importorskip("openvino")
    import shutil

    from rexport.runtime import load
    from rexport.runtime.backends.choice import CHOICE_FILE, machine

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    (bundle / CHOICE_FILE).write_text(json.dumps({"machines": {"another box": {"demo.onnx": "onnxruntime"}}}))
    result = run_cli("bench", bundle, "--backend", "all", "--save-choice", "--batch-sizes", "1,4",
                     "--iterations", "5", "--warmup", "1", "--json", "bench.json")
    assert result.exit_code == 0, result
    rows = [r for r in json.loads((tmp_path / "bench.json").read_text())["rows"] if r["batch"] == 4]
    fastest = min(rows, key=lambda r: r["p50_ms"])["backend"].split()[0]
    saved = json.loads((bundle / CHOICE_FILE).read_text())["machines"]
    model_file = load(bundle).model_file.name
    assert saved[machine()] == {model_file: fastest} and saved["another box"] == {"demo.onnx": "onnxruntime"}
    assert load(bundle).backend.name.startswith(fastest)
    saved[machine()][model_file] = "onnxruntime" if fastest == "openvino" else "openvino"
    (bundle / CHOICE_FILE).write_text(json.dumps({"machines": saved}))
    with load(bundle) as p:  # auto follows the saved choice, whichever it is
        assert p.backend.name.startswith(saved[machine()][model_file])
    saved[machine()][model_file] = "tensorrt"  # a backend that cannot run this file (or is not installed): ignored
    (bundle / CHOICE_FILE).write_text(json.dumps({"machines": saved}))
    with load(bundle) as p:
        assert not p.backend.name.startswith("tensorrt")
    with load(bundle, backend="onnxruntime") as p:  # an explicit backend wins
        assert p.backend.name.startswith("onnxruntime")
    assert_clean_error(run_cli("bench", bundle, "--save-choice"), "--save-choice records what --backend all")


def test_bench_api_threads_and_duration(demo_fp32):
    from rexport.runtime import load

    with load(demo_fp32) as model:
        report = bench({"demo": model}, BenchConfig(batch_sizes=(2,), iterations=40, warmup=1, bench_threads=4))
    (row,) = report.rows
    assert row.calls == 40 and row.threads == 4 and row.throughput > 0
    lat, wall = measure(lambda: None, iterations=10_000_000, warmup=0, duration=0.2)
    assert 0.15 < wall < 2 and len(lat) < 10_000_000  # the duration ended it, not the count


def test_every_command_has_help(run_cli):
    from rexport.cli import cli

    for name in cli.commands:
        result = run_cli(name, "-h")
        assert result.exit_code == 0 and "Usage:" in result.stdout, (name, result)


@pytest.mark.parametrize("args, fragment", [
    (["predict", "missing.onnx", "x.png"], "does not exist"),
    (["selftest", "{onnx}"], "not a bundle"),
    (["inspect", "{txt}"], "cannot inspect"),
    (["bundle", "{txt}", "-o", "b"], "expected .onnx or .engine"),
])
def test_runtime_commands_bad_input(run_cli, tmp_path, demo_fp32, args, fragment):
    (tmp_path / "notes.txt").write_text("x")
    args = [a.format(onnx=demo_fp32, txt=tmp_path / "notes.txt") for a in args]
    assert_clean_error(run_cli(*args), fragment)
    assert not (tmp_path / "b").exists()


def test_bench_json_follows_the_output_rule(run_cli, tmp_path, demo_fp32):
    """Issue 10: bench --json replaced any file, the model it measured included."""
    model = tmp_path / "m.onnx"
    shutil.copyfile(demo_fp32, model)
    bench = ["bench", "m.onnx", "--iterations", "2", "--warmup", "0", "--json"]
    assert_clean_error(run_cli(*bench, "m.onnx", "--force"), "refusing to write m.onnx")
    assert model.read_bytes() == demo_fp32.read_bytes()
    (tmp_path / "b.json").write_text("{}")
    assert_clean_error(run_cli(*bench, "b.json"), "b.json already exists; pass --force")
    assert (tmp_path / "b.json").read_text() == "{}"


def test_predict_refuses_nan_outputs(run_cli, tmp_path, nan_model):
    """Issue 10: predict on a NaN-output model printed "0 nan%" and exited 0."""
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(tmp_path / "x.png")
    result = run_cli("predict", nan_model, "x.png")
    assert_clean_error(result, "nan.onnx produced NaN/Inf outputs for 1 of 1 input(s)")
    assert "nan%" not in result.stdout
