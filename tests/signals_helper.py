"""Callbacks the resume and failure tests inject into a `babygpt fit` subprocess (via --trainer.callbacks+=)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KillAfterStep(Callback):
    """SIGKILL this process as the step after ``step`` begins: the step-``step`` checkpoint is on disk by then."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class MarkStep(Callback):
    """Touch ``path`` once training has finished ``step`` steps, so a test knows when to send a signal."""

    def __init__(self, step: int, path: str) -> None:
        self.step = step
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.path.touch()


class SignalAtStep(Callback):
    """Send this process SIGINT once training has finished ``step`` steps, as a Ctrl-C there would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class SignalAfterBatch(Callback):
    """Send this process SIGINT once, as batch number ``batch`` (from 1) ends: a step's end or, with gradient
    accumulation, the middle of one."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


class SignalParentAtStep(Callback):
    """On rank 0, SIGTERM the parent process once training has finished ``step`` steps: a kill of a ddp_spawn run's
    main process, which trains nothing itself."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getppid(), signal.SIGTERM)
