"""Property-based fuzzing of every loader rexport has (issue 10), with hypothesis.

Loaders: checkpoints (torch zip, legacy torch.save, safetensors headers), ONNX files and their
metadata (bytes, graph edits, metadata_props; through rexport.onnx_file and rexport.runtime.load),
engine sidecars, .npy/.npz data, the statistics cache and the TensorRT calibration cache, image
files, label files, bundle manifests and bundle archives. Inputs are valid seeds mutated byte by
byte, or generated with a structure (manifests, headers, tar members) whose fields take any type.
The property is the same everywhere (fuzz_support.attempt): a correct result, or a RexportError
whose message is one non-empty line; never another exception, a warning or printed text, a hang,
a memory blow-up, or a file written or left behind outside the output.

Running it:

    pytest tests/fuzz                          # CI: profile "ci", a fixed (derandomized) seed, ~1 min
    REXPORT_FUZZ=long pytest tests/fuzz        # profile "long": 25x the examples, new ones each run
    REXPORT_FUZZ=200 pytest tests/fuzz         # any multiplier of the CI example counts
    HYPOTHESIS_PROFILE=long pytest tests/fuzz  # the same as REXPORT_FUZZ=long
    REXPORT_FUZZ_TIMEOUT=120 ...               # the per-example limit in seconds (default 30)
    REXPORT_FUZZ_MEMORY_MB=8192 ...            # the memory a call may add (default 4096 MB)

What the fuzzing found is pinned, input by input, in test_fuzz_regressions.py.

A failure prints the smallest input hypothesis found and a `@reproduce_failure(...)` line that
replays it exactly (paste it above the test's @given); in the "ci" profile the same examples run
every time, so a CI failure reproduces with the plain command.
"""

from __future__ import annotations

import tempfile

import pytest
from fuzz_support import Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The watched work tree; TMPDIR and the working directory point into it while a module runs."""
    space = Workspace(tmp_path_factory.mktemp("fuzz"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(space.tmp))
        mp.setattr(tempfile, "tempdir", str(space.tmp))
        mp.chdir(space.cwd)
        yield space
