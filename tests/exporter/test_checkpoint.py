"""Checkpoint formats, prefixes, key maps, arch fitting, and refusing unsafe pickles."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
import torch

from rexport.errors import InputError
from rexport.exporter import build_model, load_checkpoint, load_model
from rexport.exporter.checkpoint import detect_arch, save_state_dict


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return build_model("resnet20").eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def saved(tmp_path, obj, name="ckpt.pt", **kwargs):
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path


@pytest.mark.parametrize("wrap, fmt", [
    (lambda sd: sd, "state_dict"),
    (lambda sd: {"state_dict": sd, "epoch": 3}, "nested:state_dict"),
    (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}}, "nested:model_state_dict"),
    (lambda sd: {"model": sd, "args": {"lr": 0.1}}, "nested:model"),
    (lambda sd: {"net": sd}, "nested:net"),
    (lambda sd: {"module": sd}, "nested:module"),
    (lambda sd: {"checkpoint": 1, "state_dict": {"model": sd}}, "nested:model"),
])
def test_nested_dicts(tmp_path, resnet20, wrap, fmt):
    path = saved(tmp_path, wrap(OrderedDict(resnet20.state_dict())))
    ckpt = load_checkpoint(path)
    assert ckpt.format == fmt
    assert same_weights(load_model(ckpt, "resnet20").model, resnet20)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_bare_state_dict_any_suffix(tmp_path, resnet20, suffix):
    path = saved(tmp_path, resnet20.state_dict(), f"weights{suffix}")
    assert same_weights(load_model(path, "resnet20").model, resnet20)


def test_legacy_non_zip_torch_save(tmp_path, resnet20):
    path = saved(tmp_path, resnet20.state_dict(), _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"  # a raw pickle stream, not a zip archive
    assert same_weights(load_model(path, "resnet20").model, resnet20)


def test_lightning_checkpoint(tmp_path, resnet20):
    sd = {f"model.{k}": v for k, v in resnet20.state_dict().items()}
    path = saved(tmp_path, {"epoch": 9, "global_step": 100, "pytorch-lightning_version": "2.4.0",
                            "state_dict": sd, "optimizer_states": [{"state": {}}], "lr_schedulers": [],
                            "hyper_parameters": {"lr": 0.1, "arch": "resnet20"}}, "last.ckpt")
    ckpt = load_checkpoint(path)
    assert ckpt.format == "lightning"
    loaded = load_model(ckpt, "resnet20")
    assert same_weights(loaded.model, resnet20)
    assert any("'model.'" in n for n in loaded.notes)


def test_safetensors(tmp_path, resnet20):
    path = tmp_path / "w.safetensors"
    save_state_dict(resnet20, path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "safetensors"
    assert same_weights(load_model(ckpt, "resnet20").model, resnet20)


def test_torchscript_archive(tmp_path, resnet20):
    module = torch.jit.trace(resnet20, torch.randn(1, 3, 32, 32))
    path = tmp_path / "model.ts"
    module.save(str(path))
    ckpt = load_checkpoint(path)
    assert ckpt.format == "torchscript"
    assert same_weights(load_model(ckpt, "resnet20").model, resnet20)


def test_pickled_module_needs_unsafe_pickle(tmp_path, resnet20):
    path = saved(tmp_path, resnet20, "whole.pt")
    with pytest.raises(InputError, match="pass unsafe_pickle=True"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, unsafe_pickle=True)
    assert ckpt.format == "pickled-module"
    assert same_weights(load_model(ckpt, "resnet20").model, resnet20)


class Malicious:
    """Unpickling this creates a file: what an attacker's checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, resnet20, container):
    marker = tmp_path / "pwned"
    payload = {"state_dict": resnet20.state_dict(), "extra": Malicious(marker)}
    path = tmp_path / "evil.pth"
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    assert "refusing to unpickle" in str(err.value) and "unsafe_pickle=True" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "model."])
def test_wrapper_prefixes_are_stripped(tmp_path, resnet20, prefix):
    path = saved(tmp_path, {prefix + k: v for k, v in resnet20.state_dict().items()})
    loaded = load_model(path, "resnet20")
    assert same_weights(loaded.model, resnet20)
    assert loaded.notes  # says what it did


