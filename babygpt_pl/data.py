"""The data module: random character windows of a UTF-8 text file, and the prompts to predict from.

Training windows are drawn on the training device, from a generator seeded with (seed, rank, batch index),
in ``on_after_batch_transfer``. So the batch needs no host work or sync, every rank draws different windows,
and a resumed run draws exactly the windows the uninterrupted run would have (the batch index comes back
with the checkpoint's loop state). Validation uses a fixed set of ``val_batches`` batches of windows, drawn
once from ``seed``, so every validation of every run sees the same text.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from babygpt_pl.corpus import ensure_corpus
from babygpt_pl.errors import UserError, refuse_unquoted_items, warn
from babygpt_pl.tokenizer import CharTokenizer

DEFAULT_PROMPTS = ["春江", "往事"]


def read_text(path: str | Path, what: str = "corpus file", option: str = "--data.path", reread: bool = False) -> str:
    """The whole file as text; a clear error, naming ``what`` and the ``option`` to fix, if it is missing,
    unreadable, empty or not UTF-8, or, where it is read again later (``reread``), a pipe that would be empty then."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{what} {path} is a directory: pass {option} to a UTF-8 text file")
        if not path.exists():
            raise UserError(f"{what} {path} not found: pass {option} to an existing UTF-8 text file")
        if reread and not path.is_file():  # checked without opening it: a FIFO with no writer would block
            raise UserError(f"{what} {path} is not a regular file, and it is read more than once: save it to a file")
        raw = path.read_bytes()
    except OSError as err:  # no permission, a name too long, an unreadable device
        raise UserError(f"{what} {path} cannot be read ({err.strerror}): pass {option} to a readable file") from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte-order mark (Windows editors write one) is not text
    except UnicodeDecodeError as err:
        at = err.start + (3 if raw.startswith(codecs.BOM_UTF8) else 0)  # the decoder counts from after the mark
        raise UserError(
            f"{what} {path} is not UTF-8: invalid byte 0x{raw[at]:02x} at byte offset {at}; "
            f"convert it (e.g. iconv -t UTF-8) or pass another {option}"
        ) from None
    if not text:
        raise UserError(f"{what} {path} is empty: pass {option} to a UTF-8 text file with some text in it")
    if text.count("\0") * 4 >= len(text):  # UTF-16 without a byte-order mark: ASCII decodes to half NULs
        raise UserError(
            f"{what} {path} is not UTF-8 text: a quarter or more of it is NUL characters, as in UTF-16; convert it "
            f"(e.g. iconv -f UTF-16LE -t UTF-8) or pass another {option}"
        )
    return text.replace("\r\n", "\n")  # Windows line ends: "\r" is no character of the text


def text_sha256(text: str) -> str:
    """The text's fingerprint, saved with each checkpoint: a resumed run must read the same text."""
    return hashlib.sha256(text.encode()).hexdigest()


def as_prompt_list(prompts: list[str] | str | None) -> list[str]:
    """The prompts setting as a list: None is the default prompts, a string is one prompt."""
    if isinstance(prompts, str):
        refuse_unquoted_items(prompts, "data.prompts")
        return [prompts]
    return DEFAULT_PROMPTS if prompts is None else list(prompts)


def require_utf8(text: str, what: str) -> None:
    """Bytes that are not UTF-8 reach Python (stdin, the command line) as lone surrogates ('\\udcff'), which
    encode to nothing: name the problem, not them."""
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        raise UserError(
            f"{what} is not UTF-8 text: type it again, or convert the piped file or script (e.g. iconv -t UTF-8)"
        )


def read_prompts(prompts: list[str] | str | None, prompts_file: str | None, reread: bool = False) -> list[str]:
    """What predict and the logged samples continue: the lines of ``prompts_file`` if set, else ``prompts``
    (``reread``: the file will be read again, as at each validation)."""
    if prompts_file is None:
        prompts = as_prompt_list(prompts)
    else:
        text = read_text(prompts_file, "prompts file", "--data.prompts_file", reread)
        # Lines end at \n alone (and a \r before it): splitlines() also split at form feeds, U+2028 and the like.
        # A byte-order mark may start any line of files joined with cat: no part of a prompt (chat drops it too).
        lines = (line.removesuffix("\r").lstrip("\ufeff") for line in text.split("\n"))
        prompts = [line for line in lines if line.strip()]
        if not prompts:
            raise UserError(f"prompts file {prompts_file} has only blank lines: write one prompt per line")
    if not prompts:
        raise UserError("no prompt: give at least one non-empty prompt (data.prompts or data.prompts_file)")
    for number, prompt in enumerate(prompts, 1):
        require_utf8(prompt, f"prompt {number} of {len(prompts)}")
    if "" in prompts:
        raise UserError(
            f"prompt {prompts.index('') + 1} of {len(prompts)} is empty: remove it from data.prompts "
            "(each prompt needs at least one character)"
        )
    return prompts


