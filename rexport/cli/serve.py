"""Commands that scale out past one box: a bundle as a Triton model repository, and a real
Triton serving a bundle here."""

from __future__ import annotations

import click

from rexport.cli.app import cli
from rexport.cli.common import Outputs
from rexport.options import LOADING, fill, options


@cli.command("triton")
@click.argument("bundle", type=click.Path())
@options("output", "model", "triton_name", "classifier", "instance_kind", "instances", "max_batch", "queue_delay_us",
         "json", "overwrite", output="model_repository")
def triton_cmd(bundle, **o) -> None:
    """Write a Triton Inference Server model repository for one model of BUNDLE: the classifier,
    a preprocessing model (image bytes in) and an ensemble of the two, with labels and a README."""
    from rexport.serving import RepositoryConfig, export_triton

    report = Outputs(o["overwrite"], [bundle], directories={"output": o["output"]}, json=o["json"]).json
    result = export_triton(bundle, o["output"], fill(RepositoryConfig, o), overwrite=o["overwrite"])
    report.echo(result.format())
    report.write(result.to_dict())


@cli.command("serve")
@click.argument("bundle", type=click.Path())
@options(*LOADING, "triton_name", "host", "http_port", "grpc_port", "metrics_port", "max_batch", "instances",
         "queue_delay_us")
def serve_cmd(bundle, **o) -> None:
    """Serve BUNDLE's model on a real Triton (PyTriton) until Ctrl-C or SIGTERM: KServe v2 over
    HTTP and gRPC, Prometheus metrics, dynamic batching. NAME takes image bytes,
    NAME_classifier preprocessed tensors."""
    from rexport.serving.serve import ServeConfig, serve

    serve(bundle, fill(ServeConfig, o))
