"""Callbacks for the side concerns of training and prediction."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    Callback,
    LearningRateMonitor,
    RichProgressBar,
    ThroughputMonitor,
    Timer,
)
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from babygpt_pl.checkpoint import LAST_FILE
from babygpt_pl.files import jsonl, write_atomic
from babygpt_pl.generation import complete
from babygpt_pl.module import first_wandb


def batch_size(batch: Any) -> int:
    """Windows in an (x, y) batch, or prompts in a predict batch."""
    return batch[0].size(0) if torch.is_tensor(batch[0]) else len(batch)


def batch_tokens(batch: Any) -> int:
    """Tokens in an (x, y) batch (B*T), so ThroughputMonitor's items/s are tokens/s; prompt characters else."""
    return batch[0].numel() if torch.is_tensor(batch[0]) else sum(map(len, batch))


def accumulating(trainer: L.Trainer) -> bool:
    """Whether the training batch that just ended is inside a gradient accumulation: its step is not over.
    (Lightning's own test, fit_loop._should_accumulate, less its case of an epoch's last batch: one endless epoch.)"""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.current.ready % trainer.accumulate_grad_batches)


class StepLearningRateMonitor(LearningRateMonitor):
    """Lightning's LearningRateMonitor, logging once per optimizer step: the library logs at the start of every
    batch of a logged step, so with gradient accumulation each point twice."""

    _logged_step = -1

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step != self._logged_step:  # (the step's first batch)
            self._logged_step = trainer.global_step
            super().on_train_batch_start(trainer, *args, **kwargs)


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor (tokens/s, samples/s, MFU), synchronising the GPU only on logged steps.

    The library's monitor calls ``torch.cuda.synchronize`` after every batch to read its clock, which stops
    the CPU from queueing the next step while the GPU works: on a ~10 ms GPU step that costs more than the
    measurement is worth. Here the training batches in between are only counted, and the clock is read (and
    the throughput updated, with the FLOPs of all the batches since the last update) on the steps whose
    metrics are logged, and before each validation, so that its time is not counted as training.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(batch_size_fn=batch_size, length_fn=batch_tokens, **kwargs)
        self._pending = 0  # training batches counted since the last update
        self._paused_at: float | None = None  # when training's clock stopped for a validation
        self._resumed: dict[str, float] = {}  # the training totals a checkpoint held, to go on from

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The library averages over its last 100 updates, one per batch, and logs nothing until it has them; ours
        # come every log_every_n_steps, and a window of about 20 steps (at least 2 updates) gives a first value
        # early in a short run.
        self.kwargs.setdefault("window_size", max(2, math.ceil(20 / max(1, trainer.log_every_n_steps))))
        super().setup(trainer, pl_module, stage)

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, iter_num: int) -> None:
        stage = trainer.state.stage
        self._samples[stage] += self.batch_size_fn(batch)
        self._lengths[stage] += self.length_fn(batch)
        self._batches[stage] += 1
        if not trainer.training:
            self._record(trainer, pl_module, stage, batches=1)
            return
        self._pending += 1
        if trainer._logger_connector.should_update_logs and not accumulating(trainer):  # once, at the step's end
            self._record(trainer, pl_module, stage, batches=self._pending)

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: RunningStage, batches: int) -> None:
        """The library's update, over the last ``batches`` batches of ``stage``.

        The library counts ``flops_per_batch`` (a training batch's forward and backward) for every stage: here an
        evaluation batch, the forward alone, counts a third of it (2 of the 6 FLOPs per parameter and token), and
        a predict batch, a generation, none."""
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        flops = getattr(pl_module, "flops_per_batch", None)
        if flops is not None and stage != RunningStage.TRAINING:
            flops = flops / 3 if stage in (RunningStage.VALIDATING, RunningStage.TESTING) else None
        self._throughputs[stage].update(
            time=time.perf_counter() - self._t0s[stage],
            batches=self._batches[stage],
            samples=self._samples[stage],
            lengths=self._lengths[stage],
            flops=None if flops is None else flops * batches,
        )
        if stage == RunningStage.TRAINING:
            self._pending = 0

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending and not trainer.sanity_checking:
            self._record(trainer, pl_module, RunningStage.TRAINING, batches=self._pending)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            # Training's clock stops here and goes on at the next training batch (on_train_batch_start). The library
            # takes out the validation batches alone: the samples table and the checkpoint save after them counted
            # as training, and a step after each validation read ~10x slower (on_validation_end below).
            self._paused_at = time.perf_counter()
        super().on_validation_start(trainer, pl_module)

    @rank_zero_only
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._paused_at is not None:
            self._t0s[RunningStage.TRAINING] += time.perf_counter() - self._paused_at
            self._paused_at = None

    @rank_zero_only
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any, **kwargs: Any
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, *args, **kwargs)
        elif not trainer.sanity_checking:  # logged once, at the end
            self._update(trainer, pl_module, batch, 0)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # In a fit the library logs each validation batch's throughput at the count of validation batches so far,
        # which in the run's charts is a training step (wandb drops steps that go back): here once per validation,
        # at the training step it follows.
        if (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and self._batches[RunningStage.VALIDATING]
        ):
            throughput = self._throughputs[RunningStage.VALIDATING]
            metrics = {
                f"{RunningStage.VALIDATING.value}{throughput.separator}{k}": v for k, v in throughput.compute().items()
            }
            trainer._logger_connector.log_metrics(metrics)  # at the step of val_loss
        # Not the library's on_validation_end: it moves training's clock past the validation batches only.

    # The library starts its totals (train/time, batches, samples, lengths) at 0 in every fit, so a resumed run's
    # curves in wandb jumped back to 0 at the resume; the checkpoint keeps them and the resumed run goes on from them.
    def state_dict(self) -> dict[str, float]:
        stage = RunningStage.TRAINING
        if stage not in self._t0s:  # not rank zero, or no training yet
            return {}
        now = time.perf_counter() if self._paused_at is None else self._paused_at  # (saved after a validation)
        return {
            "time": now - self._t0s[stage],  # training time: validations are taken out of it
            "batches": self._batches[stage],
            "samples": self._samples[stage],
            "lengths": self._lengths[stage],
        }

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._resumed = dict(state_dict)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._paused_at = None  # (a fit before this one may have ended in a validation)
        if self._resumed:
            stage = RunningStage.TRAINING
            self._t0s[stage] -= self._resumed["time"]
            self._batches[stage] = int(self._resumed["batches"])
            self._samples[stage] = int(self._resumed["samples"])
            self._lengths[stage] = int(self._resumed["lengths"])
            self._resumed = {}


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, reading the logged metrics during training only on the steps that log them.

    The library's bar reads them after every batch, turning the step's loss into a Python float: on a GPU a
    sync per step, so the CPU can no longer queue the next step while the GPU runs this one. The bar still
    advances every step; the loss it shows is that of the last logged step (every trainer.log_every_n_steps).
    """

    _first_step = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._first_step = True  # read at the first step: else the sanity check's val_loss stayed on show

    def _update_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training and not trainer._logger_connector.should_update_logs and not self._first_step:
            return
        self._first_step = False
        super()._update_metrics(trainer, pl_module)

    @property
    def total_train_batches(self) -> int | float:
        # The bar counts the endless epoch's batches from 0, also after a resume, where the library's total is
        # the steps left (a resumed run to step 60 from 40 showed 60/20).
        steps = self.trainer.max_steps
        if steps is None or steps < 0:
            return super().total_train_batches
        return min(self.trainer.num_training_batches, steps * (self.trainer.accumulate_grad_batches or 1))

    def _get_train_description(self, current_epoch: int) -> str:
        # Training is one endless epoch that max_steps ends: the library's "Epoch 0/-2" says nothing.
        steps = self.trainer.max_steps
        return f"Training to step {steps}" if steps is not None and steps >= 0 else "Training"


def format_completion(completion: dict) -> str:
    head = f"--- {completion['prompt']}"
    if completion.get("sample"):
        head += f" (sample {completion['sample'] + 1})"
    return f"{head}\n{completion['prompt']}{completion['text']}\n"


class PredictionPrinter(BasePredictionWriter):
    """Prints every prompt's continuation once its batch (all the prompts: one batch) is generated, and writes them
    all as JSON lines at the end (to ``generation.output`` when it is set). chat streams; predict does not."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.records: list[dict] = []
        self.stdout_error: OSError | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.records = []
        self.stdout_error = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.records.extend(prediction)
        if self.stdout_error is not None:
            return
        try:
            for completion in prediction:
                sys.stdout.write(format_completion(completion) + "\n")
            sys.stdout.flush()
        except OSError as err:  # `| head` closed the pipe, or the disk is full: the output file is still written
            self.stdout_error = err

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        output = getattr(pl_module, "generation", None) and pl_module.generation.output
        if output and trainer.is_global_zero:
            write_atomic(output, jsonl(self.records), option="--generation.output")
        if self.stdout_error is not None:  # then the command ends as it would have (141 for a closed pipe)
            raise self.stdout_error


