"""What every fuzz test shares: the settings, the mutations, and the one property.

The property (issue 10), for every loader and every generated or mutated input:

    the call returns a correct result (checked by the test), or raises a RexportError whose
    message is one non-empty line; never another exception, never a Python warning or text
    printed on the way, never a hang (a per-example alarm) or a memory bomb (a per-call cap on
    the address space), and never a file written or left behind outside the output
    (the whole fuzz work tree, its private TMPDIR and the working directory are compared
    before and after each call).

Settings: see the docstring of tests/fuzz/conftest.py (profiles "ci" and "long").
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rexport.errors import RexportError

# -- settings ----------------------------------------------------------------------------------

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.large_base_example, HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, **_COMMON)      # the same examples on every run
settings.register_profile("long", derandomize=False, **_COMMON)   # new examples each run


def _mode() -> tuple[str, float]:
    """(profile, multiplier of the CI example counts) from REXPORT_FUZZ / HYPOTHESIS_PROFILE."""
    text = (os.environ.get("REXPORT_FUZZ") or os.environ.get("HYPOTHESIS_PROFILE") or "ci").strip().lower()
    if text == "ci":
        return "ci", 1.0
    if text == "long":
        return "long", 25.0
    try:
        scale = float(text)
    except ValueError:
        raise RuntimeError(f"REXPORT_FUZZ must be ci, long or a multiplier of the CI example counts, not {text!r}")
    return ("ci" if scale == 1 else "long"), scale


PROFILE, SCALE = _mode()
TIMEOUT_S = float(os.environ.get("REXPORT_FUZZ_TIMEOUT", "30"))  # per example; a hang fails, never blocks
# Address space a call may add (MB): a memory bomb fails as MemoryError instead of taking the machine down.
MEMORY_MB = int(os.environ.get("REXPORT_FUZZ_MEMORY_MB", "4096"))


def fuzz_settings(examples: int) -> settings:
    """`examples` examples in CI (fixed, derandomized), SCALE times as many in a longer run."""
    return settings(settings.get_profile(PROFILE), max_examples=max(1, math.ceil(examples * SCALE)))


# -- the property -------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the per-example alarm. A BaseException, so a loader's `except Exception` cannot
    turn a hang into a tidy error."""


