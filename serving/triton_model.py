"""The Python backend model `rexport triton` writes (as 1/model.py) into a Triton model repository.

It runs inside Triton's Python backend, never in rexport itself, and has two roles, named by the
config.pbtxt parameter `rexport_role`:
- "preprocess": encoded image bytes -> the model's NCHW float32 input, by rexport's preprocessing
  contract (rexport.runtime.preprocess, the description in 1/preprocess.json);
- "classifier": NCHW float32 -> logits, by rexport.runtime.load on the model file beside it
  (`rexport_model_file`) with the backend `rexport_backend` (onnxruntime for ONNX files).

Each request of a dynamic batch gets its own answer: an undecodable image fails its own request
only, with rexport's one-line message. Needs rexport (numpy, Pillow; [ort] for the classifier) in
the Python that Triton's Python backend runs; REXPORT_SITE_DIRS (os.pathsep-separated) adds
site-packages folders to it, as `rexport.serving.TritonServer` does for a virtual environment.
"""

import json
import os
import site
from pathlib import Path

import numpy as np


def _parameters(config: dict) -> dict:
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def _error(pb_utils, e: Exception):
    message = " ".join(str(e).split()) or type(e).__name__
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        for folder in filter(None, os.environ.get("REXPORT_SITE_DIRS", "").split(os.pathsep)):
            site.addsitedir(folder)
        config = json.loads(args["model_config"])
        params = _parameters(config)
        here = Path(args["model_repository"]) / str(args["model_version"])
        self.role = params.get("rexport_role")
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        if self.role == "preprocess":
            from rexport.runtime.preprocess import Preprocess

            self.spec = Preprocess.from_dict(json.loads((here / "preprocess.json").read_text()))
        elif self.role == "classifier":
            from rexport.runtime import load

            file = here / params["rexport_model_file"]
            gpu = args.get("model_instance_kind") == "GPU"
            options = {"providers": "auto" if gpu else "cpu"} if file.suffix == ".onnx" else {}
            self.predictor = load(file, backend=params.get("rexport_backend", "auto"),
                                  device=int(args.get("model_instance_device_id") or 0), **options)
        else:
            raise ValueError(f"config.pbtxt parameter rexport_role must be preprocess or classifier, not {self.role!r}")

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        if self.role == "preprocess":
            return [self._preprocess(pb_utils, a) for a in arrays]
        return self._classify(pb_utils, arrays)

    def _preprocess(self, pb_utils, images: np.ndarray):
        from rexport.runtime.preprocess import preprocess

        try:
            if images.size == 0:
                raise ValueError("the request holds no image; send at least one")
            batch = preprocess([bytes(b) for b in images.reshape(-1)], self.spec)
        except Exception as e:  # rexport's InputError for undecodable bytes: this request fails, alone
            return _error(pb_utils, e)
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output, batch)])

    def _classify(self, pb_utils, arrays: list) -> list:
        good = [i for i, a in enumerate(arrays) if len(a)]
        responses = [_error(pb_utils, ValueError("the request holds an empty batch; send at least one input"))
                     for _ in arrays]
        if not good:
            return responses
        try:
            logits = self.predictor.run(np.concatenate([arrays[i] for i in good])).astype(np.float32, copy=False)
        except Exception as e:
            return [_error(pb_utils, e) for _ in arrays]
        start = 0
        for i in good:
            n = len(arrays[i])
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(self.output, logits[start:start + n])])
            start += n
        return responses

    def finalize(self) -> None:
        predictor = getattr(self, "predictor", None)
        if predictor is not None:
            predictor.close()
