"""Every option of the `rexport` command, defined once.

Each concept has one entry in `TABLE`, keyed by its name, which is the API field it fills
(`calib_data` fills `BuildConfig.calib_data` and `QuantizeConfig.calib_data`; `--calib-data` on
every command that takes calibration data) and is the parameter name of the command function.
Choices come from the registries (`METHODS`, `TARGETS`, ...), never from a list written out
again. The table also:

- makes the click options of each command (`options(...)`), with per-command defaults;
- says which option fills a field of the Python API (`find`): the CLI builds each config from
  its options (`fill`), prints an error that names fields (`RexportError.fields`) with the flags
  (`with_flags`), and the command that rebuilds a TensorRT engine is generated from its
  `BuildConfig` (`command_line`);
- holds the flags renamed before 1.0 (`RENAMED`), for a one-line hint instead of "no such option".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import click

from rexport.calibration.int8 import QuantizeConfig
from rexport.calibration.observers import METHODS
from rexport.calibration.qdq import TARGETS
from rexport.calibration.refine import REFINEMENTS
from rexport.exporter import DEFAULT_OPSET, EXPORTERS
from rexport.runtime.backends.onnxruntime import PROVIDER_ALIASES
from rexport.runtime.bench import BenchConfig
from rexport.runtime.gates import Tolerance
from rexport.runtime.metadata import Precision
from rexport.runtime.backends.choice import BENCH_BACKENDS
from rexport.runtime.preprocess import CHANNEL_ORDERS, INTERPOLATIONS
from rexport.runtime.trt_compat import HARDWARE_COMPATIBILITY
from rexport.serving.serve import ServeConfig
from rexport.serving.triton_repo import CLASSIFIERS, INSTANCE_KINDS, RepositoryConfig

# The registries options take their choices from (the vocabulary test checks no list repeats one).
REGISTRIES: dict[str, Any] = {"METHODS": METHODS, "TARGETS": TARGETS, "REFINEMENTS": REFINEMENTS,
                              "EXPORTERS": EXPORTERS, "CHANNEL_ORDERS": CHANNEL_ORDERS,
                              "INTERPOLATIONS": INTERPOLATIONS, "HARDWARE_COMPATIBILITY": HARDWARE_COMPATIBILITY,
                              "PROVIDER_ALIASES": PROVIDER_ALIASES, "Precision": tuple(p.value for p in Precision),
                              "BENCH_BACKENDS": BENCH_BACKENDS, "CLASSIFIERS": CLASSIFIERS,
                              "INSTANCE_KINDS": INSTANCE_KINDS}
REQUIRED = object()  # options(..., name=REQUIRED): the command needs this option

FILE = click.Path(dir_okay=False)
FOLDER = click.Path(file_okay=False)


def _names(registry) -> str:
    return ", ".join(registry)


@dataclass(frozen=True)
class Option:
    name: str  # the concept: the API field it fills and the command function's parameter
    flag: str
    help: str
    type: Any = None  # a click type, or int / float / str
    default: Any = None
    choices: Any = None  # a registry (tuple, or dict: its keys)
    flag_value: Any = None  # a flag without a value: what giving it sets the field to (True; False for --no-X)
    multiple: bool = False
    metavar: str | None = None
    short: str | None = None
    also: tuple[str, ...] = ()  # the same concept under another API name: "ParityConfig.enabled";
    #                              "BuildConfig.precision=fp16" for a flag that sets that value
    render: Callable[[Any], str] | None = None  # a field's value as the flag's argument (default: str)

    @property
    def is_flag(self) -> bool:
        return self.flag_value is not None

    def click_option(self, default: Any = None) -> Callable:
        """The click option of this concept; `default` is the command's, when it differs."""
        required = default is REQUIRED
        default = None if required else self.default if default is None else default
        kwargs: dict[str, Any] = {"help": self.help, "required": required, "multiple": self.multiple}
        if self.is_flag:
            off = self.default if self.default is not None or self.flag_value is False else False
            kwargs.update(is_flag=True, flag_value=self.flag_value, default=off)
        else:
            kwargs.update(type=click.Choice(tuple(self.choices)) if self.choices is not None else self.type,
                          default=default, show_default=default is not None and not self.multiple,
                          metavar=self.metavar)
        return click.option(*(d for d in (self.short, self.flag) if d), self.name, **kwargs)


def _shapes(value: dict) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in value.items())


def _bytes(value: int) -> str:
    return f"{value // 2**20}" if value % 2**20 == 0 else f"{value}B"


