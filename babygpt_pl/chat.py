"""The interactive prompt loop behind ``babygpt chat``: type the start of a ci, watch the rest stream out."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TextIO

import torch

from babygpt_pl.errors import UserError
from babygpt_pl.generation import GenerationConfig, complete
from babygpt_pl.model import BabyGPT
from babygpt_pl.tokenizer import CharTokenizer

BANNER = "babygpt chat: type the start of a ci and press Enter. Ctrl-C stops an answer; an empty line or Ctrl-D exits."


def _read_prompt(stdin: TextIO, stdout: TextIO) -> str | None:
    """The next prompt, or None to leave (end of input or an empty line)."""
    stdout.write("\n> ")
    stdout.flush()
    line = stdin.readline()
    if not line:  # Ctrl-D / end of a piped input
        stdout.write("\n")
        return None
    return line.rstrip("\n") or None


def chat_loop(
    model: BabyGPT,
    tokenizer: CharTokenizer,
    config: GenerationConfig,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> int:
    """Answer prompts until an empty line or end of input; returns how many answers were completed."""
    model.eval()
    config = replace(config, num_samples=1)  # one answer per prompt, streamed
    stdout.write(BANNER + "\n")
    answered = 0

    def show(row: int, piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    def warn(message: str) -> None:
        stdout.write(f"[{message}]\n")

    while True:
        try:
            prompt = _read_prompt(stdin, stdout)
        except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, like most REPLs' Ctrl-D
            stdout.write("\n")
            break
        if prompt is None:
            break
        stdout.write(prompt)
        try:
            [answer] = complete(
                model, tokenizer, [prompt], config, on_text=show, warn=lambda m: stdout.write(f"[{m}]\n")
            )
        except KeyboardInterrupt:
            stdout.write("\n[stopped]\n")
            continue
        except UserError as err:
            stdout.write(f"\nerror: {err}\n")
            continue
        answered += 1
        stdout.write(f"\n[{answer.tokens} tokens in {answer.seconds:.2f} s, {answer.tokens_per_s:.1f} tokens/s]\n")
    return answered


def load_weights(model: torch.nn.Module, ckpt_path: str) -> None:
    """Copy a Lightning checkpoint's weights into the module (tensors only: weights_only)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
