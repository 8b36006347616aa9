"""Tests for babygpt_pl.data: reading the corpus, the split, the seeded windows and the prompts."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from babygpt_pl import corpus
from babygpt_pl.data import DEFAULT_PROMPTS, CiDataModule, read_prompts, read_text, seed_dropout, window_seed
from babygpt_pl.errors import UserError

POOL = "明月几时有把酒问青天不知上宫阙今夕是何年我欲乘风归去又恐琼楼玉宇高处胜寒"
BLOCK = 8
BATCH = 4


@pytest.fixture
def text() -> str:
    """~300 characters of ci-like text in which every window of BLOCK characters occurs once."""
    rng = random.Random(0)
    lines = ["".join(rng.choice(POOL) for _ in range(rng.choice((4, 5, 7)))) for _ in range(50)]
    return "".join(line + rng.choice("，。") for line in lines) + "\n"


@pytest.fixture
def path(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "poems.txt"
    p.write_text(text, encoding="utf-8")
    return p


def make(path: Path, **kwargs) -> CiDataModule:
    kwargs = {"batch_size": BATCH, "block_size": BLOCK, "val_batches": 3, "seed": 7, **kwargs}
    return CiDataModule(path=str(path), **kwargs)


@pytest.fixture
def dm(path: Path) -> CiDataModule:
    module = make(path)
    module.setup("fit")
    return module


def test_setup_builds_tokenizer_and_split(dm: CiDataModule, text: str) -> None:
    assert dm.tokenizer is not None
    assert dm.tokenizer.vocab == sorted(set(text))
    assert len(dm.train_data) == int(0.9 * len(text))
    assert len(dm.train_data) + len(dm.val_data) == len(text)
    assert dm.train_data.dtype == torch.long
    assert dm.tokenizer.decode(dm.train_data.tolist()) + dm.tokenizer.decode(dm.val_data.tolist()) == text


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_split_follows_train_ratio(path: Path, text: str, ratio: float) -> None:
    module = make(path, train_ratio=ratio)
    module.setup("fit")
    assert len(module.train_data) == int(ratio * len(text))
    assert len(module.val_data) == len(text) - int(ratio * len(text))


def test_setup_is_idempotent_and_skips_predict(dm: CiDataModule, path: Path) -> None:
    data = dm.train_data
    dm.setup("validate")
    assert dm.train_data is data
    fresh = make(path)
    fresh.setup("predict")
    assert fresh.train_data is None and fresh.tokenizer is None


def test_build_tokenizer_reads_the_file(path: Path, text: str) -> None:
    assert make(path).build_tokenizer().vocab == sorted(set(text))


def window_starts(data: torch.Tensor) -> dict[tuple[int, ...], int]:
    """Where each window of BLOCK + 1 tokens starts (the fixture's text makes them unique)."""
    starts = {tuple(data[i : i + BLOCK + 1].tolist()): i for i in range(len(data) - BLOCK)}
    assert len(starts) == len(data) - BLOCK
    return starts


def test_train_batch_shapes_and_targets(dm: CiDataModule, text: str) -> None:
    x, y = dm.train_batch(0, 0, torch.device("cpu"))
    assert x.shape == y.shape == (BATCH, BLOCK)
    assert x.dtype == y.dtype == torch.long
    train_text = text[: len(dm.train_data)]
    for row in range(BATCH):
        window = dm.tokenizer.decode(x[row].tolist())
        start = train_text.find(window)
        assert start >= 0, window
        assert train_text.find(window, start + 1) == -1
        # y is x shifted by one character of the original text.
        assert dm.tokenizer.decode(y[row].tolist()) == train_text[start + 1 : start + 1 + BLOCK]


def test_train_windows_cover_the_split(path: Path) -> None:
    module = make(path, batch_size=64)
    module.setup("fit")
    starts = window_starts(module.train_data)
    drawn = set()
    for index in range(30):
        x, y = module.train_batch(index, 0, torch.device("cpu"))
        for row in range(x.size(0)):
            key = tuple(x[row].tolist()) + (y[row, -1].item(),)
            assert key in starts, "not a window of the training split, or y is not x shifted by one"
            assert torch.equal(y[row, :-1], x[row, 1:])
            drawn.add(starts[key])
    # Every start is possible, the last one (ending at the split's last character) included.
    assert drawn == set(range(len(module.train_data) - BLOCK))


def test_train_batch_is_seeded(dm: CiDataModule, path: Path) -> None:
    cpu = torch.device("cpu")
    x0, y0 = dm.train_batch(3, 0, cpu)
    x1, y1 = dm.train_batch(3, 0, cpu)
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    other = make(path)
    other.setup("fit")
    assert torch.equal(other.train_batch(3, 0, cpu)[0], x0)
    assert not torch.equal(dm.train_batch(4, 0, cpu)[0], x0)  # another index
    assert not torch.equal(dm.train_batch(3, 1, cpu)[0], x0)  # another rank
    reseeded = make(path, seed=8)
    reseeded.setup("fit")
    assert not torch.equal(reseeded.train_batch(3, 0, cpu)[0], x0)  # another seed


def test_val_loader_and_windows(dm: CiDataModule) -> None:
    batches = list(dm.val_dataloader())
    assert len(batches) == 3
    for (starts,) in batches:
        assert starts.shape == (BATCH,)
        assert starts.dtype == torch.long
        assert ((starts >= 0) & (starts < len(dm.val_data) - BLOCK)).all()
        x, y = dm.windows("val", starts)
        assert x.shape == y.shape == (BATCH, BLOCK)
        for row, start in enumerate(starts.tolist()):
            assert torch.equal(x[row], dm.val_data[start : start + BLOCK])
            assert torch.equal(y[row], dm.val_data[start + 1 : start + 1 + BLOCK])
    assert list(dm.test_dataloader())[0][0].tolist() == batches[0][0].tolist()


def test_val_starts_reproducible(dm: CiDataModule, path: Path) -> None:
    other = make(path)
    other.setup("fit")
    assert torch.equal(dm.val_starts, other.val_starts)
    assert len(dm.val_starts) == 3 * BATCH
    assert len(set(dm.val_starts.tolist())) > 1


def test_val_starts_follow_the_seed(dm: CiDataModule, path: Path) -> None:
    other = make(path, seed=8)
    other.setup("fit")
    assert not torch.equal(dm.val_starts, other.val_starts)


def test_a_missing_ci_txt_is_built_from_data_source(tmp_path: Path, text: str, monkeypatch) -> None:
    built = []

    def build(source, out, option):
        built.append(source)
        Path(out).write_text(text, encoding="utf-8")
        return Path(out)

    monkeypatch.setattr(corpus, "build_ci", build)
    make(tmp_path / "ci.txt", source="chinese-poetry-2.0.1.tgz").build_tokenizer()
    assert built == ["chinese-poetry-2.0.1.tgz"]


def test_window_seed_distinct() -> None:
    seeds = {window_seed(s, r, i) for s in range(3) for r in range(4) for i in range(50)}
    assert len(seeds) == 3 * 4 * 50
    assert all(0 <= s < 2**63 - 1 for s in seeds)
    assert window_seed(2**40, 7, 10**6) != window_seed(2**40, 7, 10**6 + 1)


# --- errors --------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_text(tmp_path / "nope.txt")
    module = make(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="not found"):
        module.setup("fit")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        make(p).setup("fit")


def test_non_utf8_file_names_the_offset(tmp_path: Path) -> None:
    p = tmp_path / "gbk.txt"
    p.write_bytes("春江".encode() + "明月".encode("gbk"))  # 6 bytes of UTF-8, then GBK
    with pytest.raises(UserError) as info:
        make(p).setup("fit")
    message = str(info.value)
    assert "UTF-8" in message
    assert "byte offset 6" in message
    assert f"0x{'明'.encode('gbk')[0]:02x}" in message


def test_utf16_without_a_byte_order_mark_is_refused_not_trained_on(tmp_path: Path) -> None:
    """English text in UTF-16 decodes as UTF-8 without error: every other character a NUL, which trained."""
    p = tmp_path / "utf16.txt"
    p.write_bytes(("the quick brown fox\n" * 20).encode("utf-16-le"))
    with pytest.raises(UserError, match=f"corpus file {p} is not UTF-8 text: a quarter or more of it is NUL"):
        read_text(p)
    p.write_text("abc\0defgh\n" * 20, encoding="utf-8")  # a few NULs among the text: a text still
    assert read_text(p).count("\0") == 20


def test_after_a_byte_order_mark_the_bad_byte_is_named_at_its_offset_in_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf" + b"abc" + b"\xe9" + b"abc")  # the decoder counts from after the mark
    with pytest.raises(UserError, match="invalid byte 0xe9 at byte offset 6;"):
        read_text(p)


def test_an_unreadable_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "text.txt"
    p.write_text("春江", encoding="utf-8")

    def denied(self) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError, match=rf"^corpus file {p} cannot be read \(Permission denied\): pass --data.path"):
        read_text(p)


