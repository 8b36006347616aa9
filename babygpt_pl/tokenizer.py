"""Character tokenizer: the sorted set of a text's characters, one id each."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from babygpt_pl.errors import UserError

OOVPolicy = Literal["error", "drop", "replace"]


class CharTokenizer:
    """Maps each character of the vocabulary to its index.

    The vocabulary is the sorted characters, in a checkpoint's hyper-parameters as one string (see
    :class:`babygpt_pl.module.BabyGPTModule`), read back with ``torch.load(weights_only=True)``.
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        vocab = list(vocab)
        if not vocab:
            raise UserError("the vocabulary is empty: the corpus has no characters")
        if any(not isinstance(ch, str) or len(ch) != 1 for ch in vocab) or len(set(vocab)) != len(vocab):
            raise UserError("the vocabulary must be a list of distinct single characters")
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that are not in the vocabulary, in order of appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.stoi))

    def require_known(self, text: str) -> None:
        """Raise one error naming every character of ``text`` outside the vocabulary (if any)."""
        missing = self.unknown(text)
        if missing:
            shown = "".join(missing[:20]) + ("…" if len(missing) > 20 else "")
            raise UserError(
                f"{len(missing)} character(s) not in the model's vocabulary: {shown!r}; remove them from the "
                "prompt, or pass --generation.oov drop (or replace)"
            )

    def encode(self, text: str, oov: OOVPolicy = "error", replacement: str = " ") -> list[int]:
        """Token ids of ``text``. Unknown characters raise (``oov="error"``), are dropped, or replaced."""
        if oov not in ("error", "drop", "replace"):
            raise UserError(f"unknown oov policy {oov!r}: use error, drop or replace")
        if oov == "error":
            self.require_known(text)
        elif oov == "replace":
            if self.unknown(text) and replacement not in self.stoi:
                raise UserError(
                    f"the replacement character {replacement!r} is not in the vocabulary either: pass "
                    "--generation.oov drop (or error)"
                )
            text = "".join(ch if ch in self.stoi else replacement for ch in text)
        else:
            text = "".join(ch for ch in text if ch in self.stoi)
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if any(i < 0 for i in ids):  # a list index would count it from the end: another character, silently
            raise ValueError(f"token ids are 0..{len(self.vocab) - 1}, got {min(ids)}")
        return "".join(self.vocab[i] for i in ids)