def window_seed(seed: int, rank: int, index: int) -> int:
    """A distinct 63-bit generator seed for each (seed, rank, batch index)."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + index) % (2**63 - 1)


def seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the generators dropout draws from on ``device``: the CPU's, and a GPU's own.

    Not torch.manual_seed, which seeds every backend and formats a stack trace for each one not in use (XPU,
    MTIA): 135 us per training step on this project's CPU.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


class _Forever(IterableDataset):
    """Endless placeholder batches: the windows themselves are drawn on the device (see the module doc)."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield torch.empty(0)


class CiDataModule(L.LightningDataModule):
    """Character windows of ``path`` (default: the ci corpus, built on first use) for a BabyGPT.

    Args:
        path: a UTF-8 text file. ``data/ci.txt`` (any path named ci.txt) is built from chinese-poetry if missing.
        batch_size: windows per batch (per device).
        block_size: window length; linked from ``model.block_size`` by the CLI.
        train_ratio: the first part of the text is for training, the rest for validation.
        val_batches: how many fixed validation batches to evaluate each time.
        seed: seeds the training and validation windows.
        prompts: what ``predict`` continues, and ``fit`` and ``validate`` log samples of: a list, or one prompt
            (null: 春江 and 往事, or in validate and a resume those training used).
        prompts_file: a UTF-8 file with one prompt per line; replaces ``prompts`` when set.
        source: where to build ci.txt from: a chinese-poetry directory or .tgz (default: fetch with npm).
    """

    def __init__(
        self,
        path: str = "data/ci.txt",
        batch_size: int = 64,
        block_size: int = 256,
        train_ratio: float = 0.9,
        val_batches: int = 100,
        seed: int = 1337,
        prompts: list[str] | str | None = None,
        prompts_file: str | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        if not path:
            raise UserError(f"data.path must be the path of a UTF-8 text file, got {path!r}")
        # block_size is set as model.block_size (the CLI links it here).
        names = {"data.batch_size": batch_size, "model.block_size": block_size, "data.val_batches": val_batches}
        for name, value in names.items():
            if value < 1:
                raise UserError(f"{name} must be a positive integer, got {value}")
        if not 0 < train_ratio < 1:
            raise UserError(f"data.train_ratio must be strictly between 0 and 1, got {train_ratio}")
        if not 0 <= seed < 2**63:  # a torch generator's seed
            raise UserError(f"data.seed must be an integer from 0 to 2**63 - 1, got {seed}")
        self.path = path
        self.batch_size = batch_size
        self.block_size = block_size
        self.train_ratio = train_ratio
        self.val_batches = val_batches
        self.seed = seed
        self.prompts = as_prompt_list(prompts)
        self.prompts_file = prompts_file
        if prompts_file is not None and prompts is not None:  # here: prompts are read at each validation
            warn(f"data.prompts_file replaces data.prompts; ignoring {self.prompts}")
        self.source = source
        self.tokenizer: CharTokenizer | None = None
        self.text_sha256: str | None = None
        self.train_data: torch.Tensor | None = None
        self.val_data: torch.Tensor | None = None
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting:
            return  # prediction needs only the checkpoint, never the corpus
        ensure_corpus(self.path, self.source)

    def build_tokenizer(self) -> CharTokenizer:
        """The corpus's vocabulary, after checking the corpus can feed training (building it if missing)."""
        self.prepare_data()
        return self._read()[1]

    def _read(self) -> tuple[str, CharTokenizer]:
        text = read_text(self.path, reread=True)  # by the CLI's check, then by setup
        split = int(self.train_ratio * len(text))
        for name, size in (("training", split), ("validation", len(text) - split)):
            if size < self.block_size + 1:
                raise UserError(
                    f"the {name} split of {self.path} has {size} characters, fewer than one window "
                    f"(block_size + 1 = {self.block_size + 1}): use a longer text, a smaller model.block_size, "
                    "or another data.train_ratio"
                )
        self.text_sha256 = text_sha256(text)
        return text, CharTokenizer.from_text(text)

    def settings(self) -> dict:
        """What the training and validation windows depend on: saved with each checkpoint, so that a resumed
        run can be held to the same data (read the text first: ``build_tokenizer`` or ``setup``)."""
        names = ("batch_size", "train_ratio", "val_batches", "seed", "text_sha256")
        return {name: getattr(self, name) for name in names}

    def state_dict(self) -> dict:
        # The path as given (relative to where training ran) is where validate and test look for the text first;
        # the settings' sha256 still decides whether a text is the one trained on.
        if not self.text_sha256:
            return {}
        saved = {"settings": self.settings(), "path": str(self.path)}
        # The samples' prompts: validate and a resume take them back where none are given (the default ones may
        # not even be in the vocabulary of a model of another text).
        file = None if self.prompts_file is None else str(self.prompts_file)
        saved["samples"] = {"prompts": self.prompts, "prompts_file": file}
        if self.trainer is not None:  # the batches of an optimizer step: warned of on a resume that changes them
            trainer = self.trainer
            saved["trainer"] = {
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "world_size": trainer.world_size,
            }
        return saved

    def setup(self, stage: str) -> None:
        if stage == "predict" or self.train_data is not None:
            return
        text, self.tokenizer = self._read()
        data = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        split = int(self.train_ratio * len(data))
        self.train_data, self.val_data = data[:split], data[split:]
        generator = torch.Generator().manual_seed(self.seed)
        count = self.val_batches * self.batch_size
        self.check_val_windows(1 if self.trainer is None else self.trainer.world_size)
        self.val_starts = torch.randint(len(self.val_data) - self.block_size, (count,), generator=generator)

    def check_val_windows(self, ranks: int) -> None:
        """Lightning's DistributedSampler evens the ranks' shares of the validation windows out by repeating some:
        the repeats would count twice in val_loss, which then differs from one process's over the same windows.
        (The CLI calls this before the processes start, so that the error is said once.)"""
        count = self.val_batches * self.batch_size
        if count % ranks:
            fits = next(
                n for n in range(self.val_batches, self.val_batches + ranks + 1) if n * self.batch_size % ranks == 0
            )
            raise UserError(
                f"data.val_batches x data.batch_size ({count} validation windows) must divide evenly among the "
                f"{ranks} processes, else some windows count twice in val_loss: use --data.val_batches {fits}"
            )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Forever(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_starts), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        prompts = self.load_prompts()
        return DataLoader(prompts, batch_size=len(prompts), collate_fn=list)

    def load_prompts(self) -> list[str]:
        return read_prompts(self.prompts, self.prompts_file)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # A tensor with elements is the model summary's example input (BabyGPTModule.setup), which Lightning passes
        # through this hook too; the training loader's placeholders are empty.
        if self.trainer is None or self.trainer.predicting or (isinstance(batch, torch.Tensor) and batch.numel()):
            return batch
        if self.trainer.training:
            # The index of the batch about to run; restored with the loop state on resume.
            index = self.trainer.fit_loop.epoch_loop.batch_progress.total.ready
            rank = self.trainer.global_rank
            # Dropout's randomness too is a function of (seed, rank, batch): a resumed run repeats it exactly
            # without saving RNG states (a checkpoint's RNG state would include what validation consumed).
            seed_dropout(window_seed(self.seed + 1, rank, index), batch.device)
            return self.train_batch(index, rank, batch.device)
        return self.windows("val", batch[0])

    def train_batch(self, index: int, rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch number ``index`` of ``rank``: always the same windows for the same seed."""
        generator = torch.Generator(device=device).manual_seed(window_seed(self.seed, rank, index))
        high = len(self.train_data) - self.block_size
        starts = torch.randint(high, (self.batch_size,), generator=generator, device=device)
        return self.windows("train", starts)

    def windows(self, split: str, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-character targets, each (len(starts), block_size), on the device of ``starts``."""
        key = (split, starts.device)
        if key not in self._on_device:
            self._on_device[key] = (self.train_data if split == "train" else self.val_data).to(starts.device)
        offsets = torch.arange(self.block_size + 1, device=starts.device)
        chunk = self._on_device[key][starts[:, None] + offsets]
        return chunk[:, :-1], chunk[:, 1:]
