"""The ``kfm`` command: a thin dispatcher.

Each sub-command lives in its own module under ``kinetic_fm.commands`` and defines
``register(subparsers)``, which adds its parser and sets ``func`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code). Command modules must import only argparse
at module level; the work they call is imported inside ``func`` so ``kfm --help`` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import pkgutil
import sys
import warnings
from typing import Sequence


def help_pointer(prog: str) -> str:
    """What ends each refusal of a command line of ``prog`` (``"kfm reproduce"``): the pointer to its ``--help``."""
    return f"(see '{prog} --help')"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line plus a pointer to ``--help``.

    The stock parser prints the whole usage block first (a dozen lines for ``kfm sample``), which
    buries the one line that says what was wrong. Sub-command parsers inherit this class.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n{help_pointer(self.prog)}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    from ._version import __version__

    parser = _Parser(
        prog="kfm",
        description="Kinetic energy diagnostics and shaping for flow-matching samplers.",
    )
    parser.add_argument("--version", action="version", version=f"kfm (kinetic_fm) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    parser.set_defaults(_commands=sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the sub-command's parser, so the hint names its own --help
        args._commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    _refuse_empty_values(args._commands[args.command], args)
    try:
        # all three restored when the command returns
        with warnings.catch_warnings(), _stdout_reader_may_leave(), _sigterm_as_interrupt():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args.func(args) or 0)
    except (ValueError, OSError) as err:
        # user errors (bad values, missing or unwritable paths): one clear line, no traceback
        print(f"kfm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, OverflowError) as err:
        print(f"kfm {args.command}: error: the run does not fit in memory or in range "
              f"({type(err).__name__}: {err}); ask for fewer samples, steps or resamples", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from .runs.shards import IncompleteRunError  # here: runs.shards brings pyarrow with it

        if isinstance(err, IncompleteRunError):  # a run folder with shards missing: say which, no traceback
            print(f"kfm {args.command}: error: {err}", file=sys.stderr)
            return 2
        if not _out_of_memory(err):  # anything else is a bug: keep its traceback
            raise
        print(f"kfm {args.command}: error: out of memory ({str(err).splitlines()[0]}); ask for fewer samples, "
              "steps, a smaller --batch-size, or another device", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        hint = getattr(args, "interrupt_hint", None) or (
            "finished work is kept; rerun the same command with --resume to continue"
            if hasattr(args, "resume") else "")
        how = " (SIGTERM)" if isinstance(err, _Terminated) else ""
        print(f"kfm {args.command}: interrupted{how}{': ' + hint if hint else ''}", file=sys.stderr)
        return 128 + 15 if isinstance(err, _Terminated) else 130  # the shell's 128 + signal number


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop, a container's shutdown), raised where the command
    stands as Ctrl-C's KeyboardInterrupt is: the same clean-up runs (the folder's lock let go, a
    half-written file left as a temporary that the resume removes), and the same hint is printed.
    Left to its default, SIGTERM ended the process as SIGKILL does: nothing lost, but no word."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Inside the block, SIGTERM raises :class:`_Terminated` in the main thread; a second SIGTERM
    (during the clean-up) ends the process at once. Training with a run folder holds the first one
    to the end of the step under way, whose resume state it writes (models.train). A handler someone
    else installed (an embedding program's) is left alone, as is a call from another thread, where
    Python cannot set one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refuse_empty_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """No option takes an empty or blank value: as a path, Path("") is the working folder, so
    ``--out "$OUT"`` with OUT unset filled it with a run, ``--model ""`` sampled the default field
    and ``--samples ""`` audited the images lying there."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.option_strings and isinstance(value, str) and not value.strip():
            parser.error(f"{action.option_strings[-1]} is empty (a shell variable left unset?)")


class _ReaderMayLeave:
    """``sys.stdout`` for a command whose reader may leave early (``kfm sample ... | head -1``):
    once a write finds the pipe closed, the rest of the output is dropped and the command goes
    on to write its files (the figure came after the summary and was lost to "[Errno 32] Broken
    pipe")."""

    def __init__(self, stream):
        self._stream, self.reader_left = stream, False

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop_output()
        return len(text)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop_output()

    def _drop_output(self) -> None:
        self.reader_left = True
        try:  # what is still buffered (and Python's flush at exit) goes nowhere, silently
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _stdout_reader_may_leave():
    stream = sys.stdout
    if stream is None:  # stdout closed (>&-): print() drops output by itself
        yield
        return
    sys.stdout = wrapper = _ReaderMayLeave(stream)
    try:
        yield
    finally:
        # a block-buffered stdout (the default for a pipe) meets the closed pipe only here, or
        # in Python's own flush at exit, after the wrapper is gone
        wrapper.flush()
        sys.stdout = stream


def _out_of_memory(err: RuntimeError) -> bool:
    """torch's allocation failures: CUDA raises OutOfMemoryError, the CPU allocator a RuntimeError."""
    text = str(err)
    return type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text


def _one_line_warning(command: str):
    """A ``warnings.showwarning`` that prints ``kfm COMMAND: warning: MESSAGE`` (no source line)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"kfm {command}: warning: {message}", file=sys.stderr if file is None else file)

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
