"""Refinements after calibration: better INT8 from the same calibration data, torch-free (numpy and
ONNX Runtime). Each one is measured in `benchmarks/accuracy.py`.

- ranges: every activation a quantized Conv/Gemm reads gets the clipping threshold that minimises
  the error of *those layers' outputs* (sampled im2col rows times the weights), not of the tensor
  alone. The calibrator's threshold (`method`) is one of the candidates, so this never picks a
  range that is worse on the sampled rows.
- gptq: weights are rounded to integers by GPTQ (Frantar et al., 2022, "Optimal Brain
  Quantization" made fast; like AdaRound it chooses the rounding from the layer's inputs): column
  by column, each column's rounding error is compensated on the columns not yet rounded through
  the inverse Hessian of the layer's quantized inputs, minimising ||W X - W_q X||. Scales stay
  per channel, max |w| / qmax, so the files obey the same rules.
- bias: bias correction (Nagel et al., 2019): the integer weights move each output channel's
  mean by (W_q - W) E[x], with E[x] the layer's mean quantized input row on the calibration
  data; the bias takes it back.

Time and memory stay bounded on wide models: the range search scores each candidate on a budget of
multiply-accumulates (fewer sampled rows for wider layers, outputs randomly projected to
`RANGE_PROJECTION` channels) and tries `RANGE_CANDIDATES` thresholds; GPTQ's Hessians (d x d, d = input
channels x kernel area, accumulated batch by batch) are kept for layers up to `GPTQ_MAX_INPUTS`
inputs, and wider ones are rounded to nearest (bias correction still applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rexport.calibration.qdq import (SAME_SCALE, QParams, activation_qparams, fake_quant, quantizable_nodes,
                                     residual_adds, weight_axis, weight_qmax, weight_scales)
from rexport.calibration.stats import TensorStats, run_intermediates
from rexport.console import log
from rexport.errors import InputError
from rexport.onnx_graph import initializers, producers

REFINEMENTS = ("ranges", "gptq", "bias")
RANGE_ROWS = 2048  # sampled input rows per layer for the range search, at most
RANGE_MACS = 2048 * 576 * 64  # per candidate and layer: fewer rows for wider layers (ResNet-20's widest: 2048)
RANGE_MIN_ROWS = 256
RANGE_PROJECTION = 64  # a layer with more output channels is scored on this many random projections of them
RANGE_CANDIDATES = 48  # evenly spaced thresholds up to max |x| (a finer search of this proxy scored worse)
GPTQ_MAX_INPUTS = 2304  # GPTQ costs O(d^3) per layer: wider layers (d = C x kh x kw) are rounded to nearest
GPTQ_DAMPING = 0.01  # fraction of the Hessian's mean diagonal added to it


def parse_refinements(text: str) -> tuple[str, ...]:
    """'ranges,gptq,bias' (or 'all', or 'none') -> the tuple, checked."""
    text = text.strip().lower()
    if text in ("all", ""):
        return REFINEMENTS
    if text == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in REFINEMENTS]
    if unknown:
        raise InputError(f"unknown refinement {unknown[0]!r}: choose from {', '.join(REFINEMENTS)}, all or none")
    return names


@dataclass(frozen=True)
class Layer:
    """A quantized Conv/Gemm, as im2col sees it: rows of d = C/groups x kh x kw inputs per group."""

    node: str
    input: str
    output: str  # its output tensor in the FP32 model (before the ReLU)
    weight: np.ndarray  # groups x K/groups x d (float32)
    axis: int  # the output-channel axis of the weight as stored
    shape: tuple[int, ...]  # the weight's stored shape
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    gemm: bool = False

    @property
    def groups(self) -> int:
        return self.weight.shape[0]

    def positions(self, shape: tuple[int, ...]) -> int:
        """How many output positions (samples x output pixels) an input of this shape gives."""
        if self.gemm:
            return shape[0]
        return shape[0] * int(np.prod(self._out_size(shape)))

    def _out_size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        return ((shape[2] + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                (shape[3] + left + right - dw * (kw - 1) - 1) // sw + 1)

    def rows(self, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The im2col rows of input batch `x` at flat output positions `idx`: len(idx) x groups x d."""
        if self.gemm:
            return x.reshape(len(x), 1, -1)[idx]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(self.pads) else x
        oh, ow = self._out_size(x.shape)
        b, rest = np.divmod(idx, oh * ow)
        r, q = np.divmod(rest, ow)
        ih = r[:, None] * sh + np.arange(kh)[None, :] * dh
        iw = q[:, None] * sw + np.arange(kw)[None, :] * dw
        patches = xp[b[:, None, None, None], np.arange(x.shape[1])[None, :, None, None], ih[:, None, :, None],
                     iw[:, None, None, :]]
        return patches.reshape(len(idx), self.groups, -1)

    def sample(self, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` im2col rows of `x` at random output positions."""
        return self.rows(x, rng.integers(0, self.positions(x.shape), count))

    def matmul(self, rows: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        """rows (n x groups x d) times the weight (groups x K/groups x d) -> n x groups x K/groups."""
        weight = self.weight if weight is None else weight
        return np.stack([rows[:, g] @ weight[g].T for g in range(self.groups)], axis=1)

    def stored(self, matrix: np.ndarray | None = None) -> np.ndarray:
        """groups x K/groups x d (default: the weight) -> the layout the model stores."""
        matrix = self.weight if matrix is None else matrix
        if self.gemm:
            return matrix[0] if self.axis == 0 else matrix[0].T
        return matrix.reshape(self.shape)

    def matrix(self, stored: np.ndarray) -> np.ndarray:
        """The stored layout -> groups x K/groups x d."""
        if self.gemm:
            return (stored if self.axis == 0 else stored.T)[None]
        return stored.reshape(self.weight.shape)


def layers_of(model, keep_float: set[str]) -> list[Layer]:
    """The Conv/Gemm nodes quantization will touch, read off the FP32 model."""
    weights = initializers(model.graph)
    out = []
    for node in quantizable_nodes(model):
        if node.name in keep_float:
            continue
        attrs = {a.name: (list(a.ints) if a.ints else a.i) for a in node.attribute}
        w = weights[node.input[1]].astype(np.float32)
        axis = weight_axis(node, w)
        if node.op_type == "Gemm":
            if attrs.get("transA", 0):
                continue
            matrix = (w if axis == 0 else w.T)[None]
            out.append(Layer(node.name, node.input[0], node.output[0], matrix, axis, w.shape, gemm=True))
            continue
        if w.ndim != 4:
            continue  # 1-D / 3-D convolutions: quantized, not refined
        groups = int(attrs.get("group", 1))
        out.append(Layer(node.name, node.input[0], node.output[0], w.reshape(groups, w.shape[0] // groups, -1),
                         axis, w.shape, tuple(w.shape[2:]), tuple(attrs.get("strides", (1, 1))),
                         tuple(attrs.get("pads", (0, 0, 0, 0))), tuple(attrs.get("dilations", (1, 1)))))
    return out


@dataclass
class Refinement:
    """What refinement changes: activation parameters, integer weights, bias shifts."""

    params: dict[str, QParams]
    rounded: dict[str, np.ndarray] = field(default_factory=dict)  # node -> integer weights (stored layout)
    bias_shift: dict[str, np.ndarray] = field(default_factory=dict)  # node -> per-channel shift


def _projected(layer: Layer, rng: np.random.Generator) -> Layer:
    """The layer with its outputs randomly projected to RANGE_PROJECTION channels (when it has more):
    squared output errors keep their expectation, at a fraction of the cost."""
    k = layer.weight.shape[1]
    if layer.groups > 1 or k <= RANGE_PROJECTION:
        return layer
    p = rng.standard_normal((k, RANGE_PROJECTION)).astype(np.float32) / np.float32(np.sqrt(RANGE_PROJECTION))
    return replace(layer, weight=(layer.weight[0].T @ p).T[None])


def search_ranges(model, layers: list[Layer], params: dict[str, QParams], stats: dict[str, TensorStats],
                  inputs: np.ndarray, target: str, batch_size: int, seed: int) -> dict[str, QParams]:
    """Per activation read by `layers`, the threshold with the least relative output error."""
    rng = np.random.default_rng(seed)
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        readers.setdefault(layer.input, []).append(_projected(layer, rng))
    identities = dict.fromkeys(i for i, _ in residual_adds(model).values()) if target == "trt" else {}  # ordered:
    # the random samples below are drawn tensor by tensor, so a set's order would change the result per process
    tensors = [t for t in dict.fromkeys([*readers, *identities]) if t in stats and t in params]
    batches = max(1, -(-len(inputs) // batch_size))
    wanted = {layer.node: int(np.clip(RANGE_MACS // layer.weight.size, RANGE_MIN_ROWS, RANGE_ROWS))
              for group in readers.values() for layer in group}
    rows: dict[str, list[np.ndarray]] = {node: [] for node in wanted}
    samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for values in run_intermediates(model, tensors, inputs, batch_size, "range search (layer outputs)"):
        for t in tensors:
            x = values[t]
            for layer in readers.get(t, ()):
                rows[layer.node].append(layer.sample(x, -(-wanted[layer.node] // batches), rng))
            if t in identities:
                samples[t].append(rng.choice(x.ravel(), min(x.size, 8 * RANGE_ROWS // batches)))
    out = dict(params)
    for t in tensors:
        st = stats[t]
        if st.absmax == 0:
            continue
        references = [(layer, r, layer.matmul(r)) for layer in readers.get(t, ())
                      for r in [np.concatenate(rows[layer.node])]]
        own = np.concatenate(samples[t]) if samples[t] else None

        def error(q: QParams) -> float:
            err = sum(float(np.mean((layer.matmul(fake_quant(r, q)) - y) ** 2) / max(np.mean(y ** 2), 1e-20))
                      for layer, r, y in references)
            if own is not None:
                err += float(np.mean((fake_quant(own, q) - own) ** 2) / max(np.mean(own ** 2), 1e-20))
            return err

        thresholds = np.linspace(st.absmax / RANGE_CANDIDATES, st.absmax, RANGE_CANDIDATES)
        candidates = [params[t], *(activation_qparams(st.min, st.max, target, float(th)) for th in thresholds)]
        errors = [error(q) for q in candidates]
        out[t] = candidates[int(np.argmin(errors))]  # ties: the first, the calibrator's own
    if target == "cpu":  # a tensor after pooling/reshaping shares its source's scale: the source takes it
        made_by = producers(model.graph)
        for t in tensors:
            src = t
            while made_by.get(src) is not None and made_by[src].op_type in SAME_SCALE:
                src = made_by[src].input[0]
            if src != t and src in out:
                out[src] = out[t]
        for node in model.graph.node:
            if node.op_type in SAME_SCALE and node.input[0] in out:
                out[node.output[0]] = out[node.input[0]]
    return out


@dataclass
class Moments:
    """Per layer, over its quantized input rows on the calibration data: the mean row and (for
    GPTQ) the Hessian X^T X, per group."""

    mean: dict[str, np.ndarray]  # node -> groups x d
    hessian: dict[str, np.ndarray]  # node -> groups x d x d (only for the layers GPTQ rounds)


def input_moments(model, layers: list[Layer], params: dict[str, QParams], inputs: np.ndarray, batch_size: int,
                  seed: int, hessian: bool) -> Moments:
    rng = np.random.default_rng(seed + 1)
    batches = max(1, -(-len(inputs) // batch_size))
    sums = {layer.node: np.zeros((layer.groups, layer.weight.shape[2])) for layer in layers}
    counts = dict.fromkeys(sums, 0)
    hessians = {layer.node: np.zeros((layer.groups, layer.weight.shape[2], layer.weight.shape[2]))
                for layer in layers if hessian and layer.weight.shape[2] <= GPTQ_MAX_INPUTS}
    tensors = list(dict.fromkeys(layer.input for layer in layers))
    for values in run_intermediates(model, tensors, inputs, batch_size, "layer input statistics"):
        for layer in layers:
            count = -(-max(4096, 2 * layer.weight.shape[2]) // batches)
            r = fake_quant(layer.sample(values[layer.input], count, rng), params[layer.input])
            sums[layer.node] += r.sum(axis=0)
            counts[layer.node] += len(r)
            for g in range(layer.groups) if layer.node in hessians else ():
                hessians[layer.node][g] += r[:, g].T @ r[:, g]  # float32 products, summed in float64
    return Moments({n: sums[n] / max(1, counts[n]) for n in sums}, hessians)


def gptq_round(weight: np.ndarray, hessian: np.ndarray, scales: np.ndarray, qmax: int,
               block: int = 128) -> np.ndarray:
    """GPTQ for one K x d weight with its d x d input Hessian: the integers, K x d."""
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    d = w.shape[1]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable")  # the most used inputs first ("act order")
    w, h = w[:, order], h[np.ix_(order, order)]
    h[np.diag_indices(d)] += GPTQ_DAMPING * float(np.mean(np.diag(h)))
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: inv(H) = U^T U
    except np.linalg.LinAlgError:
        return np.clip(np.round(weight / scales[:, None]), -qmax, qmax)
    s = scales.astype(np.float64)
    q = np.zeros_like(w)
    for start in range(0, d, block):
        end = min(start + block, d)
        wb = w[:, start:end].copy()
        err = np.zeros_like(wb)
        ub = u[start:end, start:end]
        for j in range(end - start):
            q[:, start + j] = np.clip(np.round(wb[:, j] / s), -qmax, qmax)
            e = (wb[:, j] - q[:, start + j] * s) / ub[j, j]
            wb[:, j:] -= np.outer(e, ub[j, j:])
            err[:, j] = e
        w[:, end:] -= err @ u[start:end, end:]
    out = np.empty_like(q)
    out[:, order] = q
    return out


def gptq_weights(layers: list[Layer], moments: Moments, qmax: int) -> dict[str, np.ndarray]:
    """Node -> GPTQ integer weights (stored layout)."""
    out = {}
    for layer in layers:
        if layer.node not in moments.hessian:
            continue  # wider than GPTQ_MAX_INPUTS: rounded to nearest
        scales = weight_scales(layer.stored(), layer.axis, qmax).reshape(layer.groups, -1)
        q = np.stack([gptq_round(layer.weight[g], moments.hessian[layer.node][g], scales[g], qmax)
                      for g in range(layer.groups)])
        out[layer.node] = layer.stored(q)
    return out


def weight_biases(layers: list[Layer], moments: Moments, rounded: dict[str, np.ndarray],
                  qmax: int) -> dict[str, np.ndarray]:
    """Node -> bias shift: minus (W_q - W) E[x] per output channel."""
    out = {}
    for layer in layers:
        stored = layer.stored()
        scales = weight_scales(stored, layer.axis, qmax)
        ints = rounded.get(layer.node)
        if ints is None:
            shape = [1] * stored.ndim
            shape[layer.axis] = -1
            ints = np.clip(np.round(stored / scales.reshape(shape)), -qmax, qmax)
        error = layer.matrix(ints) * scales.reshape(layer.groups, -1, 1) - layer.weight  # groups x K x d
        out[layer.node] = -np.einsum("gkd,gd->gk", error, moments.mean[layer.node]).reshape(-1).astype(np.float32)
    return out


def refine(model, params: dict[str, QParams], stats: dict[str, TensorStats], inputs: np.ndarray, *,
           target: str, reduce_range: bool | None, refinements: tuple[str, ...], keep_float: set[str],
           batch_size: int = 16, seed: int = 0) -> Refinement:
    """Run the chosen refinements on the FP32 `model` (tensor and node names are those of the graph
    Q/DQ goes into)."""
    result = Refinement(dict(params))
    if not refinements:
        return result
    layers = layers_of(model, keep_float)
    if "ranges" in refinements:
        result.params = search_ranges(model, layers, params, stats, inputs, target, batch_size, seed)
        changed = sum(1 for t, q in result.params.items() if params.get(t) != q)
        log.info("range search: %d of %d activation ranges changed", changed, len(params))
    qmax = weight_qmax(target, reduce_range)
    if "gptq" in refinements or "bias" in refinements:
        layers = [layer for layer in layers if layer.input in result.params]
        moments = input_moments(model, layers, result.params, inputs, batch_size, seed, "gptq" in refinements)
        if "gptq" in refinements:
            result.rounded = gptq_weights(layers, moments, qmax)
            if len(result.rounded) < len(layers):
                log.info("GPTQ: %d of %d layers; %d wider than %d inputs are rounded to nearest", len(result.rounded),
                         len(layers), len(layers) - len(result.rounded), GPTQ_MAX_INPUTS)
        if "bias" in refinements:
            result.bias_shift = weight_biases(layers, moments, result.rounded, qmax)
    return result
