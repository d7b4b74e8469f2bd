"""A Triton Inference Server model repository from a bundle: `rexport triton`, `export_triton`.

    model_repository/
      README.md              how to start Triton on it (container, Kubernetes) and what each model is
      NAME/                  the ensemble: encoded image bytes in, logits out (top-k labels through
        config.pbtxt           Triton's classification extension: labels.txt)
        labels.txt, 1/
      NAME_preprocess/       Python backend: rexport's preprocessing contract on image bytes
        config.pbtxt, 1/model.py, 1/preprocess.json
      NAME_classifier/       the model, NCHW float32 in, logits out:
        config.pbtxt           native: onnxruntime_onnx (1/model.onnx) or tensorrt_plan (1/model.plan)
        labels.txt             runtime: Python backend running rexport.runtime (1/model.py + the file)

Every config.pbtxt comes from the bundle's `ModelInfo`: max_batch_size from its batch range (an
engine's from its profile), input and output names, dims and types, dynamic batching with the
profile's sizes as preferred sizes, instance groups, and on GPUs ONNX Runtime's TensorRT
accelerator in the model's precision. Nothing here needs Triton or tritonclient installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from rexport.console import log
from rexport.errors import InputError, field_error
from rexport.files import atomic_directory, check_output_dir
from rexport.runtime.metadata import BatchRange, ModelInfo

CLASSIFIERS = {"native": "Triton's own backend: onnxruntime_onnx for ONNX files, tensorrt_plan for engines",
               "runtime": "Python backend running rexport.runtime (ONNX Runtime): any Triton with a Python backend"}
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# ONNX Runtime's TensorRT accelerator in Triton: the precision TensorRT may use for each rexport precision
# (INT8 and mixed models carry Q/DQ nodes: INT8 lets TensorRT run them in int8, nothing is calibrated).
TRT_PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8", "mixed": "INT8"}
PLATFORMS = {"onnx": "onnxruntime_onnx", "engine": "tensorrt_plan"}
NATIVE_FILES = {"onnx": "model.onnx", "engine": "model.plan"}  # Triton's default file name per platform
IMAGE_INPUT = "image"  # the ensemble's and the preprocessing model's input: encoded image bytes
LABELS_FILE = "labels.txt"
PREPROCESS_FILE = "preprocess.json"
MODEL_PY = Path(__file__).with_name("triton_model.py")  # the Python backend model (both roles)
TRITON_RELEASE = "24.10"  # the container release of the tritonserver (2.51) the tests here run
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class Enum(str):
    """A protobuf enum value in a config.pbtxt: written bare (TYPE_FP32), not quoted."""


@dataclass(frozen=True)
class RepositoryConfig:
    """What `export_triton` writes.

    name:           Triton name of the ensemble; the other models are NAME_preprocess and
                    NAME_classifier (default: the model's architecture)
    model:          which model of the bundle (a file name or precision; default: the bundle's)
    classifier:     "native" (onnxruntime_onnx / tensorrt_plan) or "runtime" (Python backend)
    instance_kind:  "cpu" or "gpu" for the classifier (default: gpu for engines, else cpu)
    instances:      instances of the classifier and of the preprocessing model
    max_batch:      Triton's max_batch_size (default: the model's largest batch)
    queue_delay_us: dynamic batching: how long a request may wait for others (microseconds)
    """

    name: str | None = None
    model: str | None = None
    classifier: str = "native"
    instance_kind: str | None = None
    instances: int = 1
    max_batch: int | None = None
    queue_delay_us: int = 500

    def __post_init__(self) -> None:
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise field_error(self, f"name must be letters, digits, '_', '.' or '-' (a Triton model name), "
                                    f"not {self.name!r}", "name")
        if self.classifier not in CLASSIFIERS:
            raise field_error(self, f"classifier must be one of {', '.join(CLASSIFIERS)}, not {self.classifier!r}",
                              "classifier")
        if self.instance_kind is not None and self.instance_kind not in INSTANCE_KINDS:
            raise field_error(self, f"instance_kind must be one of {', '.join(INSTANCE_KINDS)}, not "
                                    f"{self.instance_kind!r}", "instance_kind")
        for field, low in (("instances", 1), ("max_batch", 1), ("queue_delay_us", 0)):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise field_error(self, f"{field} must be a whole number >= {low}, not {value!r}", field)


@dataclass(frozen=True)
class Plan:
    """Everything the configs are made of, decided once from the bundle and the RepositoryConfig."""

    name: str
    info: ModelInfo
    kind: str  # "onnx" or "engine"
    file: Path  # the bundle's model file
    classifier: str
    instance_kind: str
    instances: int
    max_batch: int
    preferred: tuple[int, ...]
    queue_delay_us: int

    @property
    def models(self) -> dict[str, str]:
        """Triton model name -> what it is."""
        what = (f"{PLATFORMS[self.kind]} ({self.info.precision})" if self.classifier == "native"
                else f"Python backend running rexport.runtime on {self.file.name} ({self.info.precision})")
        return {self.name: "ensemble: image bytes -> logits, top-k labels",
                f"{self.name}_preprocess": "Python backend: rexport's preprocessing contract, image bytes -> "
                                           f"{self.info.input_name}",
                f"{self.name}_classifier": f"{what}: {self.info.input_name} -> {self.info.output_name}"}


@dataclass(frozen=True)
class TritonRepository:
    """What `export_triton` wrote."""

    path: Path
    name: str  # the ensemble's: what clients call with image bytes
    models: dict[str, str]  # Triton model name -> what it is
    classifier: str
    source: str  # the bundle's model file it serves

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}

    def format(self) -> str:
        lines = [f"wrote the Triton model repository {self.path}/ ({self.source}):"]
        lines += [f"  {name:<28} {what}" for name, what in self.models.items()]
        lines.append(f"start Triton on it: see {self.path}/README.md")
        return "\n".join(lines)


# -- config.pbtxt ------------------------------------------------------------------------------


def pbtxt(fields: dict, indent: int = 0) -> str:
    """Protobuf text format of nested dicts: lists repeat a field, dicts are messages, `Enum`s bare."""
    pad, lines = "  " * indent, []
    for key, value in fields.items():
        if isinstance(value, list) and not any(isinstance(item, dict) for item in value):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(item) for item in value)}]")
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                lines += [f"{pad}{key} {{", *filter(None, [pbtxt(item, indent + 1)]), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(lines)


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (Enum, int, float)) else json.dumps(str(value))


def _batching(plan: Plan) -> dict:
    if plan.max_batch < 2:
        return {}
    batcher: dict = {"max_queue_delay_microseconds": plan.queue_delay_us}
    if plan.preferred:
        batcher = {"preferred_batch_size": list(plan.preferred), **batcher}
    return {"dynamic_batching": batcher}


def _tensor(name: str, data_type: str, dims, labels: bool = False) -> dict:
    tensor = {"name": name, "data_type": Enum(data_type), "dims": list(dims)}
    return {**tensor, "label_filename": LABELS_FILE} if labels else tensor


def _parameters(values: dict[str, str]) -> list[dict]:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def classifier_config(plan: Plan) -> dict:
    """NAME_classifier: NCHW float32 in, logits out (labels for the classification extension)."""
    info = plan.info
    config: dict = {"name": f"{plan.name}_classifier"}
    if plan.classifier == "runtime":
        config["backend"] = "python"
    else:
        config["platform"] = PLATFORMS[plan.kind]
    config.update(max_batch_size=plan.max_batch,
                  input=[_tensor(info.input_name, "TYPE_FP32", info.input_shape)],
                  output=[_tensor(info.output_name, "TYPE_FP32", [info.num_classes], labels=True)],
                  instance_group=[{"count": plan.instances, "kind": Enum(INSTANCE_KINDS[plan.instance_kind])}],
                  **_batching(plan))
    if plan.classifier == "runtime":
        config["parameters"] = _parameters({"rexport_role": "classifier", "rexport_model_file": plan.file.name,
                                            "rexport_backend": "onnxruntime" if plan.kind == "onnx" else "tensorrt"})
    elif plan.kind == "onnx" and plan.instance_kind == "gpu" and trt_runs(info):
        trt = {"precision_mode": TRT_PRECISION_MODES[info.precision], "trt_engine_cache_enable": "1",
               "trt_engine_cache_path": f"/tmp/triton-trt-cache/{plan.name}"}
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in trt.items()]}]}}
    return config


def trt_runs(info: ModelInfo) -> bool:
    """Whether TensorRT runs this ONNX: not an INT8 model calibrated for CPUs (uint8 activations)."""
    if (info.calibration or {}).get("target") != "cpu":
        return True
    log.warning("warning: the model was calibrated for CPUs (uint8 activations), which TensorRT does not run: "
                "its GPU instances run on ONNX Runtime's CUDA provider, without the TensorRT accelerator; "
                "serve an INT8 model calibrated for TensorRT (target trt) to use it")
    return False


def preprocess_config(plan: Plan) -> dict:
    """NAME_preprocess: encoded image bytes in, the classifier's input out (on CPUs)."""
    info = plan.info
    return {"name": f"{plan.name}_preprocess", "backend": "python", "max_batch_size": plan.max_batch,
            "input": [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])],
            "output": [_tensor(info.input_name, "TYPE_FP32", info.input_shape)],
            "instance_group": [{"count": plan.instances, "kind": Enum("KIND_CPU")}],
            **_batching(plan), "parameters": _parameters({"rexport_role": "preprocess"})}