DATA = "an image folder (class subfolders or flat), .npy/.npz, or demo[:train|:test]"

TABLE: dict[str, Option] = {o.name: o for o in [
    # -- outputs, common to many commands
    Option("output", "--output", "Where to write the command's output (default: named after the input; see the "
           "command's description).", click.Path(), short="-o"),
    Option("overwrite", "--force", "Replace existing outputs (never one of the command's inputs).", flag_value=True),
    Option("json", "--json", "Write the report as JSON to FILE; - prints it on stdout instead of the text.",
           click.Path(dir_okay=False, allow_dash=True), metavar="FILE"),
    Option("seed", "--seed", "Seed for sampling the data (and for random inputs).", int, QuantizeConfig.seed),
    Option("bundle", "--bundle", "Also write a bundle of the input and every output, with references "
           "(see `rexport bundle`).", FOLDER, metavar="DIR"),
    # -- export
    Option("arch", "--arch", "Architecture (see `rexport models`); detected from the checkpoint if left out."),
    Option("num_classes", "--num-classes", "Number of classes (default: read from the checkpoint's classifier).",
           int),
    Option("input_size", "--input-size", "N or HxW (default: the arch's, 224 or 32)."),
    Option("batch", "--batch", "Batch sizes the model takes: N (static), MIN:MAX or MIN:OPT:MAX (dynamic); "
           "trt: the optimization profile (default: the range recorded in the ONNX).", metavar="MIN:OPT:MAX",
           render=str),
    Option("opset", "--opset", "ONNX opset ("
           f"{', '.join(f'{name} exporter {lo}-{hi}' for name, (lo, hi) in EXPORTERS.items())}).", int, DEFAULT_OPSET),
    Option("exporter", "--exporter", "torch.onnx exporter.", default=next(iter(EXPORTERS)), choices=EXPORTERS),
    Option("labels", "--labels", "Labels file: one per line, or JSON.", FILE),
    Option("key_map", "--key-map", "Rewrite a checkpoint key prefix (repeatable).", multiple=True, metavar="OLD=NEW"),
    Option("shortcut", "--shortcut", "CIFAR ResNets: the shortcut option, as `rexport models` lists them (default: "
           "detected).", metavar="OPTION"),
    Option("unsafe_pickle", "--unsafe-pickle", "Allow a full unpickle of the checkpoint (runs code from the file: "
           "trusted files only).", flag_value=True),
    Option("images", "--images", "A folder of images: onnx also checks parity on them; bench times their "
           "preprocessing.", FOLDER),
    Option("atol", "--atol", "Parity: absolute tolerance on logits.", float, Tolerance.atol),
    Option("rtol", "--rtol", "Parity: relative tolerance on logits.", float, Tolerance.rtol),
    Option("parity", "--no-parity", "Skip the ONNX Runtime vs PyTorch check.", flag_value=False, default=True,
           also=("ParityConfig.enabled",)),
    Option("fp16", "--fp16", "FP16: onnx also writes OUTPUT.fp16.onnx; trt builds an FP16 engine (from an FP16 "
           "ONNX, converted on the fly from an FP32 one).", flag_value=True, also=("BuildConfig.precision=fp16",)),
    Option("int8", "--int8", "INT8 (needs --calib-data, or a Q/DQ ONNX for trt): onnx also writes "
           "OUTPUT.int8.onnx; trt builds an INT8 engine.", flag_value=True, also=("BuildConfig.precision=int8",)),
    # -- preprocessing overrides
    Option("mean", "--mean", "Per-channel mean after scaling, e.g. 0.485,0.456,0.406."),
    Option("std", "--std", "Per-channel std, e.g. 0.229,0.224,0.225."),
    Option("resize", "--resize", "Shorter side before the center crop (default: input/0.875, or the input size "
           "for CIFAR archs).", int),
    Option("channels", "--channels", "Channel order the model expects.", choices=CHANNEL_ORDERS),
    Option("interpolation", "--interpolation", "Resize filter (default bilinear).", choices=INTERPOLATIONS),
    Option("max_pixel_value", "--max-pixel-value", "Pixels are divided by this (255: 0..1, 1: 0..255).", float),
    # -- calibration
    Option("calib_data", "--calib-data", f"Calibration data: {DATA}. Also the FP16 range check's samples, and "
           "trt's validation data unless --val-data.", metavar="DATA"),
    Option("calib_samples", "--calib-samples", "Calibration samples to use.", int, QuantizeConfig.calib_samples),
    Option("calib_method", "--calib-method", "Calibrator for activation ranges.",
           default=QuantizeConfig.calib_method, choices=METHODS),
    Option("percentile", "--percentile", "For --calib-method percentile.", float, QuantizeConfig.percentile),
    Option("target", "--target", "trt: int8 symmetric for TensorRT; cpu: uint8 activations for ONNX Runtime on "
           "CPUs.", default=QuantizeConfig.target, choices=TARGETS),
    Option("reduce_range", "--no-reduce-range", "cpu target: weights in [-127, 127] instead of [-64, 64]; exact only "
           "on x86 CPUs with VNNI (without it, ONNX Runtime's int16 sums saturate).", flag_value=False),
    Option("calib_refine", "--calib-refine", f"After calibration: {_names(REFINEMENTS)} (range search, GPTQ weight "
           "rounding, bias correction); a comma list, all or none.", default="all", metavar="LIST"),
    Option("calib_cache", "--calib-cache", "TensorRT 10 calibration cache: calibrate writes it (trt target; default "
           "OUTPUT with .cache); trt reads it if it exists and writes it after calibrating.", FILE),
    Option("keep_float", "--keep-float", "Keep this layer (a node name) in float (repeatable).", multiple=True,
           metavar="NODE"),
    Option("use_stats_cache", "--no-stats-cache", "Recollect activation statistics instead of reading the cache.",
           flag_value=False, default=True),
    # -- validation and gates
    Option("val_data", "--val-data", f"Validation data: {DATA}. Scores, gates and the INT8 budget use it; a "
           "bundle stores its reference inputs (defaults: see the command).", metavar="DATA",
           also=("validate.data", "make_bundle.data")),
    Option("val_samples", "--val-samples", "Validation samples to use (default: the command's; validate: all).",
           int, also=("validate.samples", "make_bundle.samples")),
    Option("max_top1_drop", "--max-top1-drop", "Gate: top-1 accuracy at most this many points below the reference "
           "(needs labels); calibrate keeps layers in float until it holds.", float),
    Option("min_agreement", "--min-agreement", "Gate: top-1 agreement with the reference, 0..1; calibrate keeps "
           "layers in float until it holds (trt's default: 0.99, INT8 0.95).", float),
    Option("checkpoint", "--checkpoint", "PyTorch checkpoint whose logits are the reference (needs torch; default: "
           "the FP32 ONNX).", FILE),
    Option("reference", "--reference", "FP32 ONNX to validate against (default: the input when it is FP32).", FILE),
    Option("validate", "--no-validate", "Skip validation (trt: the check against ONNX Runtime; bundle: the stored "
           "validation report).", flag_value=False, default=True),
    # -- bundles and loading a model
    Option("default", "--default", "The model load() picks by default (a file name)."),
    Option("archive", "--archive", "Write a single .tar.gz instead of a directory.", flag_value=True),
    Option("model", "--model", f"Which model of a bundle: {_names(p for p in Precision if p != Precision.mixed)}, engine "
           "or a file name."),
    Option("backend", "--backend", "Inference backend. auto: TensorRT for engines; for ONNX, ONNX Runtime when "
           "--providers names any or it has a GPU, else OpenVINO on x86 CPUs when installed, else ONNX Runtime. "
           "bench also takes all: every backend installed here, side by side.",
           default="auto", choices=BENCH_BACKENDS),
    Option("providers", "--providers", f"onnxruntime providers: auto, {_names(PROVIDER_ALIASES)}, or a comma list "
           "(naming any runs ONNX Runtime).", default="auto"),
    Option("threads", "--threads", "Inference threads: ONNX Runtime intra-op, OpenVINO's (default: theirs).", int),
    Option("save_choice", "--save-choice", "With --backend all on a bundle directory: record the fastest backend "
           "of each model for this machine, where --backend auto will use it.", flag_value=True),
    Option("draft", "--jpeg-draft", "Decode JPEGs much larger than the model's input at 1/2-1/8 scale: several "
           "times faster, not exact (docs/runtime.md: the agreement it costs).", flag_value=True),
    Option("top_k", "--top-k", "How many classes to print per image.", int, 5, short="-k"),
    Option("family", "--family", "Only this family (e.g. resnet, cifar_resnet, preact_resnet, plain)."),
    # -- bench
    Option("batch_sizes", "--batch-sizes", "Batch sizes to measure, comma separated (e.g. 1,8).", default="1"),
    Option("iterations", "--iterations", "Timed calls per model and batch size.", int, BenchConfig.iterations),
    Option("duration", "--duration", "Seconds per measurement (stops before --iterations if reached).", float),
    Option("warmup", "--warmup", "Untimed calls first.", int, BenchConfig.warmup),
    Option("bench_threads", "--bench-threads", "Concurrent callers.", int, BenchConfig.bench_threads),
    # -- TensorRT
    Option("rtx", "--rtx", "Build with TensorRT for RTX (the default when it is the only TensorRT installed); works "
           "without a GPU.", flag_value=True, also=("BuildConfig.flavour=rtx",)),
    Option("compute_capabilities", "--compute-capability", "TensorRT for RTX: the GPUs to build for, e.g. 8.6,8.9,12.0 "
           "(default: the GPU here; without one, 8.6,8.9,12.0).", metavar="CC[,CC...]", render=",".join),
    Option("fp16_flag", "--fp16-flag", "TensorRT 10.x: BuilderFlag.FP16 on the FP32 ONNX instead.", flag_value=True),
    Option("legacy_calibrator", "--legacy-calibrator", "TensorRT 10.x: TensorRT's own INT8 calibrator instead of "
           "Q/DQ.", flag_value=True),
    Option("weakly_typed", "--weakly-typed", "TensorRT 10.x: build an FP16/Q-DQ ONNX weakly typed (with flags).",
           flag_value=True),
    Option("min_shapes", "--min-shapes", "trtexec style NAME:DxDxDxD[,...]; with --opt-shapes and --max-shapes.",
           render=_shapes),
    Option("opt_shapes", "--opt-shapes", "See --min-shapes.", render=_shapes),
    Option("max_shapes", "--max-shapes", "See --min-shapes.", render=_shapes),
    Option("workspace", "--workspace", "Workspace limit: MiB, or with a unit (512M, 2G).", render=_bytes),
    Option("timing_cache", "--timing-cache", "Load if it exists; save after the build.", FILE),
    Option("merge_timing_caches", "--merge-timing-cache", "Merge another timing cache in first (repeatable).", FILE,
           multiple=True),
    Option("optimization_level", "--opt-level", "Builder optimization level 0-5 (TensorRT's default 3).", int),
    Option("hardware_compatibility", "--hardware-compat", "Engines that load on other GPUs.",
           default=next(iter(HARDWARE_COMPATIBILITY)), choices=HARDWARE_COMPATIBILITY),
    Option("version_compatible", "--version-compatible", "Engine that also runs on later TensorRT versions.",
           flag_value=True),
    Option("dla_core", "--dla-core", "Build for this DLA core (Jetson), with GPU fallback.", int),
    Option("gpu_fallback", "--no-gpu-fallback", "With --dla-core: fail instead of running layers on the GPU.",
           flag_value=False, default=True),
    # -- serving on Triton
    Option("triton_name", "--name", "Triton name of the model that takes image bytes; the others are "
           "NAME_classifier and (triton) NAME_preprocess (default: the architecture).",
           also=("RepositoryConfig.name", "ServeConfig.name")),
    Option("classifier", "--classifier", "native: Triton's onnxruntime_onnx / tensorrt_plan; runtime: Python "
           "backend running rexport's runtime (servers without those backends).", default=RepositoryConfig.classifier,
           choices=CLASSIFIERS),
    Option("instance_kind", "--instance-kind", "Where the classifier's instances run (default: gpu for engines, "
           "else cpu; gpu adds ONNX Runtime's TensorRT accelerator in the model's precision).",
           choices=INSTANCE_KINDS),
    Option("instances", "--instances", "Model instances Triton runs side by side.", int, RepositoryConfig.instances),
    Option("max_batch", "--max-batch", "Largest batch Triton forms (max_batch_size; default: the model's).", int),
    Option("queue_delay_us", "--queue-delay", "Dynamic batching: microseconds a request may wait for others.",
           int, RepositoryConfig.queue_delay_us),
    Option("host", "--host", "Address to listen on.", default=ServeConfig.host),
    Option("http_port", "--http-port", "KServe v2 HTTP port.", int, ServeConfig.http_port),
    Option("grpc_port", "--grpc-port", "KServe v2 gRPC port.", int, ServeConfig.grpc_port),
    Option("metrics_port", "--metrics-port", "Prometheus metrics port (/metrics).", int, ServeConfig.metrics_port),
]}