class GracefulStop(Callback):
    """On Ctrl-C (SIGINT) or SIGTERM during fit: finish the current step, save last.ckpt, stop.

    Lightning's own handling raises KeyboardInterrupt wherever the signal lands (even inside an optimizer
    step) and does not save; this waits for a step boundary so the checkpoint resumes exactly. A second
    Ctrl-C interrupts at once. Outside training the CLI's own handler ends the command
    (:func:`~babygpt_pl.errors.raise_terminated`).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Inside a gradient accumulation the step is not over: a checkpoint would lose the gradient accumulated so far.
        # (Lightning's own test for it, on an epoch that never ends here.)
        if accumulating(trainer):
            return
        received = self.received is not None
        if trainer.world_size > 1:  # every rank must take part in the save, so stop together
            # Agreeing is a collective and a host sync: every log_every_n_steps steps, not every step.
            if trainer.global_step % max(1, trainer.log_every_n_steps):
                return
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        saved = _save_last(trainer)
        trainer.should_stop = True
        if not _validates_at_this_batch(trainer):
            # Lightning validates once more on a should_stop (for early stopping): minutes on a CPU, and a val point
            # (and best checkpoint) that the uninterrupted run never has. A stop is for leaving now. (A validation
            # due at this batch still runs: the resumed run takes it as done.)
            trainer.limit_val_batches = 0
        rank_zero_info(f"\nstopped by a signal at step {trainer.global_step}: {saved}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class StepTimer(Timer):
    """Lightning's Timer (``--trainer.max_time``), checked at the end of each optimizer step only.

    Timer checks after every batch: a stop inside a gradient accumulation validated and saved last.ckpt without the
    gradient accumulated so far, and the resumed run differed from one never stopped. (Lightning's own guard is the
    epoch's end, which never comes here.) Its state is Timer's, under Timer's key: checkpoints of either resume
    with either.
    """

    @property
    def state_key(self) -> str:
        return Timer.__qualname__

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not accumulating(trainer):
            super().on_train_batch_end(trainer, *args, **kwargs)


def _save_last(trainer: L.Trainer) -> str:
    """Save last.ckpt where the run saves it, and say so; a smoke run and ``checkpoint.save_last false`` save none
    (an earlier run's last.ckpt stays as it is)."""
    checkpoint = trainer.checkpoint_callback
    if trainer.fast_dev_run:
        return "a fast_dev_run saves nothing"
    if checkpoint is None:  # (the CLI always adds one)
        return "nothing saved (no checkpoint callback)"
    if not checkpoint.save_last:
        return "nothing saved (checkpoint.save_last is off)"
    path = Path(checkpoint.dirpath) / LAST_FILE
    trainer.save_checkpoint(path, weights_only=False)  # explicit: else Lightning logs a line about it
    return f"saved {path}; resume with --ckpt_path {path}"


def _validates_at_this_batch(trainer: L.Trainer) -> bool:
    """Whether the batch that just ended is one the run validates after (a step-counted val_check_interval);
    True where that cannot be told, so that Lightning validates as it would."""
    every = trainer.val_check_batch
    if trainer.check_val_every_n_epoch is not None or not isinstance(every, int):
        return True
    return (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0


class SampleTable(Callback):
    """After each validation, generate from the data module's prompts with the run's generation settings and log
    the text to wandb as a table, so runs can be compared by eye. (Lightning has no sample logger;
    WandbLogger.log_text makes the table.)"""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = first_wandb(trainer.loggers)
        if trainer.sanity_checking or not trainer.is_global_zero or logger is None:
            return
        # Not compiled: a few short samples would wait tens of seconds for it (and force_eager below would keep a
        # decoder uncompiled under the compiled one's name).
        config = replace(pl_module.generation, compile=False)
        was_training = pl_module.model.training
        pl_module.model.eval()
        # A model compiled for training (model.compile) would compile its forward again for every prefill shape
        # and cached step of the samples: tens of seconds per graph on a CPU, for a hundred characters.
        with torch.compiler.set_stance("force_eager"):
            completions = complete(pl_module.model, pl_module.tokenizer, trainer.datamodule.load_prompts(), config)
        pl_module.model.train(was_training)
        # The weights' steps: a validate's global_step is 0, whatever the checkpoint it loaded had.
        trained = trainer.global_step if trainer.state.fn == TrainerFn.FITTING else pl_module.checkpoint_step
        rows = [[trained, c.prompt, c.sample + 1, c.prompt + c.text] for c in completions]
        # At the step Lightning logs val_loss at (its count of steps before this one), so the two line up.
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        logger.log_text("samples", columns=["step", "prompt", "sample", "text"], data=rows, step=step)