def ensemble_config(plan: Plan) -> dict:
    """NAME: image bytes -> NAME_preprocess -> NAME_classifier -> logits."""
    info, staged = plan.info, "preprocessed"

    def step(model: str, inputs: dict, outputs: dict) -> dict:
        return {"model_name": model, "model_version": -1,
                "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
                "output_map": [{"key": k, "value": v} for k, v in outputs.items()]}

    return {"name": plan.name, "platform": "ensemble", "max_batch_size": plan.max_batch,
            "input": [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])],
            "output": [_tensor(info.output_name, "TYPE_FP32", [info.num_classes], labels=True)],
            "ensemble_scheduling": {"step": [
                step(f"{plan.name}_preprocess", {IMAGE_INPUT: IMAGE_INPUT}, {info.input_name: staged}),
                step(f"{plan.name}_classifier", {info.input_name: staged}, {info.output_name: info.output_name})]}}


# -- the plan ----------------------------------------------------------------------------------


def _model_batch(file: Path, bundled: ModelInfo) -> tuple[str, ModelInfo, BatchRange]:
    """The model's kind, its own description (precision, calibration; else the bundle's) and the
    batch sizes it takes: an ONNX file's recorded range, an engine's profile."""
    from rexport.runtime.bundle import _describe_model

    kind, precision, info = _describe_model(file)
    info = info or bundled.replace(precision=precision)
    if kind != "engine":
        return kind, info, info.batch
    from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path

    sidecar = EngineSidecar.read(sidecar_path(file))
    if sidecar.flavour != "tensorrt":
        raise InputError(f"{file.name} was built with {sidecar.product}, which Triton's tensorrt_plan backend does "
                         "not load (it runs TensorRT 10); serve the bundle's ONNX, or use classifier='runtime'")
    shapes = sidecar.profile.get(info.input_name) or next(iter(sidecar.profile.values()), None)
    if not shapes:
        return kind, info, info.batch
    return kind, info, BatchRange(shapes["min"][0], shapes["opt"][0], shapes["max"][0])


