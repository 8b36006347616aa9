"""Tests for babygpt_pl.checkpoint's LatestCheckpoint and failed writes (safe loading: see test_failures)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from babygpt_pl.checkpoint import AtomicCheckpointIO, LatestCheckpoint
from babygpt_pl.errors import UserError


class WorseningModel(L.LightningModule):
    """A val_loss that only grows, so the best checkpoint stays at the first validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val_loss", float(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(
    tmp_path: Path, ckpt_path: Path | None = None, save_top_k: int = 1, mode: str = "min", **trainer_args
) -> LatestCheckpoint:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(48, 2)), batch_size=4)
    checkpoint = LatestCheckpoint(
        dirpath=tmp_path, filename="best-{step}", monitor="val_loss", save_last=True, save_top_k=save_top_k, mode=mode
    )
    trainer = L.Trainer(
        callbacks=[checkpoint],
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
    trainer.fit(WorseningModel(), loader, loader, ckpt_path=ckpt_path)
    return checkpoint


def test_last_checkpoint_follows_training_when_the_best_does_not(tmp_path: Path) -> None:
    fit(tmp_path, max_steps=12, val_check_interval=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step=4.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 12  # Lightning's own ModelCheckpoint leaves last.ckpt at step 4 here


def test_last_checkpoint_holds_the_steps_after_the_last_validation(tmp_path: Path) -> None:
    fit(tmp_path, max_steps=10, val_check_interval=4)  # validations at 4 and 8, the run ends at 10
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 10


def test_validation_at_epoch_end_keeps_the_best_and_the_last(tmp_path: Path) -> None:
    checkpoint = fit(tmp_path, max_epochs=3)  # 12 steps an epoch, validated at each epoch's end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step=12.ckpt", "last.ckpt"]
    assert checkpoint.best_model_path.endswith("best-step=12.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 36


def test_a_run_resumed_in_a_copied_folder_keeps_its_record_of_the_best(tmp_path: Path) -> None:
    fit(tmp_path / "run", max_steps=8, val_check_interval=4)  # the best: step 4
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    checkpoint = fit(tmp_path / "copy", tmp_path / "copy" / "last.ckpt", max_steps=12, val_check_interval=4)
    # Lightning alone took step 12 for the best (it forgot step 4's score) and left step 4's file behind.
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["best-step=4.ckpt", "last.ckpt"]
    assert checkpoint.best_model_path == str(tmp_path / "copy" / "best-step=4.ckpt")


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("mode", "kept", "kth"),
    [("min", [4, 8], 8), ("max", [12, 16], 12)],  # val_loss is the step: min keeps the first, max the last
)
def test_a_run_resumed_with_a_smaller_save_top_k_keeps_that_many(tmp_path: Path, mode: str, kept, kth) -> None:
    fit(tmp_path, max_steps=12, val_check_interval=4, save_top_k=-1, mode=mode)  # best-step=4, 8 and 12
    checkpoint = fit(tmp_path, tmp_path / "last.ckpt", max_steps=16, val_check_interval=4, save_top_k=2, mode=mode)
    # Lightning alone kept all three, and every later best beside them.
    assert names(tmp_path) == [*(f"best-step={s}.ckpt" for s in kept), "last.ckpt"]
    assert sorted(checkpoint.best_k_models) == [str(tmp_path / f"best-step={s}.ckpt") for s in kept]
    assert checkpoint.kth_best_model_path == str(tmp_path / f"best-step={kth}.ckpt")


def test_the_surplus_best_checkpoints_go_before_a_save_of_the_shorter_record(tmp_path: Path) -> None:
    """A resumed run that ends before its first validation still saves last.ckpt with the record of k: the
    files it no longer names would be left for good."""
    fit(tmp_path, max_steps=12, val_check_interval=4, save_top_k=-1)
    fit(tmp_path, tmp_path / "last.ckpt", max_steps=14, val_check_interval=4, save_top_k=1)  # no validation
    assert names(tmp_path) == ["best-step=4.ckpt", "last.ckpt"]


@pytest.mark.parametrize("extra", [{"save_top_k": 0}, {"save_top_k": 1, "fast_dev_run": 20}])
def test_no_save_top_k_and_a_smoke_run_delete_no_best_checkpoint(tmp_path: Path, extra: dict) -> None:
    fit(tmp_path, max_steps=12, val_check_interval=4, save_top_k=-1)
    fit(tmp_path, tmp_path / "last.ckpt", max_steps=16, val_check_interval=4, **extra)
    assert names(tmp_path) == ["best-step=12.ckpt", "best-step=4.ckpt", "best-step=8.ckpt", "last.ckpt"]


def test_the_best_checkpoint_resumed_from_is_kept(tmp_path: Path) -> None:
    fit(tmp_path, max_steps=12, val_check_interval=4, save_top_k=-1)
    fit(tmp_path, tmp_path / "best-step=12.ckpt", max_steps=16, val_check_interval=4, save_top_k=1)
    assert names(tmp_path) == ["best-step=12.ckpt", "best-step=4.ckpt", "last.ckpt"]


def test_a_resume_in_another_folder_deletes_nothing_in_the_first(tmp_path: Path) -> None:
    fit(tmp_path / "run", max_steps=12, val_check_interval=4, save_top_k=-1)
    (tmp_path / "other").mkdir()
    shutil.copy(tmp_path / "run" / "last.ckpt", tmp_path / "other")  # not the best files: the record stays behind
    checkpoint = fit(
        tmp_path / "other", tmp_path / "other" / "last.ckpt", max_steps=16, val_check_interval=4, save_top_k=1
    )
    assert names(tmp_path / "run") == ["best-step=12.ckpt", "best-step=4.ckpt", "best-step=8.ckpt", "last.ckpt"]
    # The record of the first folder's files is not taken over: the new folder gets its own best checkpoint.
    assert checkpoint.best_model_path == str(tmp_path / "other" / "best-step=16.ckpt")
    assert Path(checkpoint.best_model_path).exists()


def test_state_key_is_model_checkpoints_so_older_checkpoints_resume_it(tmp_path: Path) -> None:
    ours = LatestCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True)
    assert ours.state_key == ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True).state_key


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        # What torch.save raised on a full 3 MB tmpfs:
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3125632 vs 3125524"), "disk full"),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "disk full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded.*: free some space"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device.*: free some space"),
        # A folder made read-only during the run: no word of space.
        (PermissionError(errno.EACCES, "Permission denied"), r"Permission denied; no file was half-written\): pass"),
    ],
)
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_old_file(tmp_path: Path, monkeypatch, failure, reason):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def fails(obj, f) -> None:
        f.write(b"PK\x03\x04 part of a zip")
        raise failure

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(UserError, match=f"could not write checkpoint {path} .*{reason}.*--checkpoint.dirpath"):
        io.save_checkpoint({"step": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["step"] == 1


def test_a_checkpoint_write_keeps_other_errors_as_they_are(tmp_path: Path, monkeypatch) -> None:
    def fails(obj, f) -> None:
        raise RuntimeError("a bug, not a full disk")

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(RuntimeError, match="a bug"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # a kill in the middle of torch.save

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["step"] == 1
