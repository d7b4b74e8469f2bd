"""A real tritonserver (PyTriton's) on a repository `export_triton` wrote for the demo bundle: the
runtime-backed classifier, the preprocessing model and the ensemble, queried over HTTP and gRPC
with tritonclient. It answers what the Predictor answers, batches concurrent clients, refuses bad
requests one by one and keeps serving. One server for the module, on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.slow

LOGIT_TOLERANCE = 1e-4  # the same ONNX file on the same ONNX Runtime: equal up to batch-size effects


@pytest.fixture(scope="module")
def predictor(demo_bundle):
    from rexport.runtime import load

    with load(demo_bundle, backend="onnxruntime", providers="cpu") as p:
        yield p


def clients(server):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    return {"http": (http, http.InferenceServerClient(server.http_url)),
            "grpc": (grpc, grpc.InferenceServerClient(server.grpc_url))}


def image_input(module, images: list[bytes]):
    tensor = module.InferInput("image", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(-1, 1))
    return tensor


def tensor_input(module, x: np.ndarray, datatype: str = "FP32"):
    tensor = module.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_answers_what_the_predictor_answers(triton, predictor, heldout, protocol):
    images, labels = heldout
    module, client = clients(triton)[protocol]
    want = predictor.run(predictor.preprocess(images))
    got = client.infer("resnet20", [image_input(module, images)]).as_numpy("logits")
    assert got.shape == want.shape == (32, 10)
    np.testing.assert_allclose(got, want, atol=LOGIT_TOLERANCE, rtol=LOGIT_TOLERANCE)
    assert (got.argmax(1) == want.argmax(1)).all() and (got.argmax(1) == labels).mean() > 0.9
    top = client.infer("resnet20", [image_input(module, images[:4])],
                       outputs=[module.InferRequestedOutput("logits", class_count=3)]).as_numpy("logits")
    best = [row[0].decode().split(":") for row in top]  # "score:index:label", best first
    assert [int(i) for _, i, _ in best] == list(want[:4].argmax(1))
    assert [lb for _, _, lb in best] == [predictor.info.label(int(i)) for i in want[:4].argmax(1)]
    client.close()


def test_classifier_takes_preprocessed_tensors(triton, predictor, heldout):
    import tritonclient.http as http

    x = predictor.preprocess(heldout[0][:5])
    with_client = http.InferenceServerClient(triton.http_url)
    got = with_client.infer("resnet20_classifier", [tensor_input(http, x)]).as_numpy("logits")
    np.testing.assert_allclose(got, predictor.run(x), atol=LOGIT_TOLERANCE, rtol=LOGIT_TOLERANCE)
    with_client.close()


def test_concurrent_clients_are_batched(triton, predictor, heldout):
    import tritonclient.http as http

    images = heldout[0]
    want = predictor.run(predictor.preprocess(images)).argmax(1)
    before = batching_stats(triton)

    def one_client(k: int) -> list[int]:
        client = http.InferenceServerClient(triton.http_url)
        try:
            return [int(client.infer("resnet20", [image_input(http, [images[i]])]).as_numpy("logits").argmax())
                    for i in range(k, len(images), 8)]
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one_client, range(8)))
    assert [a for k in range(8) for a in answers[k]] == [int(want[i]) for k in range(8) for i in range(k, 32, 8)]
    inferences, executions = (a - b for a, b in zip(batching_stats(triton), before))
    assert inferences == 32 and executions < inferences, (inferences, executions)  # batches of more than one


def batching_stats(server) -> tuple[int, int]:
    """The classifier's inference count (images) and execution count (batches it ran)."""
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    (stats,) = client.get_inference_statistics("resnet20_classifier")["model_stats"]
    client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_errors_and_the_server_keeps_serving(triton, heldout, protocol):
    module, client = clients(triton)[protocol]
    error = __import__(f"tritonclient.{protocol}", fromlist=["InferenceServerException"]).InferenceServerException
    bad = {
        "wrong shape": ("resnet20_classifier", tensor_input(module, np.zeros((1, 3, 16, 16), np.float32)),
                        "unexpected shape for input 'input'"),
        "wrong dtype": ("resnet20_classifier", tensor_input(module, np.zeros((1, 3, 32, 32), np.float64), "FP64"),
                        "expects 'FP32'"),
        "undecodable bytes": ("resnet20", image_input(module, [b"not an image"]), "not an image PIL can decode"),
        "empty image": ("resnet20", image_input(module, [heldout[0][0], b""]), "image bytes"),
        "empty batch": ("resnet20", image_input(module, []), "got 0"),
        "empty tensor batch": ("resnet20_classifier", tensor_input(module, np.zeros((0, 3, 32, 32), np.float32)),
                               "byte size mismatch"),
    }
    for what, (model, tensor, says) in bad.items():
        with pytest.raises(error) as e:
            client.infer(model, [tensor])
        assert says in str(e.value), (what, str(e.value))
    logits = client.infer("resnet20", [image_input(module, heldout[0][:2])]).as_numpy("logits")
    assert logits.shape == (2, 10) and np.isfinite(logits).all()
    assert client.is_server_live() and client.is_model_ready("resnet20")
    client.close()


def test_prometheus_metrics(triton):
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="resnet20"' in text


def test_the_python_backend_loads_this_interpreters_libpython(triton):
    from rexport.serving.server import bundled_libs, loaded_libpython, own_libpython, python_backend_env, \
        python_stub, triton_distribution

    stub = python_stub(triton_distribution())
    env = python_backend_env(stub, bundled_libs())
    ours = own_libpython()
    assert ours is not None and os.path.samefile(loaded_libpython(stub, env), ours)
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(ours.parent)
