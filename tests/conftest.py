"""Shared fixtures: a small corpus, and wandb kept offline inside the test's temp dir."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

STANZAS = [
    "浣溪沙 晏殊\n一曲新词酒一杯。去年天气旧亭台。夕阳西下几时回。\n无可奈何花落去，似曾相识燕归来。小园香径独徘徊。",
    "水调歌头 苏轼\n明月几时有，把酒问青天。不知天上宫阙，今夕是何年。\n我欲乘风归去，又恐琼楼玉宇，高处不胜寒。",
    "如梦令 李清照\n昨夜雨疏风骤。浓睡不消残酒。试问卷帘人，却道海棠依旧。\n知否。知否。应是绿肥红瘦。",
    "虞美人 李煜\n春花秋月何时了。往事知多少。小楼昨夜又东风。故国不堪回首、月明中。",
]


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """A few kilobytes of ci in the corpus's format (it contains 春, 江, 往 and 事)."""
    return "\n\n".join(STANZAS * 12) + "\n春江\n"


@pytest.fixture
def corpus(tmp_path: Path, corpus_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add sync overhead (100x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_threads():
    """Two intra-op threads, for tests of what generation does with more than one (Linear.split)."""
    torch.set_num_threads(2)
    yield


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt), as a process started in a terminal has: one started in the
    background by a shell (`make test &`) inherits SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True)
def _wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
