"""Triton on this machine: the `tritonserver` that PyTriton ships (`pip install 'rexport[serve]'`),
started on a model repository (`TritonServer`), and the environment its Python backend needs.

The Python backend runs models in a stub process that embeds `libpython3.X.so.1.0`. The dynamic
loader finds the system's copy first, so an interpreter built elsewhere (pyenv, a source build)
gets the system's library with its own standard library and site-packages, which fails
(`'_thread.RLock' object has no attribute '_recursion_count'`, or no numpy). `python_backend_env`
detects which library the stub would load (ldd) and points the loader at this interpreter's own
(LD_LIBRARY_PATH), and passes this interpreter's site-packages (REXPORT_SITE_DIRS) so a virtual
environment's packages are found too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rexport.console import log
from rexport.errors import CompatibilityError, InputError, RexportError, require

START_TIMEOUT = 120.0  # seconds for Triton to load every model of a repository
STOP_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def triton_distribution() -> Path:
    """PyTriton's tritonserver tree: bin/tritonserver, backends/python, python_backend_stubs/3.X."""
    pytriton = require("pytriton", "serve", "run Triton Inference Server")
    return Path(pytriton.__file__).parent / "tritonserver"


def bundled_libs() -> Path:
    """The shared libraries PyTriton's wheel bundles (libcudart and friends) that the stub needs."""
    from pytriton.utils.distribution import get_libs_path

    return Path(get_libs_path())


def own_libpython() -> Path | None:
    """This interpreter's shared libpython (LIBDIR/INSTSONAME), or None when it has none."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not soname.startswith("libpython"):
        return None
    path = Path(libdir) / soname
    return path if path.exists() else None


def loaded_libpython(binary: Path, env: dict[str, str] | None = None) -> str | None:
    """The libpython `binary` loads with `env` ("not found" when none), by ldd; None when ldd cannot tell."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        out = subprocess.run([ldd, str(binary)], capture_output=True, text=True, env=env, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, where = line.strip().partition(" => ")
        if name.startswith("libpython"):
            return where.split(" (")[0].strip() or "not found"
    return None


def python_backend_env(stub: Path, libs: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for tritonserver whose Python backend stub is `stub`: the stub loads this
    interpreter's libpython and finds its site-packages; `libs`: PyTriton's bundled libraries."""
    env = dict(os.environ if base is None else base)
    ours = own_libpython()
    paths = [str(libs)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    default = loaded_libpython(stub, {**env, "LD_LIBRARY_PATH": os.pathsep.join(paths)})
    if ours is not None:
        if default is not None and (default == "not found" or not os.path.samefile(default, ours)):
            log.info("the Python backend stub would load %s, not this interpreter's %s: pointing it at %s",
                     default, ours, ours.parent)
        paths.insert(0, str(ours.parent))
    elif default == "not found":
        raise CompatibilityError(f"Triton's Python backend needs libpython{sys.version_info[0]}."
                                 f"{sys.version_info[1]}.so.1.0 and this Python ({sys.executable}) has no shared "
                                 "library; use a Python built with --enable-shared (pyenv: "
                                 "PYTHON_CONFIGURE_OPTS=--enable-shared) or the system's")
    elif default is not None:
        log.warning("warning: this Python (%s) has no shared libpython; Triton's Python backend will load %s, "
                    "which may not match it", sys.executable, default)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    import site

    env["REXPORT_SITE_DIRS"] = os.pathsep.join(site.getsitepackages() + [site.getusersitepackages()])
    return env


def python_stub(dist: Path) -> Path:
    """The Python backend stub PyTriton ships for this interpreter's version."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").iterdir())
        raise CompatibilityError(f"PyTriton ships Triton's Python backend for Python {', '.join(have)}, not "
                                 f"{version}; run rexport under one of those")
    return stub


def prepare_backends(dist: Path, folder: Path) -> Path:
    """A backend directory with the Python backend and the stub for this interpreter's version."""
    stub = python_stub(dist)
    python = folder / "python"
    shutil.copytree(dist / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, python / "triton_python_backend_stub")
    return folder


class Endpoints:
    """Where clients reach a Triton: `host` and `ports` ("http", "grpc", "metrics") as URLs."""

    host: str
    ports: dict[str, int]

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"


class TritonServer(Endpoints):
    """`tritonserver` on a model repository, on this machine; always stopped by `stop()` or `with`.

        with TritonServer("model_repository") as server:      # ports: free ones unless given
            client = tritonclient.http.InferenceServerClient(server.http_url)
    """

    def __init__(self, repository: str | os.PathLike, *, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, host: str = "127.0.0.1", log_verbose: int = 0):
        self.repository = Path(repository)
        if not (self.repository / "README.md").is_file() and not any(self.repository.glob("*/config.pbtxt")):
            raise InputError(f"{self.repository} is not a Triton model repository (no */config.pbtxt); "
                             "write one with `rexport triton`")
        self.host = host
        self.ports = {k: v if v is not None else free_port(host)
                      for k, v in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port))}
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self._work: tempfile.TemporaryDirectory | None = None

    @property
    def log_file(self) -> Path | None:
        return Path(self._work.name) / "tritonserver.log" if self._work is not None else None

    def command(self, backends: Path, binary: Path) -> list[str]:
        return [str(binary), f"--model-repository={self.repository.resolve()}", f"--backend-directory={backends}",
                f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", f"--log-verbose={self.log_verbose}"]

    def start(self, timeout: float = START_TIMEOUT) -> "TritonServer":
        """Start tritonserver and wait until every model is ready; on failure, stop it and say why."""
        dist = triton_distribution()
        self._work = tempfile.TemporaryDirectory(prefix="rexport-triton-")
        try:
            backends = prepare_backends(dist, Path(self._work.name) / "backends")
            env = python_backend_env(backends / "python" / "triton_python_backend_stub", bundled_libs())
            with open(self.log_file, "wb") as out:
                self.process = subprocess.Popen(self.command(backends, dist / "bin" / "tritonserver"), env=env,
                                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("Triton is serving %s: HTTP %s, gRPC %s, metrics %s", self.repository, self.http_url,
                 self.grpc_url, self.metrics_url)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RexportError(f"tritonserver exited ({self.process.returncode}) before it was ready: "
                                   f"{self.failure()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RexportError(f"tritonserver was not ready within {timeout:.0f}s: {self.failure()}")

    def logs(self) -> str:
        file = self.log_file
        return file.read_text(errors="replace") if file is not None and file.exists() else ""

    def failure(self) -> str:
        """The server log's error lines, in one line: why a model did not load."""
        lines = [" ".join(line.split()) for line in self.logs().splitlines()
                 if line.startswith("E") or "failed to load" in line or "error:" in line.lower()]
        lines = [line for line in lines if "NVML" not in line and "DCGM" not in line] or ["(no error in its log)"]
        return " | ".join(lines[-3:])[:2000]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (Triton unloads its models and exits), SIGKILL after `timeout`; then clean up."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the stubs go with it
                process.wait()
        if self._work is not None:
            self._work.cleanup()
            self._work = None

    def run(self) -> None:
        """Start, and serve until SIGINT or SIGTERM; then stop."""
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            self.start()
            while self.process is not None and self.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            log.info("stopping Triton")
        finally:
            self.stop()
            signal.signal(signal.SIGTERM, previous)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
