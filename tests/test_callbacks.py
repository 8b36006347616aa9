"""The callbacks: the printed and JSONL predictions, and the wandb table of samples at each validation."""

from __future__ import annotations

import csv
import json
import logging
import signal
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from babygpt_pl import callbacks
from babygpt_pl.callbacks import (
    GracefulStop,
    PredictionPrinter,
    ProgressBar,
    SampleTable,
    StepLearningRateMonitor,
    StepTimer,
    TokenThroughput,
    batch_size,
    batch_tokens,
)
from babygpt_pl.generation import GenerationConfig
from babygpt_pl.module import BabyGPTModule

VOCAB = "\n 。春江花月夜往事知多少"


@pytest.fixture
def module() -> BabyGPTModule:
    torch.manual_seed(0)
    return BabyGPTModule(vocab=VOCAB, block_size=16, n_embed=16, n_head=2, n_layer=1, dropout=0.0)


def fit_nine_steps(module: BabyGPTModule, tmp_path: Path, *callbacks: L.Callback, **trainer_kwargs) -> L.Trainer:
    """Nine training steps of random tokens, logged every 3rd step (to CSV), with ``callbacks`` (a progress bar only
    if one is)."""
    x = torch.randint(len(VOCAB), (64, 16))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x), batch_size=4)
    trainer = L.Trainer(
        max_steps=9,
        log_every_n_steps=3,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=any(isinstance(callback, ProgressBar) for callback in callbacks),
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, loader, loader)
    return trainer


def test_throughput_counts_tokens_of_training_batches_and_prompts_of_predict_batches() -> None:
    x = torch.zeros(4, 16, dtype=torch.long)
    assert (batch_size((x, x)), batch_tokens((x, x))) == (4, 64)
    assert (batch_size(["春江", "往事知"]), batch_tokens(["春江", "往事知"])) == (2, 5)


def test_throughput_reads_the_clock_only_on_logged_steps_and_still_counts_every_batch(
    module, tmp_path: Path, monkeypatch
) -> None:
    updates = []
    original = Throughput.update

    def spy(self, **kwargs):
        updates.append((self, kwargs["batches"], kwargs["flops"]))  # where the library would synchronise a GPU
        return original(self, **kwargs)

    monkeypatch.setattr(Throughput, "update", spy)
    module.flops_per_batch = 1000
    monitor = TokenThroughput(window_size=2)
    trainer = fit_nine_steps(module, tmp_path, monitor, val_check_interval=4, limit_val_batches=1)
    training = monitor._throughputs[RunningStage.TRAINING]
    # Logged steps 3, 6 and 9, and before the validations after steps 4 and 8; FLOPs of every batch in between.
    assert [(b, f) for t, b, f in updates if t is training] == [(3, 3000), (4, 1000), (6, 2000), (8, 2000), (9, 1000)]
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in metrics[1:]]
    logged = [(float(r["train/samples"]), float(r["train/lengths"])) for r in rows if r.get("train/samples")]
    assert logged == [(12, 12 * 16), (24, 24 * 16), (36, 36 * 16)]  # every batch counted: 4 windows of 16 tokens
    rates = [r for r in rows if r.get("train/device/flops_per_sec")]
    assert rates and all(
        float(r["train/device/flops_per_sec"]) == pytest.approx(1000 * float(r["train/device/batches_per_sec"]))
        for r in rates
    )


def test_throughput_and_learning_rate_are_logged_once_per_accumulated_step(module, tmp_path: Path, monkeypatch):
    """Both libraries' callbacks act on every batch of a logged step: with gradient accumulation, the learning rate
    was logged twice, and the throughput updated at the step's first batch (its average over fewer steps)."""
    updates = []
    original = Throughput.update
    monkeypatch.setattr(Throughput, "update", lambda self, **kw: updates.append(kw["batches"]) or original(self, **kw))
    monitor = StepLearningRateMonitor(logging_interval="step")
    trainer = fit_nine_steps(
        module, tmp_path, monitor, TokenThroughput(), accumulate_grad_batches=2, limit_val_batches=0
    )
    assert updates == [6, 12, 18]  # the batches so far, at the end of steps 3, 6 and 9
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        logged = [row["step"] for row in csv.DictReader(f) if row["lr-AdamW/pg1"]]
    assert logged == ["2", "5", "8"]  # Lightning's step of the logs of steps 3, 6 and 9: once each