# Groups of options that go together on several commands.
PREPROCESS = ("mean", "std", "resize", "channels", "interpolation", "max_pixel_value")
CALIBRATION = ("calib_method", "percentile", "target", "reduce_range", "calib_refine", "calib_samples", "seed",
               "val_data", "val_samples", "max_top1_drop", "min_agreement", "keep_float", "use_stats_cache")
LOADING = ("model", "backend", "providers", "threads")

# Flags renamed before 1.0 -> the concepts that took them over (the one a command has is named).
RENAMED: dict[str, tuple[str, ...]] = {
    "--data": ("calib_data", "val_data"), "--samples": ("calib_samples", "val_samples"),
    "--method": ("calib_method",), "--refine": ("calib_refine",), "--cache": ("calib_cache",),
    "--keep-fp32": ("keep_float",), "--batch": ("batch_sizes",),
}


def options(*names: str, **defaults: Any) -> Callable:
    """Decorate a command with the table's options `names`, in that order. `defaults` give this
    command's default for a concept where it differs (`calib_samples=64`), or REQUIRED."""
    unknown = [n for n in (*names, *defaults) if n not in TABLE]
    if unknown:
        raise KeyError(f"not in the options table: {', '.join(unknown)}")

    def decorate(f):
        for name in reversed(names):
            f = TABLE[name].click_option(defaults.get(name))(f)
        return f

    return decorate


