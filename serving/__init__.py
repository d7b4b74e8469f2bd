"""Beyond one box: a bundle as a Triton Inference Server model repository (`export_triton`,
`rexport triton`), Triton started on one here (`TritonServer`), and `rexport serve` (`serve`),
a real Triton through PyTriton running the bundle's Predictor.

Writing a repository needs nothing beyond rexport; running Triton needs `pip install 'rexport[serve]'`
(nvidia-pytriton, which ships tritonserver, and tritonclient). Nothing here imports either until
a server is started.
"""

from rexport.serving.server import TritonServer
from rexport.serving.triton_repo import RepositoryConfig, TritonRepository, export_triton

__all__ = ["export_triton", "RepositoryConfig", "TritonRepository", "TritonServer", "ServeConfig", "serve"]


def __getattr__(name: str):
    if name in ("ServeConfig", "serve", "Serving"):
        from rexport.serving import serve as module

        return getattr(module, name)
    raise AttributeError(f"module 'rexport.serving' has no attribute {name!r}")
