"""The interactive prompt loop behind ``babygpt chat``: type the start of a ci, watch the rest stream out."""

from __future__ import annotations

import contextlib
import sys
from typing import BinaryIO, TextIO

import torch

from babygpt_pl.checkpoint import check_checkpoint
from babygpt_pl.data import require_utf8
from babygpt_pl.errors import UserError
from babygpt_pl.files import atomic_writer, in_place, jsonl, write_atomic, write_error
from babygpt_pl.generation import GenerationConfig, complete
from babygpt_pl.model import BabyGPT
from babygpt_pl.tokenizer import CharTokenizer

OPTION = "--generation.output"
BANNER = "babygpt chat: type the start of a ci and press Enter. Ctrl-C stops an answer; an empty line or Ctrl-D exits."


def _read_prompt(stdin: TextIO, chrome: TextIO) -> str | None:
    """The next prompt, or None to leave (end of input, or an empty line typed in a terminal)."""
    chrome.write("\n> ")
    chrome.flush()
    while line := stdin.readline():
        # A pasted or piped line may carry Windows line ends or a byte-order mark: neither is part of the prompt.
        prompt = line.rstrip("\r\n").lstrip("\ufeff")
        if prompt or stdin.isatty():
            return prompt or None
        # Piped: a blank line (between poems, at a file's end) is no prompt, nor a reason to drop the lines after it.
    chrome.write("\n")  # Ctrl-D / end of a piped input
    return None


def check_num_samples(num_samples: int) -> None:
    """chat answers each prompt once: more samples of it are predict's."""
    if num_samples != 1:
        raise UserError("chat streams one answer per prompt: drop --generation.num_samples (predict takes it)")


class AnswerFile:
    """chat's --generation.output: after each answer the whole file anew, or where it is written in place (a pipe,
    a device), the new answers appended through one descriptor kept open: a named pipe reopened after its reader
    (say, cat) left at the first close would block for ever."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.saved = 0  # answers written so far
        self.sink: contextlib.ExitStack | None = None
        self.stream: BinaryIO | None = None

    def save(self, answers: list[dict]) -> None:
        if not self.path or self.saved == len(answers):
            return
        if not in_place(self.path):
            write_atomic(self.path, jsonl(answers), option=OPTION)
        else:
            try:
                if self.stream is None:
                    self.sink = contextlib.ExitStack()
                    self.stream = self.sink.enter_context(atomic_writer(self.path))
                self.stream.write(jsonl(answers[self.saved :]))
                self.stream.flush()
            except OSError as err:
                with contextlib.suppress(OSError):  # its close would flush the rest again: the same error, unsaid
                    self.close()
                raise write_error(OPTION, self.path, err) from None
        self.saved = len(answers)

    def close(self) -> None:
        sink, self.sink, self.stream = self.sink, None, None
        if sink is not None:
            sink.close()


def chat_loop(
    model: BabyGPT,
    tokenizer: CharTokenizer,
    config: GenerationConfig,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Answer prompts until an empty line or end of input; returns how many prompts were refused.

    Each answer (its prompt, the continuation, a line end) goes to ``stdout``; errors and warnings to ``stderr``.
    From a terminal the banner, the ``> `` before each prompt and the tokens/s after each answer go to ``stdout``
    too; from a pipe to ``stderr``, so that the piped output holds the answers alone.
    With ``config.output`` set, the file holds every answer so far as JSON lines (rewritten after each one).
    """
    check_num_samples(config.num_samples)
    model.eval()
    piped = not stdin.isatty()
    chrome = stderr if piped else stdout

    def say(stream: TextIO, text: str) -> None:
        stdout.flush()  # after the answer so far, where both streams go to one terminal
        stream.write(text)
        stream.flush()

    say(chrome, BANNER + "\n")
    answers: list[dict] = []
    refused = 0
    output = AnswerFile(config.output)
    try:
        while True:
            try:
                prompt = _read_prompt(stdin, chrome)
            except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, like most REPLs' Ctrl-D
                say(chrome, "\n")
                break
            if prompt is None:
                break
            if piped:  # what a terminal would have echoed
                say(chrome, prompt + "\n")
            shown = False

            def show(row: int, piece: str, prompt: str = prompt) -> None:
                nonlocal shown
                if not shown:  # the prompt once the answer starts: a refused one leaves nothing on stdout
                    stdout.write(prompt)
                    shown = True
                stdout.write(piece)
                stdout.flush()

            try:
                require_utf8(prompt, "this line")
                [answer] = complete(
                    model, tokenizer, [prompt], config, on_text=show, warn=lambda m: say(stderr, f"\nwarning: {m}\n")
                )
            except KeyboardInterrupt:
                stdout.write("\n" if shown else "")
                say(chrome, "[stopped]\n")
                continue
            except UserError as err:
                say(stderr, f"error: {err}\n")
                refused += 1
                continue
            answers.append(vars(answer))
            try:  # a Ctrl-C from here (a slow terminal, the write synced to disk) stops this, not the chat
                show(0, "")
                stdout.write("\n")
                say(chrome, f"[{answer.tokens} tokens in {answer.seconds:.2f} s, {answer.tokens_per_s:.1f} tokens/s]\n")
                output.save(answers)
            except KeyboardInterrupt:  # the answer is saved with the next one, or on leaving
                say(chrome, "\n[stopped]\n")
        output.save(answers)  # (one a Ctrl-C kept from its save)
    except OSError:  # stdout failed (a closed pipe, a full disk): the answers so far are kept where they can be
        with contextlib.suppress(UserError):  # (the output may be stdout itself): stdout's error is the one to say
            output.save(answers)
        raise
    finally:
        output.close()
    return refused


def load_weights(model: torch.nn.Module, ckpt_path: str) -> None:
    """Copy a Lightning checkpoint's weights into the module (read safely and checked by check_checkpoint)."""
    model.load_state_dict(check_checkpoint(ckpt_path)["state_dict"])