def test_a_text_read_twice_must_be_a_file_not_a_pipe(tmp_path: Path) -> None:
    """Training reads the corpus twice (the CLI's check, then setup): a pipe would be empty the second time, and
    a FIFO with no writer would block the first."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def blocked(signum, frame):
        raise AssertionError("opened the FIFO, which blocks without a writer")

    signal.signal(signal.SIGALRM, blocked)
    signal.alarm(10)
    try:
        with pytest.raises(UserError, match="is not a regular file, and it is read more than once: save it to a file"):
            make(fifo).setup("fit")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


@pytest.mark.parametrize("ratio, split", [(0.9, "validation"), (0.1, "training")])
def test_text_too_short_for_a_window(tmp_path: Path, ratio: float, split: str) -> None:
    p = tmp_path / "short.txt"
    p.write_text("春江潮水连海平，海上明月共潮生。", encoding="utf-8")  # 16 characters
    with pytest.raises(UserError, match=split):
        make(p, train_ratio=ratio).setup("fit")


def test_a_split_of_exactly_one_block_is_too_short(tmp_path: Path) -> None:
    """A window needs block_size + 1 characters (its targets are shifted by one)."""
    p = tmp_path / "exact.txt"
    p.write_text("一二三四五六七八九十甲乙丙丁戊己庚辛壬癸", encoding="utf-8")  # 20 = 10 + 10 characters
    with pytest.raises(UserError, match=r"has 10 characters, fewer than one window \(block_size \+ 1 = 11\)"):
        make(p, block_size=10, train_ratio=0.5).setup("fit")


def test_smallest_possible_split_works(tmp_path: Path) -> None:
    p = tmp_path / "exact.txt"
    text = "一二三四五六七八九十甲乙丙丁戊己庚辛壬癸子丑"  # 22 = 11 + 11 characters
    p.write_text(text, encoding="utf-8")
    module = make(p, block_size=10, train_ratio=0.5)
    module.setup("fit")
    x, y = module.train_batch(0, 0, torch.device("cpu"))
    assert module.tokenizer.decode(x[0].tolist()) == text[:10]
    assert module.tokenizer.decode(y[0].tolist()) == text[1:11]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"train_ratio": 0.0},
        {"train_ratio": 1.0},
        {"train_ratio": -0.5},
        {"batch_size": 0},
        {"block_size": 0},
        {"val_batches": 0},
        {"seed": -1},
    ],
)
def test_bad_settings(path: Path, kwargs: dict) -> None:
    with pytest.raises(UserError, match=next(iter(kwargs))):
        make(path, **kwargs)


# --- prompts -------------------------------------------------------------------------------------------------------


def test_predict_dataloader_yields_the_prompts(path: Path) -> None:
    module = make(path, prompts=["春江", "明月", "往事"])
    batches = list(module.predict_dataloader())
    assert batches == [["春江", "明月", "往事"]]
    assert list(make(path).predict_dataloader()) == [DEFAULT_PROMPTS]


def test_a_prompts_file_read_once_may_be_a_pipe(tmp_path: Path) -> None:
    """`… | babygpt predict --data.prompts_file /dev/stdin`: predict reads its prompts once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A daemon: where the pipe is never read, its open blocks for good, and must not hold the test run.
    writer = threading.Thread(target=lambda: fifo.write_text("春江\n往事\n", encoding="utf-8"), daemon=True)
    writer.start()
    try:
        assert read_prompts(None, str(fifo)) == ["春江", "往事"]
    finally:
        writer.join(timeout=10)


