"""Run the `babygpt` command in a subprocess, as a user would, with tiny model settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L

from babygpt_pl.module import BabyGPTModule

TESTS = Path(__file__).resolve().parent

TINY = [
    "--model.n_layer=2",
    "--model.n_embed=32",
    "--model.n_head=2",
    "--model.block_size=32",
    "--data.batch_size=8",
    "--data.val_batches=2",
    "--trainer.val_check_interval=10",
    "--trainer.enable_progress_bar=false",
]


def babygpt_env(**extra: str | None) -> dict[str, str]:
    """The test environment; an ``extra`` value of None removes that variable."""
    # One thread: tiny models only lose to thread sync, and it keeps CPU results bitwise repeatable.
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]))
    # A wandb service started by an in-process test would be shared, and hold a finished run's id "in use".
    env.pop("WANDB_SERVICE", None)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def babygpt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "babygpt_pl.cli", *args]


def babygpt(cwd: Path, *args: str, check: bool = True, **env: str | None) -> subprocess.CompletedProcess:
    result = subprocess.run(  # stdin: nothing to read (wandb, say, would ask a terminal for a key)
        babygpt_cmd(*args),
        cwd=cwd,
        env=babygpt_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def tiny_checkpoint(folder: Path, corpus: Path) -> Path:
    """An untrained model's checkpoint over the corpus's characters."""
    vocab = "".join(sorted(set(corpus.read_text(encoding="utf-8"))))
    module = BabyGPTModule(vocab=vocab, block_size=16, n_embed=16, n_head=2, n_layer=1)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    ckpt = folder / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt
