"""The network TensorRT parses: parser errors per node, the network's inputs, and the
optimization profile's min / opt / max shapes."""

from __future__ import annotations

from typing import Any

from rexport.errors import InputError, field_error
from rexport.exporter.tensorrt.config import SHAPES, BuildConfig, Shapes, format_shape
from rexport.runtime.metadata import BatchRange, ModelInfo


def parser_errors(parser: Any, onnx_name: str, limit: int = 5) -> str:
    """Every parser error, per node, in one line."""
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = " ".join(str(err.desc()).split())
        node, node_name, op = err.node(), err.node_name(), err.node_operator()
        if desc.lower() in ("", "false") and op:  # the parser's op check failed without saying why
            desc = f"TensorRT cannot import this {op} node"
        elif "Plugin not found" in desc and op:
            desc = f"{op} is not an ONNX op TensorRT supports, and no plugin provides it"
        where = f"node {node}" if node is not None and int(node) >= 0 else "the model"
        if node_name or op:
            where += f" ({op} {node_name!r})" if node_name else f" ({op})"
        parts.append(f"{where}: {desc}")
    if not parts:
        parts = ["no error reported by the parser"]
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return (f"TensorRT's ONNX parser rejected {onnx_name}: " + "; ".join(parts[:limit]) + more
            + " (check the ops against onnx-tensorrt's operators.md, or re-export it at another opset)")


def network_inputs(network: Any) -> Shapes:
    return {network.get_input(i).name: tuple(int(d) for d in network.get_input(i).shape)
            for i in range(network.num_inputs)}


def profile_shapes(inputs: Shapes, config: BuildConfig, info: ModelInfo | None) -> dict[str, tuple[tuple, tuple, tuple]]:
    """min/opt/max shape of every network input, from --min/opt/max-shapes or from the batch range."""
    if config.min_shapes is not None:
        unknown = sorted(set(config.min_shapes) - set(inputs))
        if unknown:
            raise field_error(config, f"min_shapes names {', '.join(unknown)} but the network's inputs are "
                              f"{', '.join(inputs)}", "min_shapes")
        out = {}
        for name, dims in inputs.items():
            if name not in config.min_shapes:
                if any(d < 0 for d in dims):
                    raise field_error(config, f"input {name} has dynamic dimensions ({format_shape(dims)}); give its "
                                      "shape in min_shapes, opt_shapes and max_shapes", *SHAPES)
                out[name] = (dims, dims, dims)
                continue
            trio = tuple(s[name] for s in (config.min_shapes, config.opt_shapes, config.max_shapes))
            for shape in trio:
                if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape)):
                    raise InputError(f"shape {format_shape(shape)} does not fit input {name} "
                                     f"({format_shape(dims)}, -1 = dynamic)")
            out[name] = trio
        return out
    batch = config.batch or (info.batch if info else BatchRange())
    out = {}
    for name, dims in inputs.items():
        if any(d < 0 for d in dims[1:]):
            raise field_error(config, f"input {name} ({format_shape(dims)}) has dynamic dimensions besides the "
                              "batch; give min_shapes, opt_shapes and max_shapes", *SHAPES)
        if dims and dims[0] < 0:
            rest = tuple(dims[1:])
            out[name] = ((batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
        else:
            if config.batch is not None and not (batch.static and batch.min == dims[0]):
                raise field_error(config, f"input {name} takes only batches of {dims[0]}, so batch={batch} cannot "
                                  "apply; re-export the ONNX with `rexport onnx --batch MIN:OPT:MAX`", "batch")
            out[name] = (dims, dims, dims)
    return out