def preferred_sizes(batch: BatchRange, max_batch: int) -> tuple[int, ...]:
    """Dynamic batching's preferred sizes: the model's optimal batch and the largest Triton sends."""
    return tuple(sorted({b for b in (batch.opt, max_batch) if 2 <= b <= max_batch}))


def plan_repository(bundle, config: RepositoryConfig) -> Plan:
    """Decide every model's settings, refusing what the chosen classifier cannot serve."""
    file = bundle.model_file(config.model)
    kind, info, batch = _model_batch(file, bundle.info)
    instance_kind = config.instance_kind or ("gpu" if kind == "engine" else "cpu")
    if kind == "engine" and instance_kind == "cpu":
        raise field_error(config, f"{file.name} is a TensorRT engine, which runs on GPUs only; leave out "
                                  "instance_kind='cpu' or serve the bundle's ONNX", "instance_kind")
    native = config.classifier == "native"
    if native and batch.min > 1:
        raise InputError(f"{file.name} takes batches of {batch.min} and more, but Triton sends any batch from 1; "
                         "rebuild it with batch 1:OPT:MAX, or use classifier='runtime' (rexport pads)")
    max_batch = config.max_batch or batch.max
    if native and max_batch > batch.max:
        raise field_error(config, f"max_batch={max_batch} is more than {file.name} takes ({batch.max}); give at "
                                  f"most {batch.max}, or use classifier='runtime' (rexport splits)", "max_batch")
    preferred = preferred_sizes(batch, max_batch)
    name = config.name or re.sub(r"[^A-Za-z0-9_.-]", "_", info.arch or "model")
    return Plan(name, info, kind, file, config.classifier, instance_kind, config.instances, max_batch, preferred,
                config.queue_delay_us)


