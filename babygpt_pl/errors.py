"""What the user is told: the one exception type for mistakes a user can fix, and warnings.

UserError subclasses ValueError, so library callers may catch either. The CLI prints its message as a single
line (no traceback) and exits non-zero, so every message names the problem and the fix.
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

import yaml


def debugging(argv: list[str]) -> bool:
    """Whether the user asked for tracebacks (``--debug``, or jsonargparse's ``JSONARGPARSE_DEBUG``)."""
    return "--debug" in argv or bool(os.environ.get("JSONARGPARSE_DEBUG"))


def one_line(text: object) -> str:
    """``text`` with every run of whitespace, newlines included, as one space: a library's message as one line."""
    return " ".join(str(text).split())


def first_process() -> bool:
    """Whether this is the first process (rank 0): under DDP every rank runs the command, and would repeat each of
    its lines."""
    # The variables Lightning's rank_zero_only reads, in its order (no Lightning import here: model.py uses this).
    rank = next(
        (os.environ[k] for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK") if k in os.environ), "0"
    )
    return rank == "0"


def warn(message: str) -> None:
    """One ``warning: …`` line on stderr (stdout carries only what a command produces, e.g. generated text),
    from the first process only."""
    if first_process():
        print(f"warning: {message}", file=sys.stderr)


def exit_on_signal(err: BaseException) -> NoReturn:
    """Exit as a shell reports a command ended by Ctrl-C (130) or SIGTERM (143), with one word on stderr: the
    traceback of wherever the signal landed means nothing to the user."""
    interrupted = isinstance(err, KeyboardInterrupt)
    print("interrupted" if interrupted else "terminated", file=sys.stderr)
    raise SystemExit(130 if interrupted else 143) from None


_STR_TAG = "tag:yaml.org,2002:str"


def refuse_unquoted_items(value: str, option: str) -> None:
    """A list of strings given with an item YAML reads as another type (``[春江, 2024]``: an int) reaches the
    program as one string, the brackets included, since the option's type is ``list[str] | str``: say which item
    to quote, rather than use that string (or call it "one string" with no word of why)."""
    if not (value.startswith("[") and value.endswith("]")):
        return
    try:
        node = yaml.compose(value)
    except yaml.YAMLError:
        return
    if not isinstance(node, yaml.SequenceNode):
        return
    # As typed (yes, 0x10), not as YAML reads them (True, 16). A lone mapping or list is one prompt (`[注: 词牌]`).
    typed = [
        value[item.start_mark.index : item.end_mark.index]
        for item in node.value
        if (item.tag != _STR_TAG if isinstance(item, yaml.ScalarNode) else len(node.value) > 1)
    ]
    if typed:
        raise UserError(
            f"{option} {value}: {typed[0]} is not read as a string, so the list was read as one string; quote it "
            f'("{typed[0]}")'
        )


class UserError(ValueError):
    """A bad input, file or setting; the message says what is wrong and how to fix it."""


class Terminated(BaseException):
    """SIGTERM outside training (predict, validate, set-up): the command stops at once and the CLI exits 143.
    A BaseException, as KeyboardInterrupt is: a handler of Exception (a failed CUDA graph capture falls back to
    eager decoding) must not swallow it."""


def raise_terminated(signum: int, frame: object) -> None:
    """The CLI's SIGTERM handler from its start: Python's default would end the process with no word, and
    Lightning's (which calls it too) only notes the signal, so ``timeout`` or ``docker stop`` could not end a
    long generation. During training :class:`~babygpt_pl.callbacks.GracefulStop` takes over: save, then stop."""
    raise Terminated


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block (from the main thread; the handler as it was after)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
