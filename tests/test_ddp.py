"""Two-process DDP on CPU (gloo) through the CLI: it trains, logs, checkpoints once, and resumes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from cli_helper import TINY, babygpt

pytestmark = pytest.mark.slow

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def test_two_process_ddp_trains_logs_checkpoints_and_resumes(tmp_path: Path, corpus: Path) -> None:
    common = ["fit", "--data.path=corpus.txt", *TINY, *DDP, "--trainer.logger=CSVLogger"]
    common += ["--trainer.logger.init_args.save_dir=logs", "--trainer.log_every_n_steps=1"]
    result = babygpt(tmp_path, *common, "--trainer.max_steps=10")
    assert "Starting with 2 processes" in result.stderr + result.stdout
    assert "sync_dist" not in result.stderr  # the validation loss is reduced across ranks, and says so

    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("best-step=10-") and names[1] == "last.ckpt"  # written once
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    rows = metrics(tmp_path)
    assert any(r.get("val_loss") for r in rows)
    assert len([r for r in rows if r.get("train_loss")]) == 10

    babygpt(tmp_path, *common, "--trainer.max_steps=14", "--ckpt_path=checkpoints/last.ckpt")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14


def test_a_nan_loss_under_ddp_stops_every_rank_in_one_line(tmp_path: Path, corpus: Path) -> None:
    """The ranks decide together: one rank's NaN stopped it alone, and the other ended in a gloo traceback (on a
    GPU, NCCL would wait); both printed the error."""
    args = ["fit", "--data.path=corpus.txt", *TINY, *DDP, "--trainer.logger=false", "--trainer.log_every_n_steps=1"]
    result = babygpt(tmp_path, *args, "--trainer.max_steps=200", "--model.lr=3000", check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "[rank", "Traceback"))]
    assert len(errors) == 1 and errors[0].startswith("error: the training loss became NaN or infinite at step ")


def test_sigterm_to_a_ddp_spawn_run_stops_its_ranks_with_a_checkpoint(tmp_path: Path, corpus: Path) -> None:
    """The signal reached the main process alone: its ranks trained on to max_steps, validations and all."""
    args = ["fit", "--data.path=corpus.txt", *TINY, *DDP[:2], "--trainer.strategy=ddp_spawn", "--trainer.logger=false"]
    signal_at_3 = ["--trainer.callbacks+=signals_helper.SignalParentAtStep", "--trainer.callbacks.init_args.step=3"]
    run = [*args, "--trainer.max_steps=100", "--trainer.log_every_n_steps=1", *signal_at_3]
    result = babygpt(tmp_path, *run, check=False)
    assert result.returncode == 143, result.stderr[-2000:]
    step = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 3 <= step < 10 and f"stopped by a signal at step {step}" in result.stderr + result.stdout


def metrics(run: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(run.glob("logs/**/metrics.csv")):
        with path.open() as f:
            rows += list(csv.DictReader(f))
    return rows
