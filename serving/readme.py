"""The README.md `rexport triton` writes into a model repository: how to start Triton on it (a
container, Kubernetes with KServe, or the tritonserver PyTriton ships) and what each model is."""

from __future__ import annotations

from rexport import __version__
from rexport.serving.triton_repo import TRITON_RELEASE


def _models_table(plan) -> str:
    rows = "\n".join(f"| `{name}` | {what} |" for name, what in plan.models.items())
    return f"| model | what it is |\n|---|---|\n{rows}"


def _requirements(plan) -> str:
    needs = ["the Python backend with rexport installed in its Python (`pip install rexport=="
             f"{__version__}`: numpy, Pillow) for `{plan.name}_preprocess`"]
    if plan.classifier == "runtime":
        needs.append(f"`pip install 'rexport[ort]=={__version__}'` for `{plan.name}_classifier`")
    elif plan.kind == "onnx":
        needs.append(f"the ONNX Runtime backend for `{plan.name}_classifier` (in every `-py3` container)")
    else:
        needs.append(f"the TensorRT backend of the same TensorRT version the engine was built with, on the GPU "
                     f"it was built for (its sidecar says which) for `{plan.name}_classifier`")
    return "\n".join(f"- {n}" for n in needs)


def repository_readme(plan, folder: str) -> str:
    """The repository's README; `folder`: its directory name in the commands."""
    image = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
    gpus = " --gpus all" if plan.instance_kind == "gpu" else ""
    info = plan.info
    return f"""# Triton model repository: {plan.name}

Written by `rexport triton` (rexport {__version__}) from `{plan.file.name}` ({info.arch or 'model'},
{info.precision}, {info.num_classes} classes, input {info.input_name} {'x'.join(map(str, info.input_shape))}).

{_models_table(plan)}

Send encoded images (JPEG, PNG...) as BYTES to `{plan.name}` (input `image`, shape [N, 1]); ask for
the top k labels with Triton's classification extension (`class_count` on output `{info.output_name}`),
or read the logits. Send preprocessed NCHW float32 to `{plan.name}_classifier` directly.
Dynamic batching: up to {plan.max_batch} per batch, waiting at most {plan.queue_delay_us} us.

## Needs

{_requirements(plan)}

## Start Triton on it

Container (a `FROM {image}` image with `RUN pip install 'rexport[ort]'` for the Python models):

    docker run --rm{gpus} -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/{folder}:/models" \\
        IMAGE tritonserver --model-repository=/models

Kubernetes with KServe (copy the folder to object storage first):

    kubectl apply -f - <<'EOF'
    apiVersion: serving.kserve.io/v1beta1
    kind: InferenceService
    metadata:
      name: {plan.name.lower().replace('_', '-').replace('.', '-')}
    spec:
      predictor:
        triton:
          storageUri: s3://BUCKET/{folder}
          runtimeVersion: {TRITON_RELEASE}-py3
          image: IMAGE
    EOF

On this machine, with `pip install 'rexport[serve]'` (the tritonserver that PyTriton ships):

    python -c "from rexport.serving import TritonServer; TritonServer('{folder}', http_port=8000).run()"

Query it: `curl localhost:8000/v2/models/{plan.name}` (KServe v2 over HTTP; gRPC on 8001; Prometheus
metrics on 8002/metrics).
"""

