"""`rexport inspect`: what a bundle, ONNX file or engine says about itself."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rexport.console import fmt_pct
from rexport.errors import InputError
from rexport.runtime.metadata import ModelInfo


@dataclass
class InspectReport:
    path: Path
    kind: str  # bundle | onnx | engine
    info: ModelInfo | None
    io: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "model": self.info.to_dict() if self.info else None,
                "io": self.io, **self.details}

    def format(self) -> str:
        out = [f"{self.path} ({self.kind})"]
        if self.info:
            i, p = self.info, self.info.preprocess
            out += [f"  arch: {i.arch or '?'} {i.arch_options or ''}".rstrip(),
                    f"  precision: {i.precision}; {i.num_classes} classes"
                    + (f" ({', '.join(i.labels[:5])}{', ...' if len(i.labels) > 5 else ''})" if i.labels else ""),
                    f"  input: {i.input_name} {'x'.join(map(str, i.input_shape))} NCHW float32, batch {i.batch}",
                    f"  preprocess: resize {p.resize}, crop {p.size[0]}x{p.size[1]}, {p.interpolation}, {p.channels}, "
                    f"/ {p.max_pixel_value:g}, mean {list(p.mean)}, std {list(p.std)}",
                    f"  source checkpoint sha256: {i.source_sha256 or '-'}; rexport {i.rexport_version}"]
            if i.calibration:
                c = i.calibration
                weights = {True: ", weights in [-64, 64] (reduce_range)",
                           False: ", weights in [-127, 127] (exact only on CPUs with VNNI)"}.get(
                    c.get("reduce_range"), "") if c.get("target") == "cpu" else ""
                out.append(f"  calibration: {c.get('method')} for {c.get('target')} on {c.get('samples')} samples "
                           f"from {c.get('data')}{weights}")
        if self.io:
            out.append("  I/O: " + "; ".join(f"{k} {v}" for k, v in self.io.items()))
        out += [f"  {line}" for line in self.lines]
        return "\n".join(out)


def inspect_model(path: str | os.PathLike) -> InspectReport:
    from rexport.runtime.bundle import open_if_bundle

    path, bundle = open_if_bundle(path)
    if bundle is not None:
        try:
            m = bundle.manifest
            report = InspectReport(path, "bundle", bundle.info, details={"manifest": m})
            report.lines.append(f"created {m.get('created')} by rexport {m.get('rexport_version')}; "
                                "every file matches its sha256")
            for entry in bundle.models:
                size = (bundle.root / entry["file"]).stat().st_size / 1e6
                default = " (default)" if entry["file"] == m["default"] else ""
                report.lines.append(f"model {entry['file']}: {entry['precision']} {entry['kind']}, {size:.1f} MB"
                                    f"{default}")
            ref = m.get("reference") or {}
            report.lines.append(f"reference: {ref.get('samples')} inputs ({ref.get('source')}), "
                                f"{len(ref.get('images') or [])} image(s)")
            for row in (m.get("validation") or {}).get("rows", []):
                report.lines.append(f"validated {row['name']}: top-1 {fmt_pct(row.get('top1'))}, agreement "
                                    f"{fmt_pct(row.get('agreement')) if row.get('agreement') is not None else 'ref'}")
            return report
        finally:
            bundle.cleanup()
    if path.suffix.lower() == ".onnx":
        return _inspect_onnx(path)
    if path.suffix.lower() in (".engine", ".plan", ".trt"):
        from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path

        if not sidecar_path(path).is_file():
            raise InputError(f"{path} has no sidecar {sidecar_path(path).name}; it was not built by `rexport trt`")
        sidecar = EngineSidecar.read(sidecar_path(path))
        report = InspectReport(path, "engine", sidecar.model, details={"sidecar": sidecar.to_dict()})
        built = "built without a GPU" if sidecar.built_without_gpu else f"built on {sidecar.gpu_name}"
        report.lines.append(f"{sidecar.product} ({sidecar.tensorrt_version}), {built}, runs on "
                            f"{sidecar.describe_target()}, {sidecar.precision}")
        report.lines.append("profile: " + json.dumps(sidecar.profile))
        return report
    raise InputError(f"cannot inspect {path}: expected a bundle, a .onnx or a .engine file")


def _inspect_onnx(path: Path) -> InspectReport:
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"])
    props = backend.metadata
    info = ModelInfo.from_onnx(props, backend.graph_io(), str(path))  # one that does not fit is refused
    session = backend.session
    io = {f"input {i.name}": f"{i.type} {i.shape}" for i in session.get_inputs()}
    io.update({f"output {o.name}": f"{o.type} {o.shape}" for o in session.get_outputs()})
    report = InspectReport(path, "onnx", info, io, {})
    report.lines.append(f"size {path.stat().st_size / 1e6:.1f} MB" + ("" if info else "; no rexport metadata"))
    try:
        import onnx

        from rexport.calibration.census import census
    except ImportError:
        report.lines.append("precision census: install rexport[calibrate] (onnx) to count INT8 layers")
        return report
    model = onnx.load(str(path))
    counts = census(model, (info.calibration or {}).get("census", {}).get("float") if info else None)
    report.details["census"] = counts.to_dict()
    report.details["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    report.lines.append(f"opset {report.details['opset']}; {len(model.graph.node)} nodes")
    report.lines.append(f"precision census: {counts.format()}")
    return report