def test_any_single_shared_prefix_is_stripped_when_it_makes_the_keys_fit(tmp_path, resnet20):
    path = saved(tmp_path, {"backbone." + k: v for k, v in resnet20.state_dict().items()})
    loaded = load_model(path, "resnet20")
    assert same_weights(loaded.model, resnet20)
    assert any("'backbone.'" in n for n in loaded.notes)


@pytest.mark.parametrize("head", ["linear", "classifier", "head"])
def test_classifier_under_another_name_is_renamed_by_shape(tmp_path, resnet20, head):
    sd = {(head + k[2:] if k.startswith("fc.") else k): v for k, v in resnet20.state_dict().items()}
    loaded = load_model(saved(tmp_path, sd), "resnet20")
    assert same_weights(loaded.model, resnet20)
    assert any(f"{head}.* to fc.*" in n for n in loaded.notes)


def test_key_map_rewrites_prefixes(tmp_path, resnet20):
    sd = {k.replace("layer", "stage", 1): v for k, v in resnet20.state_dict().items()}
    path = saved(tmp_path, sd)
    with pytest.raises(InputError, match="does not fit resnet20"):
        load_model(path, "resnet20")
    key_map = tuple((f"stage{i}.", f"layer{i}.") for i in (1, 2, 3))
    assert same_weights(load_model(path, "resnet20", key_map=key_map).model, resnet20)
    with pytest.raises(InputError, match="matches no key"):
        load_model(path, "resnet20", key_map=(("nothing.", "x."),))


def test_num_classes_and_channels_are_inferred(tmp_path):
    model = build_model("resnet18", num_classes=37, in_channels=1)
    loaded = load_model(saved(tmp_path, model.state_dict()), "resnet18")
    assert (loaded.num_classes, loaded.in_channels) == (37, 1)
    with pytest.raises(InputError, match="37 outputs but num_classes=1000"):
        load_model(saved(tmp_path, model.state_dict()), "resnet18", num_classes=1000)


def test_cifar_shortcut_option_is_detected(tmp_path):
    b = build_model("resnet32", shortcut="B")
    loaded = load_model(saved(tmp_path, b.state_dict()), "resnet32")
    assert loaded.arch_options == {"shortcut": "B"}
    assert same_weights(loaded.model, b)


def test_wrong_arch_names_the_arch_that_fits(tmp_path):
    path = saved(tmp_path, build_model("resnet18").state_dict())
    with pytest.raises(InputError) as err:
        load_model(path, "resnet34")
    message = str(err.value)
    assert "does not fit resnet34" in message and "missing" in message
    assert "it fits resnet18" in message and "\n" not in message


def test_misshaped_keys_are_listed(tmp_path):
    path = saved(tmp_path, build_model("wide_resnet50_2").state_dict())
    with pytest.raises(InputError) as err:
        load_model(path, "resnet50")
    assert "mis-shaped" in str(err.value) and "it fits wide_resnet50_2" in str(err.value)


def test_nothing_fits(tmp_path):
    path = saved(tmp_path, {"encoder.weight": torch.zeros(3, 3), "decoder.weight": torch.zeros(3, 3)})
    with pytest.raises(InputError, match="no architecture in the zoo fits"):
        load_model(path, "resnet18")


def test_detect_arch(tmp_path):
    assert detect_arch(load_checkpoint(saved(tmp_path, build_model("resnet50").state_dict()))) == "resnet50"
    # resnet20 (option A) and plain20 have identical weights: ambiguous, so ask
    with pytest.raises(InputError, match="resnet20, plain20|plain20, resnet20"):
        detect_arch(load_checkpoint(saved(tmp_path, build_model("resnet20").state_dict())))


def test_half_precision_weights_are_loaded_as_float32(tmp_path, resnet20):
    path = saved(tmp_path, {k: v.half() if v.is_floating_point() else v for k, v in resnet20.state_dict().items()})
    loaded = load_model(path, "resnet20")
    assert loaded.model.fc.weight.dtype == torch.float32
    assert any("float16" in n for n in loaded.notes)