def test_prompts_file(path: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("春江\n\n明月 几时\n   \n往事\n", encoding="utf-8")
    module = make(path, prompts=["ignored"], prompts_file=str(prompts))
    assert module.load_prompts() == ["春江", "明月 几时", "往事"]
    assert list(module.predict_dataloader()) == [["春江", "明月 几时", "往事"]]


def test_a_prompts_file_is_split_at_line_ends_only(path: Path, tmp_path: Path) -> None:
    """str.splitlines() also split at U+0085, U+2028, form feeds and the like: two lines became five prompts."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("春\x85江\r\n明\u2028月\x0c往事\n", encoding="utf-8", newline="")
    assert make(path, prompts_file=str(prompts)).load_prompts() == ["春\x85江", "明\u2028月\x0c往事"]


@pytest.mark.parametrize(
    ("prompts", "message"),
    [([""], "prompt 1 of 1 is empty"), (["春江", ""], "prompt 2 of 2 is empty: remove it"), ([], "no prompt: give")],
)
def test_empty_prompt_rejected(path: Path, prompts: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        make(path, prompts=prompts).load_prompts()


def test_prompts_file_errors(path: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match=r"prompts file .*blank.txt has only blank lines"):
        make(path, prompts_file=str(blank)).load_prompts()
    with pytest.raises(UserError, match=r"prompts file .*missing.txt not found: pass --data.prompts_file"):
        make(path, prompts_file=str(tmp_path / "missing.txt")).load_prompts()


def fake_trainer(training: bool, ready: int = 0, rank: int = 0, predicting: bool = False) -> SimpleNamespace:
    progress = SimpleNamespace(total=SimpleNamespace(ready=ready))
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(predicting=predicting, training=training, fit_loop=loop, global_rank=rank)


def test_on_after_batch_transfer(dm: CiDataModule) -> None:
    placeholder = next(iter(dm.train_dataloader()))
    assert placeholder.numel() == 0
    assert dm.on_after_batch_transfer(placeholder, 0) is placeholder  # no trainer: untouched
    dm.trainer = fake_trainer(training=True, ready=5, rank=1)
    x, y = dm.on_after_batch_transfer(placeholder, 0)
    ex, ey = dm.train_batch(5, 1, torch.device("cpu"))
    assert torch.equal(x, ex) and torch.equal(y, ey)
    dm.trainer = fake_trainer(training=False)
    (starts,) = next(iter(dm.val_dataloader()))
    x, y = dm.on_after_batch_transfer([starts], 0)
    assert torch.equal(x, dm.windows("val", starts)[0])
    dm.trainer = fake_trainer(training=False, predicting=True)
    assert dm.on_after_batch_transfer(["春江"], 0) == ["春江"]


def test_dropout_masks_differ_between_ranks_and_repeat_for_a_rank(dm: CiDataModule) -> None:
    placeholder = next(iter(dm.train_dataloader()))

    def draws_after_the_hook(rank: int) -> torch.Tensor:
        dm.trainer = fake_trainer(training=True, ready=5, rank=rank)
        dm.on_after_batch_transfer(placeholder, 0)
        return torch.rand(8)  # the generator dropout draws from

    rank0 = draws_after_the_hook(0)
    assert not torch.equal(draws_after_the_hook(1), rank0)  # else every DDP rank drops the same units
    assert torch.equal(draws_after_the_hook(0), rank0)


def test_the_model_summarys_example_input_passes_the_batch_hook_unchanged(dm: CiDataModule) -> None:
    dm.trainer = fake_trainer(training=True, ready=5)
    example = torch.zeros(1, dm.block_size, dtype=torch.long)  # what BabyGPTModule.setup gives the summary
    assert dm.on_after_batch_transfer(example, 0) is example


def test_seed_dropout_seeds_the_cpu_generator_as_torch_manual_seed_does(monkeypatch) -> None:
    torch.manual_seed(5)
    expected = torch.nn.functional.dropout(torch.ones(64), 0.5)
    torch.manual_seed(0)
    monkeypatch.setattr(torch, "manual_seed", lambda seed: pytest.fail("seeded every backend"))
    seed_dropout(5, torch.device("cpu"))
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), expected)


def test_a_byte_order_mark_and_windows_line_ends_are_not_text(path: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeff春江\r\n往事\r\n".encode())
    assert make(path, prompts_file=str(prompts)).load_prompts() == ["春江", "往事"]
    assert read_text(prompts) == "春江\n往事\n"
    # Also where files joined with cat leave one inside (a line of it alone: no prompt).
    prompts.write_bytes("春江\n\ufeff往事\n\ufeff\n".encode())
    assert make(path, prompts_file=str(prompts)).load_prompts() == ["春江", "往事"]
    corpus = tmp_path / "windows.txt"
    corpus.write_bytes(path.read_text(encoding="utf-8").replace("\n", "\r\n").encode())
    assert make(corpus).build_tokenizer().vocab == make(path).build_tokenizer().vocab  # no "\r" in the vocabulary


def test_a_directory_is_named_as_one(path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"prompts file .* is a directory: pass --data.prompts_file"):
        make(path, prompts_file=str(tmp_path)).load_prompts()
    with pytest.raises(UserError, match=r"corpus file .* is a directory: pass --data.path"):
        read_text(tmp_path)


def test_one_prompt_may_be_a_plain_string(path: Path) -> None:
    assert make(path, prompts="明月").load_prompts() == ["明月"]


def test_prompts_given_beside_a_prompts_file_are_reported(path: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("春江\n", encoding="utf-8")
    assert make(path, prompts_file=str(prompts)).load_prompts() == ["春江"]
    assert capsys.readouterr().err == ""  # the default prompts are not the user's
    module = make(path, prompts=["明月"], prompts_file=str(prompts))
    assert "data.prompts_file replaces data.prompts; ignoring ['明月']" in capsys.readouterr().err
    make(path, prompts=["春江", "往事"], prompts_file=str(prompts))  # given, though the default ones
    assert "data.prompts_file replaces data.prompts; ignoring ['春江', '往事']" in capsys.readouterr().err
    assert module.load_prompts() == module.load_prompts() == ["春江"]
    assert capsys.readouterr().err == ""  # once, not at every validation's samples


@pytest.mark.parametrize(("ranks", "fits"), [(1, None), (2, None), (4, None), (3, 3), (16, 4)])
def test_validation_windows_must_divide_among_the_ranks(dm: CiDataModule, ranks: int, fits: int | None) -> None:
    dm.batch_size, dm.val_batches = 4, 2  # 8 windows
    if fits is None:
        dm.check_val_windows(ranks)
    else:
        with pytest.raises(UserError, match=f"among the {ranks} processes.*use --data.val_batches {fits}$"):
            dm.check_val_windows(ranks)


def test_a_list_with_an_unquoted_number_is_refused_not_read_as_one_prompt() -> None:
    """jsonargparse gives ``[春江, 2024]`` (an int in it, so no list[str]) as one string, brackets and all."""
    with pytest.raises(
        UserError, match=r'data.prompts \[春江, 2024\]: 2024 is not read as a string, .*; quote it \("2024"\)'
    ):
        read_prompts("[春江, 2024]", None)
    for typed in ("yes", "null", "0x10", "2.5"):  # named as typed, not as YAML reads them (True, None, 16)
        with pytest.raises(UserError, match=f'{typed} is not read as a string, .*; quote it \\("{typed}"\\)'):
            read_prompts(f"[春江, {typed}]", None)
    assert read_prompts("[春江", None) == ["[春江"]  # no list at all: one prompt, as given
    assert read_prompts("[注: 词牌]", None) == ["[注: 词牌]"]  # one mapping: a prompt, not an item to quote
    with pytest.raises(UserError, match=r'注: 词牌 is not read as a string, .*; quote it \("注: 词牌"\)'):
        read_prompts("[春江, 注: 词牌]", None)


def test_a_prompt_that_is_not_utf8_is_refused() -> None:
    """Bytes that are not UTF-8 on the command line reach Python as lone surrogates, which no file can hold."""
    with pytest.raises(UserError, match="prompt 2 of 2 is not UTF-8 text"):
        read_prompts(["春江", "春\udcff"], None)


def test_the_batches_of_a_step_are_saved_with_the_data(dm: CiDataModule) -> None:
    """A resume that changes them is warned of (the CLI compares them)."""
    dm.trainer = SimpleNamespace(accumulate_grad_batches=3, world_size=2)
    assert dm.state_dict()["trainer"] == {"accumulate_grad_batches": 3, "world_size": 2}