def test_progress_bar_reads_the_training_metrics_only_on_logged_steps(module, tmp_path: Path, monkeypatch) -> None:
    """Reading them syncs a GPU (the loss becomes a float): every 3rd step here, not every step, and at the first
    (else the sanity check's val_loss stayed on show, as if the run had validated); validation's metrics still."""
    reads = []
    original = ProgressBar.get_metrics

    def spy(self, trainer, pl_module):
        reads.append((trainer.training, trainer.global_step))
        return original(self, trainer, pl_module)

    monkeypatch.setattr(ProgressBar, "get_metrics", spy)
    fit_nine_steps(module, tmp_path, ProgressBar(), val_check_interval=9, limit_val_batches=2)
    assert [step for training, step in reads if training] == [1, 3, 6, 9]
    assert any(not training for training, _ in reads)


def test_the_progress_bar_names_the_last_step_not_an_epoch() -> None:
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_steps=5000)
    assert bar._get_train_description(current_epoch=0) == "Training to step 5000"


def test_the_progress_bar_counts_every_batch_of_an_accumulated_step() -> None:
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_steps=20, accumulate_grad_batches=4, num_training_batches=float("inf"))
    assert bar.total_train_batches == 80  # the bar advances per batch: 20 would overrun at 80/20


class RecordedBar(ProgressBar):
    """Records the training bar's (completed, total) as training ends."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        task = self.progress.tasks[self.train_progress_bar_id]
        self.shown = (task.completed, task.total)
        super().on_train_end(trainer, pl_module)


class Endless(torch.utils.data.IterableDataset):
    """As babygpt's training data: one epoch without end."""

    def __iter__(self):
        while True:
            x = torch.randint(len(VOCAB), (4, 16))
            yield x, x


def test_the_progress_bar_counts_to_max_steps_also_after_a_resume(module, tmp_path: Path) -> None:
    """The bar counts the epoch's batches from 0, also in a resumed run, whose total was the steps left (9/3)."""

    loader = torch.utils.data.DataLoader(Endless(), batch_size=None)

    def fit(max_steps: int, ckpt_path: Path | None = None) -> L.Trainer:
        bar = RecordedBar()
        trainer = L.Trainer(
            max_steps=max_steps,
            callbacks=[bar],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, loader, ckpt_path=ckpt_path)
        return bar

    fit(6)
    module.trainer.save_checkpoint(tmp_path / "six.ckpt")
    assert fit(9, tmp_path / "six.ckpt").shown == (9, 9)