@contextlib.contextmanager
def _alarm(seconds: float):
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def ring(signum, frame):
        raise Hang(f"the call did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _memory_cap(extra_mb: int):
    """Cap the address space at what the process has now plus `extra_mb` (Linux; a no-op elsewhere)."""
    try:
        import resource

        with open("/proc/self/status") as f:
            vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration, ValueError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = (vm_kb << 10) + (extra_mb << 20)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if extra_mb <= 0 or (soft != resource.RLIM_INFINITY and soft <= cap):
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: kind, size and modification time (what a write changes)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            seen[os.path.relpath(p, root)] = (st_.st_mode, st_.st_size if not os.path.isdir(p) else 0,
                                              st_.st_mtime_ns if not os.path.isdir(p) else 0)
    return seen


class Outcome:
    def __init__(self, value=None, error: RexportError | None = None):
        self.value, self.error = value, error

    @property
    def ok(self) -> bool:
        return self.error is None


# Warnings that are not rexport's doing nor a sign of a bad input being half-accepted.
_IGNORED_WARNINGS = (DeprecationWarning, PendingDeprecationWarning)


def _event(text: str) -> None:
    """Count outcomes (pytest --hypothesis-show-statistics shows how many inputs loaded)."""
    try:
        from hypothesis import event

        event(text)
    except Exception:  # outside a hypothesis test
        pass


def check_one_line(e: RexportError) -> None:
    text = str(e)
    assert text.strip(), f"{type(e).__name__} with an empty message"
    assert "\n" not in text and "\r" not in text, f"{type(e).__name__} message is not one line: {text!r}"


def attempt(call, watch: Path, *, close=None) -> Outcome:
    """Run `call()` under the property: a value or a one-line RexportError, within TIMEOUT_S and
    MEMORY_MB more memory, with no warning and nothing under `watch` changed once `close(value)`
    (the test's check of the result, and its cleanup) has run.

    Any other exception propagates, so hypothesis reports (and shrinks) the input that raised it."""
    before = snapshot(watch)
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _alarm(TIMEOUT_S), _memory_cap(MEMORY_MB), contextlib.redirect_stdout(printed), \
                    contextlib.redirect_stderr(printed):
                value = call()
        except RexportError as e:
            check_one_line(e)
            outcome = Outcome(error=e)
        else:
            outcome = Outcome(value)
    assert not printed.getvalue(), f"a loader printed (to sys.stdout / sys.stderr): {printed.getvalue()[:500]!r}"
    noisy = [w for w in caught if not issubclass(w.category, _IGNORED_WARNINGS)]
    assert not noisy, "a loader let a warning through: " + "; ".join(
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in noisy)
    _event(f"{getattr(call, '__name__', 'call')}: " + ("loaded" if outcome.ok else "refused"))
    if outcome.ok and close is not None:
        close(outcome.value)
    after = snapshot(watch)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files appeared, changed or vanished outside the output: {changed[:10]}"
    return outcome


# -- the work tree ------------------------------------------------------------------------------


class Workspace:
    """root/ is watched whole: seeds/ (valid inputs), tmp/ (TMPDIR: must stay empty), cwd/ (the working
    directory: must stay empty) and cases/ (each example's inputs, made fresh)."""

    def __init__(self, root: Path):
        self.root = root
        for name in ("seeds", "tmp", "cwd", "cases"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.seeds, self.tmp, self.cwd, self.cases = (root / n for n in ("seeds", "tmp", "cwd", "cases"))

    @contextlib.contextmanager
    def case(self):
        """A fresh, empty directory for one example's input files, removed afterwards."""
        d = Path(tempfile.mkdtemp(dir=self.cases))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def attempt(self, call, *, close=None) -> Outcome:
        return attempt(call, self.root, close=close)


# -- mutations ----------------------------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, ord("{"), ord("["), ord('"'), ord("\n"))
INTERESTING_WORDS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


@st.composite
def position(draw, size: int, hot: int = 512) -> int:
    """An offset in 0..size: anywhere, or (where formats keep their structure) near the start or the end."""
    if size <= 0:
        return 0
    return draw(st.one_of(st.integers(0, min(size, hot)), st.integers(max(0, size - hot), size),
                          st.integers(0, size)))


class Mutation:
    """Byte-level edits of a seed file, printed as a list of operations (not as the bytes) when a
    test fails: ("flip", offset, bit), ("set", offset, byte), ("word", offset, width, value, byteorder),
    ("truncate", offset), ("insert", offset, bytes), ("delete", offset, count),
    ("duplicate", offset, count), ("splice", offset, source offset, count)."""

    def __init__(self, ops: list[tuple]):
        self.ops = ops

    def __repr__(self) -> str:
        return f"Mutation({self.ops!r})"

    def apply(self, seed: bytes) -> bytes:
        data = bytearray(seed)
        for op, i, *args in self.ops:
            if op == "flip":
                data[i] ^= 1 << args[0]
            elif op == "set":
                data[i] = args[0]
            elif op == "word":
                width, value, order = args
                data[i:i + width] = value.to_bytes(width, order)
            elif op == "truncate":
                del data[i:]
            elif op == "insert":
                data[i:i] = args[0]
            elif op == "delete":
                del data[i:i + args[0]]
            elif op == "duplicate":
                data[i:i] = bytes(data[i:i + args[0]])
            else:  # splice
                j, count = args
                span = bytes(data[j:j + count])
                data[i:i + len(span)] = span
        return bytes(data)


@st.composite
def mutations(draw, size: int, *, max_ops: int = 4, hot: int = 512) -> Mutation:
    """1..max_ops byte-level edits of a file of `size` bytes: flip, set, overwrite a word, truncate,
    insert, delete, duplicate a span, splice in a span from elsewhere; mostly near the start and the
    end (`hot` bytes), where formats keep their structure."""
    ops, n = [], size
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "set", "word", "truncate", "insert", "delete", "duplicate", "splice")))
        if op == "truncate":
            i = draw(position(n, hot))
            ops.append((op, i))
            n = i
            continue
        if op == "insert":
            i, blob = draw(position(n, hot)), draw(st.binary(min_size=1, max_size=16))
            ops.append((op, i, blob))
            n += len(blob)
            continue
        if not n:
            continue
        i = min(draw(position(n - 1, hot)), n - 1)
        if op == "flip":
            ops.append((op, i, draw(st.integers(0, 7))))
        elif op == "set":
            ops.append((op, i, draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))))
        elif op == "word":
            width = draw(st.sampled_from((2, 4, 8)))
            value = draw(st.sampled_from(INTERESTING_WORDS)) % (1 << (8 * width))
            ops.append((op, i, width, value, draw(st.sampled_from(("little", "big")))))
            n = max(n, i + width)
        elif op == "delete":
            count = draw(st.integers(1, 64))
            ops.append((op, i, count))
            n -= min(count, n - i)
        elif op == "duplicate":
            count = draw(st.integers(1, 64))
            ops.append((op, i, count))
            n += min(count, n - i)
        else:
            j, count = draw(st.integers(0, n - 1)), draw(st.integers(1, 64))
            ops.append((op, i, j, count))
            n = max(n, i + min(count, n - j))
    return Mutation(ops)