def fill(config_class: type, given: dict[str, Any], **extra: Any) -> Any:
    """`config_class` (a config dataclass) from a command's parsed options: each field from the
    option that fills it, if the command has it; `extra` gives the fields that need parsing first."""
    kwargs = dict(extra)
    for f in dataclasses.fields(config_class):
        option = find(f"{config_class.__name__}.{f.name}")
        if f.name not in kwargs and option is not None and option.name in given:
            kwargs[f.name] = given[option.name]
    return config_class(**kwargs)


def flag(name: str) -> str:
    return TABLE[name].flag


def find(field: str, value: Any = None) -> Option | None:
    """The option for an API field: a field named as its concept ("QuantizeConfig.calib_method", or
    a bare "calib_method"), one under another name (`also`: "ParityConfig.enabled"), or
    "BuildConfig.precision" with the value "fp16" (the flag that stands for that value)."""
    for option in TABLE.values():
        if field in option.also or (value is not None and f"{field}={value}" in option.also):
            return option
    return TABLE.get(field.rpartition(".")[2])


def with_flags(message: str, fields: Iterable[str]) -> str:
    """An error message that names API fields, as the CLI says it: each field (`calib_method`;
    `precision='fp16'` for a value one flag stands for; `unsafe_pickle=True`, the value a flag
    without an argument gives) becomes its flag."""
    for field in fields:
        word = re.escape(field.rpartition(".")[2])

        def replace(m: re.Match) -> str:
            value = m.group(2)
            option = find(field, value)
            if option is None:
                return m.group(0)
            stands_for = value is None or f"{field}={value}" in option.also
            if stands_for or (option.is_flag and value == str(option.flag_value)):
                return option.flag
            return f"{option.flag} {value}"

        message = re.sub(rf"(?<![\w-])({word})(?:=['\"]?([\w.:,-]+)['\"]?)?(?![\w-]|\.\w)", replace, message)
    return message


def renamed(flag_given: str, names: Iterable[str]) -> str | None:
    """"--data was renamed --calib-data" for a flag renamed before 1.0, among a command's options."""
    names = set(names)
    new = [TABLE[n].flag for n in RENAMED.get(flag_given, ()) if n in names]
    return f"{flag_given} was renamed {' or '.join(new)}" if new else None


def command_line(config: Any, skip: Iterable[str] = ()) -> list[str]:
    """The flags that give `config` (a config dataclass) on the command line: one per field that
    differs from its default, through the table, so no second map of the flags can drift from it."""
    owner, words = type(config).__name__, []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if f.name in skip or value == default:
            continue
        field = f"{owner}.{f.name}"
        option = find(field, value)
        if option is None:
            if any(a.startswith(f"{field}=") for o in TABLE.values() for a in o.also):
                continue  # a value no flag stands for (flavour="tensorrt": whichever is installed)
            raise KeyError(f"{field} has no option in rexport/options.py")
        if option.is_flag:
            words.append(option.flag)  # the field differs from its default: the flag gives it
        elif option.multiple:
            for item in value:
                words += [option.flag, str(item)]
        else:
            words += [option.flag, (option.render or str)(value)]
    return words
