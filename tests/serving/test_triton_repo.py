"""`export_triton`: every config.pbtxt it writes (the ONNX Runtime, TensorRT and Python-backend
classifiers, the preprocessing model, the ensemble) parses with Triton's own schema
(tritonclient's model_config_pb2) and says what the bundle says. The TensorRT engine is a fake
file with a real sidecar: Triton's tensorrt_plan backend is not installed here, nothing runs it."""

from __future__ import annotations

import json
import os

import pytest

from rexport.errors import InputError
from rexport.runtime.bundle import open_bundle
from rexport.runtime.preprocess import Preprocess
from rexport.serving import RepositoryConfig, export_triton
from rexport.serving.triton_repo import TRT_PRECISION_MODES


def parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), schema().ModelConfig())


def schema():
    """Triton's model configuration schema, as tritonclient ships it."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def configs(repo) -> dict:
    return {p.parent.name: parse(p) for p in sorted(repo.glob("*/config.pbtxt"))}


@pytest.fixture(scope="module")
def variety_bundle(demo_fp32, tmp_path_factory):
    """The demo model as FP32, FP16, INT8 for TensorRT, and a (fake) TensorRT engine with a real
    sidecar whose profile is batch 1:4:16."""
    from rexport.calibration import QuantizeConfig, quantize, to_fp16
    from rexport.runtime.bundle import write_bundle
    from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path
    from rexport.runtime.predictor import load

    root = tmp_path_factory.mktemp("variety")
    fp16 = to_fp16(demo_fp32, root / "demo.fp16.onnx").path
    int8 = quantize(demo_fp32, root / "demo.int8.onnx",
                    QuantizeConfig(calib_data="demo:train", calib_samples=32, target="trt", calib_refine=())).path
    with load(demo_fp32) as p:
        info = p.info
    engine = root / "demo.engine"
    engine.write_bytes(b"not a real plan: nothing here runs it")
    EngineSidecar(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", precision="fp16",
                  profile={info.input_name: {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}},
                  source_onnx={}, built_from={}, model=info.replace(precision="fp16")).write(sidecar_path(engine))
    return write_bundle([demo_fp32, fp16, int8, engine], root / "bundle")


def check_matches(repo, bundle, *, model=None, platform, max_batch, kind="KIND_CPU"):
    """The three configs say what the bundle says: names, dims, types, batch, labels, wiring."""
    info = open_bundle(bundle).info
    found = configs(repo)
    assert set(found) == {"resnet20", "resnet20_preprocess", "resnet20_classifier"}
    clf, pre, ens = found["resnet20_classifier"], found["resnet20_preprocess"], found["resnet20"]
    assert (clf.platform or clf.backend) == platform
    assert clf.max_batch_size == pre.max_batch_size == ens.max_batch_size == max_batch
    (inp,), (out,) = clf.input, clf.output
    pb = schema()
    assert (inp.name, list(inp.dims), inp.data_type) == (info.input_name, list(info.input_shape), pb.TYPE_FP32)
    assert (out.name, list(out.dims), out.label_filename) == (info.output_name, [info.num_classes], "labels.txt")
    assert out.data_type == pb.TYPE_FP32 and ens.output[0].data_type == pb.TYPE_FP32
    assert [g.kind for g in clf.instance_group] == [pb.ModelInstanceGroup.Kind.Value(kind)]
    assert [g.kind for g in pre.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    labels = (repo / "resnet20_classifier" / "labels.txt").read_text().splitlines()
    assert labels == list(info.labels) == (repo / "resnet20" / "labels.txt").read_text().splitlines()
    assert pre.input[0].data_type == pb.TYPE_STRING and pre.output[0].name == info.input_name
    assert list(pre.output[0].dims) == list(info.input_shape)
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["resnet20_preprocess", "resnet20_classifier"]
    assert steps[0].output_map[info.input_name] == steps[1].input_map[info.input_name]
    assert ens.platform == "ensemble" and ens.output[0].label_filename == "labels.txt"
    return clf


def test_onnxruntime_classifier_on_cpu(demo_bundle, tmp_path):
    repo = export_triton(demo_bundle, tmp_path / "repo").path
    clf = check_matches(repo, demo_bundle, platform="onnxruntime_onnx", max_batch=32)
    assert list(clf.dynamic_batching.preferred_batch_size) == [8, 32]
    assert clf.dynamic_batching.max_queue_delay_microseconds == 500
    assert not clf.optimization.execution_accelerators.gpu_execution_accelerator
    bundle = open_bundle(demo_bundle)
    assert (repo / "resnet20_classifier/1/model.onnx").read_bytes() == bundle.model_file().read_bytes()
    readme = (repo / "README.md").read_text()
    assert "docker run" in readme and "kubectl apply" in readme and '"$PWD/repo:/models"' in readme


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_accelerator_on_gpu_matches_the_precision(variety_bundle, tmp_path, precision):
    repo = export_triton(variety_bundle, tmp_path / "repo",
                         RepositoryConfig(model=precision, instance_kind="gpu", instances=2, max_batch=16)).path
    clf = check_matches(repo, variety_bundle, platform="onnxruntime_onnx", max_batch=16, kind="KIND_GPU")
    assert clf.instance_group[0].count == 2
    (accelerator,) = clf.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == TRT_PRECISION_MODES[precision]
    assert list(clf.dynamic_batching.preferred_batch_size) == [8, 16]  # opt 8, and max_batch caps the rest


def test_int8_for_cpus_gets_no_tensorrt_accelerator(demo_bundle, tmp_path, caplog):
    repo = export_triton(demo_bundle, tmp_path / "repo", RepositoryConfig(model="int8", instance_kind="gpu")).path
    assert not configs(repo)["resnet20_classifier"].optimization.execution_accelerators.gpu_execution_accelerator
    assert "calibrated for CPUs" in caplog.text


def test_engine_as_tensorrt_plan_with_its_profile(variety_bundle, tmp_path):
    repo = export_triton(variety_bundle, tmp_path / "repo", RepositoryConfig(model="engine", name="resnet20")).path
    clf = check_matches(repo, variety_bundle, platform="tensorrt_plan", max_batch=16, kind="KIND_GPU")
    assert list(clf.dynamic_batching.preferred_batch_size) == [4, 16]
    assert (repo / "resnet20_classifier/1/model.plan").read_bytes().startswith(b"not a real plan")
    with pytest.raises(InputError, match="runs on GPUs only"):
        export_triton(variety_bundle, tmp_path / "cpu", RepositoryConfig(model="engine", instance_kind="cpu"))
    with pytest.raises(InputError, match="more than demo.engine takes"):
        export_triton(variety_bundle, tmp_path / "big", RepositoryConfig(model="engine", max_batch=64))
    assert not (tmp_path / "cpu").exists() and not (tmp_path / "big").exists()


def test_runtime_classifier_carries_the_model_and_its_parameters(runtime_repository, demo_bundle):
    repo = runtime_repository.path
    clf = check_matches(repo, demo_bundle, platform="python", max_batch=32)
    params = {k: v.string_value for k, v in clf.parameters.items()}
    model_file = open_bundle(demo_bundle).model_file()
    assert params == {"rexport_role": "classifier", "rexport_model_file": model_file.name,
                      "rexport_backend": "onnxruntime"}
    assert (repo / "resnet20_classifier/1" / model_file.name).read_bytes() == model_file.read_bytes()
    assert (repo / "resnet20_classifier/1/model.py").read_text() == (repo / "resnet20_preprocess/1/model.py").read_text()
    spec = json.loads((repo / "resnet20_preprocess/1/preprocess.json").read_text())
    assert Preprocess.from_dict(spec) == open_bundle(demo_bundle).info.preprocess


def test_refuses_bad_input_and_writes_nothing(demo_bundle, tmp_path):
    out = tmp_path / "repo"
    export_triton(demo_bundle, out)
    before = sorted(os.listdir(out))
    with pytest.raises(InputError, match="already exists and is not empty; pass overwrite=True"):
        export_triton(demo_bundle, out, RepositoryConfig(classifier="runtime"))
    assert sorted(os.listdir(out)) == before and configs(out)["resnet20_classifier"].platform == "onnxruntime_onnx"
    export_triton(demo_bundle, out, RepositoryConfig(classifier="runtime"), overwrite=True)
    assert configs(out)["resnet20_classifier"].backend == "python"
    with pytest.raises(InputError, match="not a bundle"):
        export_triton(tmp_path, tmp_path / "other")
    with pytest.raises(InputError, match="refusing to replace the directory"):
        export_triton(demo_bundle, demo_bundle, overwrite=True)
    for bad, field in [({"name": "a b"}, "name"), ({"classifier": "onnx"}, "classifier"),
                       ({"instances": 0}, "instances"), ({"instance_kind": "tpu"}, "instance_kind")]:
        with pytest.raises(InputError, match=field) as e:
            RepositoryConfig(**bad)
        assert e.value.fields == (f"RepositoryConfig.{field}",)