# -- writing -----------------------------------------------------------------------------------


def _write_model(root: Path, config: dict, labels: ModelInfo | None = None) -> Path:
    folder = root / config["name"]
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(pbtxt(config) + "\n")
    if labels is not None:
        names = (" ".join(labels.label(i).split()) for i in range(labels.num_classes))  # one line each
        (folder / LABELS_FILE).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return folder / "1"


def write_repository(root: Path, plan: Plan, folder: str) -> None:
    """Fill `root` (an empty directory) with the three models and the README (`folder`: the
    repository's name in its commands)."""
    from rexport.serving.readme import repository_readme

    version = _write_model(root, classifier_config(plan), plan.info)
    if plan.classifier == "runtime":
        shutil.copyfile(MODEL_PY, version / "model.py")
        shutil.copyfile(plan.file, version / plan.file.name)
        if plan.kind == "engine":
            from rexport.runtime.engine_sidecar import sidecar_path

            shutil.copyfile(sidecar_path(plan.file), sidecar_path(version / plan.file.name))
    else:
        shutil.copyfile(plan.file, version / NATIVE_FILES[plan.kind])
    version = _write_model(root, preprocess_config(plan))
    shutil.copyfile(MODEL_PY, version / "model.py")
    (version / PREPROCESS_FILE).write_text(json.dumps(plan.info.preprocess.to_dict(), indent=2) + "\n")
    _write_model(root, ensemble_config(plan), plan.info)
    (root / "README.md").write_text(repository_readme(plan, folder))


def export_triton(bundle: str | os.PathLike, output: str | os.PathLike, config: RepositoryConfig | None = None, *,
                  overwrite: bool = False) -> TritonRepository:
    """Write a Triton model repository serving one model of `bundle` (a directory or archive) to
    `output`: a preprocessing model, the classifier and an ensemble of the two (see the module)."""
    from rexport.runtime.bundle import is_bundle, open_bundle

    config = config or RepositoryConfig()
    source = Path(bundle)
    if not source.exists():
        raise InputError(f"{source} does not exist")
    if not is_bundle(source):
        raise InputError(f"{source} is not a bundle (no rexport.json); make one with `rexport bundle`")
    check_output_dir(output, overwrite=overwrite, inputs=[source])  # before reading (hashing) the bundle
    opened = open_bundle(source)
    try:
        plan = plan_repository(opened, config)
        with atomic_directory(output, overwrite=overwrite, inputs=[source]) as tmp:
            write_repository(tmp, plan, Path(output).resolve().name)
    finally:
        opened.cleanup()
    log.info("Triton repository %s: %s", output, ", ".join(plan.models))
    return TritonRepository(Path(output), plan.name, plan.models, plan.classifier, plan.file.name)
