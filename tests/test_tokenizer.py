"""Tests for babygpt_pl.tokenizer.CharTokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from babygpt_pl.errors import UserError
from babygpt_pl.tokenizer import CharTokenizer

TEXT = "明月几时有，把酒问青天。\n不知天上宫阙，今夕是何年。"


def test_from_text_vocab_is_sorted_distinct_chars() -> None:
    tok = CharTokenizer.from_text(TEXT)
    assert tok.vocab == sorted(set(TEXT))
    assert tok.vocab_size == len(set(TEXT))
    assert tok.stoi == {ch: i for i, ch in enumerate(tok.vocab)}


def test_round_trip() -> None:
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TEXT
    # Ids are positions in the sorted vocabulary.
    assert tok.encode("天") == [tok.vocab.index("天")]


def test_explicit_vocab_order_is_kept() -> None:
    tok = CharTokenizer(["c", "a", "b"])
    assert tok.encode("abc") == [1, 2, 0]
    assert tok.decode([0, 1, 2]) == "cab"


def test_oov_error_names_the_characters() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UserError) as info:
        tok.encode("axbyx")
    message = str(info.value)
    assert "'xy'" in message  # distinct unknown characters, in order of appearance
    assert "2 character(s)" in message
    assert isinstance(info.value, ValueError)
    assert tok.unknown("axbyx") == ["x", "y"]


def test_oov_error_truncates_a_long_list() -> None:
    tok = CharTokenizer.from_text("a")
    unknown = "".join(chr(0x4E00 + i) for i in range(25))
    with pytest.raises(UserError, match="25 character") as info:
        tok.encode(unknown)
    assert unknown[:20] + "…" in str(info.value)
    assert unknown[20:] not in str(info.value)


def test_oov_drop() -> None:
    tok = CharTokenizer.from_text("abc ")
    assert tok.encode("axbyc", oov="drop") == tok.encode("abc")
    assert tok.encode("xyz", oov="drop") == []


def test_oov_replace() -> None:
    tok = CharTokenizer.from_text("abc ")
    assert tok.decode(tok.encode("axby", oov="replace")) == "a b "
    assert tok.decode(tok.encode("axby", oov="replace", replacement="c")) == "acbc"


def test_oov_replace_with_unknown_replacement_raises() -> None:
    tok = CharTokenizer.from_text("abc")  # no space in the vocabulary
    with pytest.raises(UserError, match="' ' is not in the vocabulary either: pass --generation.oov drop"):
        tok.encode("ax", oov="replace")


def test_known_text_ignores_policy() -> None:
    tok = CharTokenizer.from_text("abc")
    for oov in ("error", "drop", "replace"):
        assert tok.encode("cab", oov=oov) == [2, 0, 1]


@pytest.mark.parametrize("vocab", [["a", "b", "a"], ["a", "bc"], ["a", ""], ["a", 1], []])
def test_bad_vocab_rejected(vocab: list) -> None:
    with pytest.raises(UserError):
        CharTokenizer(vocab)


def test_vocab_survives_weights_only_load(tmp_path: Path) -> None:
    """A checkpoint keeps the vocabulary as one string (BabyGPTModule's hyper-parameter ``vocab``)."""
    tok = CharTokenizer.from_text(TEXT)
    path = tmp_path / "vocab.pt"
    torch.save({"vocab": "".join(tok.vocab)}, path)
    again = CharTokenizer(torch.load(path, weights_only=True)["vocab"])
    assert again.vocab == tok.vocab
    assert again.decode(tok.encode(TEXT)) == TEXT


def test_vocab_is_a_copy_of_the_input() -> None:
    chars = ["a", "b"]
    tok = CharTokenizer(chars)
    chars.append("c")
    assert tok.vocab == ["a", "b"]


def test_require_known_names_every_unknown_character_of_all_the_text() -> None:
    tok = CharTokenizer.from_text("春江往事")
    tok.require_known("春江往事")
    with pytest.raises(UserError, match=r"2 character\(s\) not in the model's vocabulary: 'ZX'"):
        tok.require_known("往事Z" + "春江X")


def test_decode_refuses_a_negative_id() -> None:
    with pytest.raises(ValueError, match="token ids are 0..2, got -1"):
        CharTokenizer.from_text("abc").decode([0, -1])  # a list index would give "c"
