"""Tests for babygpt_pl.checkpoint's LatestCheckpoint (safe loading and atomic writes: see test_failures)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from babygpt_pl.checkpoint import LatestCheckpoint


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


def test_last_checkpoint_follows_training_when_the_best_does_not(tmp_path: Path) -> None:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=4)
    checkpoint = LatestCheckpoint(dirpath=tmp_path, filename="best-{step}", monitor="val_loss", save_last=True)
    trainer = L.Trainer(
        max_steps=12,
        val_check_interval=4,
        limit_val_batches=1,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(WorseningModel(), loader, loader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step=4.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 12  # Lightning's own ModelCheckpoint leaves last.ckpt at step 4 here
