"""What rexport shows people: the logger, progress on long work, and plain-text tables.

Library code logs to `logging.getLogger("rexport")` and wraps long loops in `progress()`;
only the CLI configures handlers (`setup_logging`). Progress redraws one line on a terminal
and logs a line every ~25% otherwise, so CI logs stay readable.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

log = logging.getLogger("rexport")
T = TypeVar("T")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Yield from `items`, reporting progress on stderr when the rexport logger shows INFO."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    show = log.isEnabledFor(logging.INFO) and any(
        isinstance(h, logging.StreamHandler) for h in log.handlers)
    if not show:
        yield from items
        return
    tty = sys.stderr.isatty()
    start = last = time.monotonic()
    step = max(1, (total or 4) // 4)
    done = 0
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if tty and (now - last > 0.1 or done == total):
            last = now
            of = f"/{total}" if total else ""
            sys.stderr.write(f"\r{desc}: {done}{of} {unit} ({now - start:.1f}s)\033[K")
            sys.stderr.flush()
        elif not tty and total and (done % step == 0 or done == total):
            log.info("%s: %d/%d %s (%.1fs)", desc, done, total, unit, now - start)
    if tty:
        sys.stderr.write(f"\r{desc}: {done} {unit} in {time.monotonic() - start:.1f}s\033[K\n")
        sys.stderr.flush()


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "  ") -> str:
    """Left-aligned text columns; numbers arrive pre-formatted as strings."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    lines = [indent + "  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def fmt_err(x: float) -> str:
    """Errors in scientific notation (0 stays 0)."""
    return "0" if x == 0 else f"{x:.2e}"


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def fmt_bytes(n: int) -> str:
    """A size in bytes, MB or GB (decimal), as people read it."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"
