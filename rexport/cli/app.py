"""The `rexport` group: how every command fails and ends. Errors a user can cause are
`RexportError`s: printed as one line, with flags where the API named fields, and a non-zero exit
code (1 for errors, 3 for a failed quality gate, 2 for bad usage); SIGTERM/SIGHUP end a command
as Ctrl-C does."""

from __future__ import annotations

import logging
import signal
import traceback

import click

from rexport import __version__
from rexport.console import log, setup_logging
from rexport.errors import RexportError, one_line
from rexport.options import flag, renamed, with_flags


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt so that every
    `finally` (temporary files and directories) runs on the way out; `except Exception` in
    library code does not catch it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, frame) -> None:
    for sig in TERMINATING:  # a second signal must not interrupt the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class RexportCommand(click.Command):
    """A command whose usage errors name the new flag of one renamed before 1.0."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            hint = renamed(e.option_name, (p.name for p in self.params))
            if hint is None:
                raise
            raise click.UsageError(hint, ctx) from None
        except click.BadOptionUsage as e:
            if e.option_name != flag("json"):
                raise
            raise click.UsageError(f"{e.option_name} takes a file: --json FILE, or --json - to print the report",
                                   ctx) from None


class RexportGroup(click.Group):
    """Turns RexportErrors (and anything unexpected) into one line and an exit code."""

    command_class = RexportCommand

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RexportError as e:
            click.echo(f"error: {with_flags(str(e), e.fields)}", err=True)
            report = getattr(e, "report", None)
            if report is not None and hasattr(report, "format"):
                click.echo(report.format(), err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (Terminated): every cleanup has run
            signum = getattr(e, "signum", signal.SIGINT)
            by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
            click.echo(f"interrupted{by} (unfinished outputs were not written)", err=True)
            ctx.exit(128 + signum)
        except OSError as e:
            from rexport.files import FULL, WRITE_FAILURES

            if e.errno not in FULL:  # a full disk is not a bug, wherever it shows (e.g. in a staging folder)
                self._bug(ctx, e)
            where = e.filename2 or e.filename
            click.echo(f"error: cannot write{f' {where}' if where else ''}: {e.strerror}; {WRITE_FAILURES[e.errno]}",
                       err=True)
            ctx.exit(1)
        except Exception as e:
            self._bug(ctx, e)

    @staticmethod
    def _bug(ctx: click.Context, e: Exception):
        """A bug: say so in one line; with -v, the traceback first."""
        if log.isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        click.echo(f"error: unexpected {type(e).__name__}: {one_line(e)} (this is a bug in rexport; "
                   "run with -v for the traceback and please report it)", err=True)
        ctx.exit(1)


@click.group(cls=RexportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rexport")
@click.option("-v", "--verbose", count=True, help="More detail (and tracebacks for internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """Export ResNet-family classifiers to ONNX, FP16, INT8 and TensorRT, and prove they
    still agree with PyTorch."""
    setup_logging(verbose, quiet)


def main() -> None:
    """The console entry point: SIGTERM and SIGHUP (kill, systemd, CI, a closed terminal) end a
    command as Ctrl-C does, removing its temporary files, with exit code 128 + the signal. A signal
    the parent ignores (SIGHUP under nohup) stays ignored."""
    for sig in TERMINATING:
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _terminate)
    cli(prog_name="rexport")