def test_a_short_run_logs_tokens_per_second(module, tmp_path: Path) -> None:
    """By its 20th step, logging every 10th (the library's monitor waits for 100 updates before its first value)."""
    x = torch.randint(len(VOCAB), (80, 16))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x), batch_size=4)
    trainer = L.Trainer(
        max_steps=20,
        log_every_n_steps=10,
        callbacks=[TokenThroughput()],
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    rows = list(csv.DictReader((Path(trainer.log_dir) / "metrics.csv").open()))
    assert [float(r["train/device/items_per_sec"]) > 0 for r in rows if r.get("train/device/items_per_sec")] == [True]


def test_validation_throughput_is_logged_once_per_validation_at_its_step_with_forward_flops(module, tmp_path) -> None:
    """The library logged validation batches at the count of validation batches so far (as steps, which wandb
    drops as going back) and counted a training batch's forward-and-backward FLOPs for each. (At first this logged
    at global_step, one after val_loss's step.)"""
    module.flops_per_batch = 6000.0  # a training batch's forward and backward
    callback = TokenThroughput(window_size=2)
    trainer = fit_nine_steps(module, tmp_path, callback, val_check_interval=3, limit_val_batches=3)
    rows = list(csv.DictReader((Path(trainer.log_dir) / "metrics.csv").open()))

    def flops_per_token(row: dict, stage: str) -> float:  # both over the same window of updates
        return float(row[f"{stage}/device/flops_per_sec"]) / float(row[f"{stage}/device/items_per_sec"])

    val = [r for r in rows if r.get("validate/device/flops_per_sec")]
    # At val_loss's steps (Lightning's count of steps before the validation): one point per validation in a chart.
    assert [int(r["step"]) for r in val] == [int(r["step"]) for r in rows if r.get("val_loss")] == [2, 5, 8]
    assert flops_per_token(val[0], "validate") == pytest.approx(6000 / 3 / 64)
    train = [r for r in rows if r.get("train/device/flops_per_sec")]
    assert flops_per_token(train[-1], "train") == pytest.approx(6000 / 64)


class SlowAfterValidation(TokenThroughput):
    """As in a fit, where the samples table and the checkpoint save run after the validation batches."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        time.sleep(0.5)


def test_training_time_leaves_out_what_follows_a_validation(module, tmp_path: Path) -> None:
    trainer = fit_nine_steps(module, tmp_path, SlowAfterValidation(window_size=2), val_check_interval=3)
    rows = [r for r in csv.DictReader((Path(trainer.log_dir) / "metrics.csv").open()) if r.get("train/time")]
    assert float(rows[-1]["train/time"]) < 0.5  # nine tiny steps; two validations came before the last of them


def test_training_time_saved_after_a_validation_leaves_it_out_and_a_second_fit_starts_afresh(module, tmp_path) -> None:
    callback = TokenThroughput(window_size=2)
    stage = RunningStage.TRAINING
    callback._t0s[stage], callback._paused_at = 10.0, 12.5  # a checkpoint saved after a validation
    callback._batches[stage] = callback._samples[stage] = callback._lengths[stage] = 0
    assert callback.state_dict()["time"] == 2.5
    for _ in range(2):  # the same callback fitted again (the Python API): the first fit ended in a validation
        trainer = fit_nine_steps(module, tmp_path, callback, val_check_interval=9)
        rows = [r for r in csv.DictReader((Path(trainer.log_dir) / "metrics.csv").open()) if r.get("train/time")]
        assert all(float(r["train/time"]) > 0 for r in rows)


def test_throughput_totals_go_on_after_a_resume(module, tmp_path: Path) -> None:
    """train/samples and train/time continue from the checkpoint's totals, not from 0 (wandb curves would jump)."""

    def fit(max_steps: int, name: str, ckpt_path: Path | None = None) -> list[dict]:
        trainer = L.Trainer(
            max_steps=max_steps,
            log_every_n_steps=3,
            callbacks=[TokenThroughput(window_size=2)],
            logger=CSVLogger(tmp_path, name=name),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, torch.utils.data.DataLoader(Endless(), batch_size=None), ckpt_path=ckpt_path)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        rows = csv.DictReader((Path(trainer.log_dir) / "metrics.csv").open())
        return [r for r in rows if r.get("train/samples")]

    first = fit(6, "first")
    resumed = fit(9, "resumed", tmp_path / "first.ckpt")
    assert [float(r["train/samples"]) for r in first] == [12, 24]
    assert [(float(r["train/samples"]), float(r["train/lengths"])) for r in resumed] == [(36, 36 * 16)]
    assert float(resumed[0]["train/time"]) > float(first[-1]["train/time"])


def stopping_trainer(tmp_path: Path, saved: list, save_last: bool = True, **attributes) -> SimpleNamespace:
    """What GracefulStop reads of a one-rank trainer at batch 10, where it does not validate; saves go to ``saved``."""
    progress = SimpleNamespace(current=SimpleNamespace(ready=10))
    defaults = dict(
        world_size=1,
        checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path), save_last=save_last),
        save_checkpoint=lambda path, **kwargs: saved.append(path),
        fast_dev_run=0,
        should_stop=False,
        check_val_every_n_epoch=None,
        val_check_batch=50,
        accumulate_grad_batches=1,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(total_batch_idx=9, batch_progress=progress)),
        limit_val_batches=1.0,
    )
    return SimpleNamespace(**(defaults | attributes))