def test_old_checkpoints_without_num_batches_tracked(tmp_path, resnet20):
    sd = {k: v for k, v in resnet20.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert same_weights(load_model(saved(tmp_path, sd), "resnet20").model, resnet20)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"this is not a checkpoint at all", "not a PyTorch checkpoint"),
    (b"\x80\x02}q\x00(X\x05", "truncated or corrupt"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_truncated_files(tmp_path, resnet20, name):
    path = tmp_path / name
    save_state_dict(resnet20, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt|corrupt"):
        load_checkpoint(path)


# -- issue 10: weights that cannot be right, and torch's noise --------------------------------------


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors", "w.legacy.pt"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_at_load_naming_the_tensors(tmp_path, resnet20, name, bad):
    """Issue 10: NaN/Inf weights loaded, and parity then suggested loosening --atol."""
    state = {k: v.clone() for k, v in resnet20.state_dict().items()}
    for key in ("layer1.0.conv1.weight", "fc.bias"):
        state[key].view(-1)[3] = bad
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization="legacy" not in name)
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "2 tensors hold NaN or Inf (" in message  # safetensors files keep the keys sorted
    assert "layer1.0.conv1.weight" in message and "fc.bias" in message
    assert "corrupt or training diverged" in message and "\n" not in message and "atol" not in message


def test_non_finite_weights_in_a_nested_or_half_precision_checkpoint(tmp_path, resnet20):
    state = {k: v.half() if v.is_floating_point() else v for k, v in resnet20.state_dict().items()}
    state["bn1.running_var"][0] = float("inf")
    with pytest.raises(InputError, match=r"1 tensor holds NaN or Inf \(bn1.running_var\)"):
        load_checkpoint(saved(tmp_path, {"epoch": 9, "state_dict": state}))


def test_a_caller_built_checkpoint_is_checked_too(tmp_path, resnet20):
    from rexport.exporter.checkpoint import Checkpoint

    state = {k: v.clone() for k, v in resnet20.state_dict().items()}
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="conv1.weight"):
        load_model(Checkpoint(tmp_path / "mine.pt", state, "0" * 64, "state_dict"), "resnet20")


def test_cli_refuses_non_finite_weights_in_one_line(run_cli, tmp_path, resnet20):
    state = {k: v.clone() for k, v in resnet20.state_dict().items()}
    state["layer3.2.conv2.weight"].fill_(float("nan"))
    ckpt = saved(tmp_path, state, "diverged.pt")
    result = run_cli("onnx", ckpt, "--arch", "resnet20", "-o", "m.onnx")
    from helpers import assert_clean_error

    assert_clean_error(result, "checkpoint", "diverged.pt", "1 tensor holds NaN or Inf (layer3.2.conv2.weight)")
    assert "atol" not in result.stderr
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_protocols_torch_reads_load_without_warnings(tmp_path, resnet20, protocol, zipped, recwarn):
    """Issue 10: torch's two-line 'Detected pickle protocol' UserWarning was printed."""
    path = saved(tmp_path, resnet20.state_dict(), pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    assert same_weights(load_model(path, "resnet20").model, resnet20)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_protocols_4_and_5_are_refused_in_one_line_naming_the_protocol(tmp_path, resnet20, protocol,
                                                                              zipped, recwarn):
    path = saved(tmp_path, resnet20.state_dict(), pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert f"pickle protocol {protocol}" in message and "unsafe_pickle=True" in message and "\n" not in message
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    assert same_weights(load_model(load_checkpoint(path, unsafe_pickle=True), "resnet20").model, resnet20)


def test_cli_pickle_protocol_refusal_is_the_only_output(run_cli, tmp_path, resnet20):
    ckpt = saved(tmp_path, resnet20.state_dict(), "p5.pt", pickle_protocol=5)
    result = run_cli("onnx", ckpt, "--arch", "resnet20", "-o", "m.onnx")
    from helpers import assert_clean_error

    assert_clean_error(result, "pickle protocol 5")
    assert result.stderr.strip().count("\n") == 0, result  # no UserWarning lines before it
