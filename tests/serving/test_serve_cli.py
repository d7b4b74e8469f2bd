"""The commands: `rexport triton` writes a repository (and refuses what it must), and `rexport
serve` runs a real Triton through PyTriton that answers over HTTP and gRPC as the Predictor does,
batches concurrent requests, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import assert_clean_error

from rexport.serving.server import free_port


def test_triton_command_writes_a_repository_and_refuses_to_overwrite(run_cli, demo_bundle, tmp_path):
    out = tmp_path / "repo"
    result = run_cli("triton", demo_bundle, "-o", out, "--classifier", "runtime", "--name", "digits", "--json", "-")
    assert result.exit_code == 0, result
    report = json.loads(result.stdout)
    assert report["name"] == "digits" and set(report["models"]) == {"digits", "digits_preprocess",
                                                                     "digits_classifier"}
    assert 'backend: "python"' in (out / "digits_classifier" / "config.pbtxt").read_text()
    assert_clean_error(run_cli("triton", demo_bundle, "-o", out), "pass --force", code=1)
    assert_clean_error(run_cli("triton", demo_bundle, "-o", tmp_path / "other", "--name", "two words"),
                       "--name must be letters", code=1)
    assert not (tmp_path / "other").exists()


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            with urllib.request.urlopen(f"http://{url}/v2/models/resnet20/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"rexport serve was not ready within {timeout}s")


def metrics(port: int, model: str) -> dict[str, float]:
    """Prometheus counters of one model, from Triton's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in lines
            if not line.startswith("#") and f'model="{model}"' in line}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_serve_answers_like_the_predictor_and_stops_on_sigterm(demo_bundle, heldout, tmp_path):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    from rexport.runtime import load

    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen([sys.executable, "-m", "rexport", "serve", str(demo_bundle), "--host", "127.0.0.1",
                                "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
                                str(ports[2]), "--backend", "onnxruntime", "--queue-delay", "5000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_ready(f"127.0.0.1:{ports[0]}", process)
        images = heldout[0][:16]
        with load(demo_bundle, backend="onnxruntime") as predictor:
            x = predictor.preprocess(images)
            want = predictor.run(x)
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        tensor = http.InferInput("image", [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
        np.testing.assert_allclose(client.infer("resnet20", [tensor]).as_numpy("logits"), want, atol=1e-4, rtol=1e-4)
        g = grpc.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        tensor = grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = g.infer("resnet20_classifier", [tensor]).as_numpy("logits")
        assert (got.argmax(1) == want.argmax(1)).all()

        def one(i: int) -> int:
            t = grpc.InferInput("input", [1, *x.shape[1:]], "FP32")
            t.set_data_from_numpy(x[i:i + 1])
            return int(g.infer("resnet20_classifier", [t]).as_numpy("logits").argmax())

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(16))) == list(want.argmax(1))
        counts = metrics(ports[2], "resnet20_classifier")  # PyTriton guards the statistics API with a token
        assert counts["nv_inference_count"] == 32 and counts["nv_inference_exec_count"] < 17  # batched: < 1 + 16
        client.close()
        g.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.stderr.read()
        assert not any(port_open(p) for p in ports)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