@st.composite
def mutated(draw, seed: bytes, **kw) -> bytes:
    """`seed` after `mutations` (for small seeds, where printing the bytes helps)."""
    return draw(mutations(len(seed), **kw)).apply(seed)


class Seeds(dict):
    """Seed files by name, with a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<seeds: {', '.join(self)}>"


def json_values(max_leaves: int = 8):
    """Any JSON value (strict: finite numbers), small."""
    leaves = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.sampled_from((0, 1, -1, 2**63, 10**30))
              | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=max_leaves)


EVIL_VALUES = (-1, 0, 1, 2**31, 2**63, -(2**63), 1e308, -0.0, "", " ", "../x", "/etc/passwd", "a/../b", "\x00",
               "rexport.json", "a" * 1000, [], {}, None, True, False, [1, 2, 3], {"": None})


def any_values(max_leaves: int = 6):
    """Values to put where a JSON document had another: any JSON, or one of the usual suspects."""
    return st.sampled_from(EVIL_VALUES) | json_values(max_leaves)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def edited_json(draw, doc, *, max_edits: int = 3, values=None):
    """`doc` (a JSON document) with 1..max_edits edits anywhere in its tree: a value replaced by one of
    `values` (any type), a key or item deleted, or a key added."""
    values = (values if values is not None else any_values()).map(copy.deepcopy)  # EVIL_VALUES stay as they are
    doc = json.loads(json.dumps(doc))  # a copy, in JSON's types (tuples become lists)
    for _ in range(draw(st.integers(1, max_edits))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return draw(values)
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(("replace", "replace", "replace", "delete", "add")))
        if op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return doc


def check_predictor(p) -> None:
    """A loaded model runs: logits of the model's number of classes for a batch of zeros."""
    import numpy as np

    from rexport.runtime import Predictor

    try:
        assert isinstance(p, Predictor)
        c, h, w = p.info.input_shape
        n = max(1, p.batch.min)
        out = p.run(np.zeros((n, c, h, w), np.float32))
        assert out.shape == (n, p.info.num_classes), (out.shape, p.info.num_classes)
    finally:
        p.close()


def check_predictor_run(p) -> None:
    """check_predictor, where running may also refuse in one line (a graph ONNX Runtime loads but
    cannot run on these shapes)."""
    try:
        check_predictor(p)
    except RexportError as e:
        check_one_line(e)