def test_graceful_stop_agrees_across_ranks_only_every_log_every_n_steps(tmp_path: Path) -> None:
    """With several ranks, agreeing to stop is a collective and a host sync: at steps 5 and 10 here, not each step."""
    reduced, saved = [], []
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all: reduced.append(decision) or decision)
    trainer = stopping_trainer(tmp_path, saved, world_size=2, log_every_n_steps=5, strategy=strategy)
    stop = GracefulStop()
    for step in range(1, 13):
        trainer.global_step = step
        if step == 6:
            stop.received = signal.SIGTERM
        stop.on_train_batch_end(trainer, None)
        if trainer.should_stop:
            break
    assert reduced == [False, True]
    assert trainer.global_step == 10 and saved == [tmp_path / "last.ckpt"]
    assert trainer.limit_val_batches == 0  # no validation on the way out


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"fast_dev_run": 3}, "a fast_dev_run saves nothing"),
        ({"save_last": False}, "nothing saved (checkpoint.save_last is off)"),
        ({"checkpoint_callback": None}, "nothing saved (no checkpoint callback)"),  # (the CLI always adds one)
    ],
)
def test_a_stop_saves_no_last_checkpoint_where_the_run_saves_none(
    tmp_path: Path, settings: dict, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It replaced an earlier run's last.ckpt: a smoke run's, or one told to save no last.ckpt."""
    saved = []
    trainer = stopping_trainer(tmp_path, saved, global_step=2, **settings)
    stop = GracefulStop()
    stop.received = signal.SIGTERM
    with caplog.at_level(logging.INFO):
        stop.on_train_batch_end(trainer, None)
    assert trainer.should_stop and saved == []
    assert f"stopped by a signal at step 2: {said}" in caplog.text


def test_a_time_limit_stops_at_the_end_of_an_optimizer_step(module, tmp_path: Path) -> None:
    """Lightning's Timer stopped after the first batch of four accumulated ones: its checkpoint lost them."""
    timer = StepTimer(duration=timedelta(microseconds=1), interval="step")  # over at the first batch's end
    trainer = fit_nine_steps(module, tmp_path, timer, accumulate_grad_batches=4, limit_val_batches=0)
    assert (trainer.global_step, trainer.fit_loop.epoch_loop.batch_progress.total.completed) == (1, 4)
    assert timer.state_key == "Timer"  # checkpoints of either resume with either


def test_a_second_ctrl_c_interrupts_at_once_and_the_handlers_are_restored_after() -> None:
    before = signal.getsignal(signal.SIGINT)
    stop = GracefulStop()
    stop.on_train_start(None, None)
    try:
        signal.raise_signal(signal.SIGINT)  # the first: noted, training goes on to the step's end
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second: no waiting
    finally:
        stop.on_train_end(None, None)
    assert signal.getsignal(signal.SIGINT) is before


def test_predictions_are_printed_and_written_as_json_lines(module, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "samples.jsonl"
    module.generation = GenerationConfig(max_new_tokens=6, temperature=0, num_samples=2, output=str(out))
    printer = PredictionPrinter()
    trainer = SimpleNamespace(is_global_zero=True)
    printer.on_predict_start(trainer, module)
    prediction = module.predict_step(["春江", "往事"], 0)
    printer.write_on_batch_end(trainer, module, prediction, None, ["春江", "往事"], 0, 0)
    printer.on_predict_end(trainer, module)

    printed = capsys.readouterr().out
    assert printed.count("--- 春江") == 2 and "(sample 2)" in printed
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["prompt"], r["sample"], r["tokens"]) for r in rows] == [
        ("春江", 0, 6),
        ("春江", 1, 6),
        ("往事", 0, 6),
        ("往事", 1, 6),
    ]
    assert all(len(r["text"]) == 6 and r["tokens_per_s"] > 0 for r in rows)
    assert [p.name for p in out.parent.iterdir()] == ["samples.jsonl"]  # no temp file left behind


def sample_table_trainer(tmp_path: Path, monkeypatch, logged: list) -> SimpleNamespace:
    """Just what SampleTable reads of a trainer after step 40, with a CSV logger and then a wandb logger whose tables
    land in ``logged``."""
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    monkeypatch.setattr(logger, "log_text", lambda key, columns, data, step: logged.append((key, columns, data, step)))
    datamodule = SimpleNamespace(load_prompts=lambda: ["春江", "往事"])
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=39))  # Lightning's step for val_loss
    return SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        loggers=[CSVLogger(tmp_path), logger],
        datamodule=datamodule,
        global_step=40,
        fit_loop=loop,
        state=SimpleNamespace(fn=TrainerFn.FITTING),
    )


def test_sample_table_logs_each_prompt_after_validation(module, tmp_path: Path, monkeypatch) -> None:
    logged = []
    trainer = sample_table_trainer(tmp_path, monkeypatch, logged)
    module.train()
    module.generation = GenerationConfig(max_new_tokens=5, num_samples=2)  # the run's --generation settings
    SampleTable().on_validation_end(trainer, module)

    [(key, columns, rows, step)] = logged
    assert (key, columns, step) == ("samples", ["step", "prompt", "sample", "text"], 39)  # val_loss's step
    assert [tuple(r[:3]) for r in rows] == [(40, "春江", 1), (40, "春江", 2), (40, "往事", 1), (40, "往事", 2)]
    assert all(r[3].startswith(r[1]) and len(r[3]) == len(r[1]) + 5 for r in rows)
    assert module.model.training  # generation ran in eval mode and left the model as it found it

    trainer.sanity_checking = True
    SampleTable().on_validation_end(trainer, module)
    assert len(logged) == 1  # nothing during the sanity check


def test_samples_outside_a_fit_carry_the_checkpoint_step(module, tmp_path: Path, monkeypatch) -> None:
    """Outside a fit global_step is 0: the table said a trained model's samples were an untrained one's."""
    logged = []
    trainer = sample_table_trainer(tmp_path, monkeypatch, logged)
    trainer.global_step, trainer.state.fn = 0, TrainerFn.VALIDATING
    module.on_load_checkpoint({"global_step": 30})
    module.generation = GenerationConfig(max_new_tokens=2)
    SampleTable().on_validation_end(trainer, module)
    assert [row[0] for row in logged[0][2]] == [30, 30]


def test_sample_table_does_not_compile_a_model_compiled_for_training(module, tmp_path: Path, monkeypatch) -> None:
    """model.compile in fit is for the training step: the samples' prefills and cached steps would each be a new
    graph to compile (tens of seconds apiece on a CPU); they run eagerly instead."""
    torch._dynamo.reset()
    module.model.compile(backend="eager")  # dynamo still traces every new graph; nothing is code-generated
    x = torch.randint(len(VOCAB), (4, 16))
    module.model(x, x)
    traced = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert traced >= 1  # the training forward went through dynamo
    # predict's compiled decoder is not for a few samples either
    module.generation = GenerationConfig(max_new_tokens=5, compile=True)
    configs = []
    original = callbacks.complete
    monkeypatch.setattr(callbacks, "complete", lambda *args: configs.append(args[3]) or original(*args))
    logged = []
    SampleTable().on_validation_end(sample_table_trainer(tmp_path, monkeypatch, logged), module)
    assert len(logged) == 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == traced
    assert [c.compile for c in configs] == [False]
