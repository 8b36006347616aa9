"""The refusals and warnings of a run's settings (babygpt_pl/checks.py); through the CLI: test_failures.py."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from jsonargparse import Namespace

from babygpt_pl.checks import (
    check_accelerator,
    unused_model_settings,
    warn_of_a_short_run,
    warn_of_unfinished_writes,
    warn_of_unused_model_settings,
)
from babygpt_pl.errors import UserError
from babygpt_pl.module import BabyGPTModule


@pytest.mark.parametrize(("accumulate", "warned"), [(1, True), (4, False)])
def test_the_short_run_warning_counts_validation_in_batches(capsys, accumulate: int, warned: bool) -> None:
    """val_check_interval counts batches, max_steps optimizer steps: 3 steps of 4 batches do reach batch 10."""
    trainer = SimpleNamespace(val_check_interval=10, max_steps=3, accumulate_grad_batches=accumulate)
    trainer.limit_val_batches = None
    warn_of_a_short_run(trainer, warmup_steps=0, saves_last=True)
    assert ("will not validate" in capsys.readouterr().err) is warned


@pytest.mark.parametrize(
    ("saves_last", "said"),
    [(True, "last.ckpt is still saved at the end"), (False, "with checkpoint.save_last off, nothing saved")],
)
def test_the_short_run_warning_says_what_is_saved(capsys, saves_last: bool, said: str) -> None:
    """It promised a last.ckpt to a run with save_last off, which saves none: all its steps were lost."""
    trainer = SimpleNamespace(val_check_interval=10, max_steps=3, accumulate_grad_batches=1, limit_val_batches=None)
    warn_of_a_short_run(trainer, warmup_steps=0, saves_last=saves_last)
    assert f"(no val loss, no best checkpoint; {said})" in capsys.readouterr().err


def test_fp16_mixed_precision_is_refused_on_a_cpu_not_on_a_mac_gpu(monkeypatch) -> None:
    trainer = SimpleNamespace(accelerator="auto", precision="16-mixed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="does not run on a CPU"):
        check_accelerator(trainer)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # auto picks MPS, where fp16 AMP runs
    check_accelerator(trainer)


def test_unfinished_checkpoint_writes_are_warned_of(tmp_path, capsys) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"whole")
    warn_of_unfinished_writes(str(tmp_path))
    assert capsys.readouterr().err == ""
    (tmp_path / ".last.ckpt.ab12cd.tmp").write_bytes(bytes(2**20))  # a save killed halfway
    (tmp_path / ".samples.jsonl.ef34gh.tmp").write_bytes(b"x")  # not a checkpoint's
    warn_of_unfinished_writes(str(tmp_path))
    assert capsys.readouterr().err == (
        f"warning: {tmp_path} holds 1 unfinished checkpoint write(s) of a killed run (.last.ckpt.ab12cd.tmp; 1 MiB): "
        "delete them unless a run is saving there now\n"
    )


@pytest.mark.parametrize(
    ("settings", "unused"),
    [
        ({}, {"min_lr", "muon_lr"}),
        ({"lr_schedule": "cosine"}, {"muon_lr"}),
        ({"optimizer": "muon"}, {"min_lr"}),
        ({"optimizer": "muon", "tie_weights": True}, {"min_lr", "weight_decay"}),
        ({"optimizer": "muon", "tie_weights": False, "lr_schedule": "cosine"}, set()),
    ],
)
def test_a_rate_or_decay_set_that_the_run_does_not_use_is_warned(capsys, settings, unused) -> None:
    model = Namespace(lr_schedule="constant", optimizer="adamw", tie_weights=False, min_lr=1e-4, muon_lr=0.01)
    model.update(Namespace(weight_decay=0.1, **settings))
    warn_of_unused_model_settings(model, given=lambda key: True)
    warned = {line.split()[1].removeprefix("model.") for line in capsys.readouterr().err.splitlines()}
    assert warned == unused
    warn_of_unused_model_settings(model, given=lambda key: False)  # left out: nothing to say
    assert capsys.readouterr().err == ""
    model.update(Namespace(min_lr=0.0, muon_lr=0.02, weight_decay=0.01))  # a full config's defaults: no one's choice
    warn_of_unused_model_settings(model, given=lambda key: True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["base.yaml", "best.yaml", "cpu.yaml"])
def test_the_shipped_configs_set_no_rate_or_decay_they_leave_unused(name: str) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / name
    model = yaml.safe_load(config.read_text(encoding="utf-8"))["model"]
    defaults = {k: p.default for k, p in inspect.signature(BabyGPTModule).parameters.items()}
    assert not set(unused_model_settings(Namespace({**defaults, **model}))) & set(model)


@pytest.mark.parametrize(
    ("max_steps", "limit_val_batches", "warmup_steps"),
    [(10, None, 0), (3, 0, 0), (10, None, 10)],  # validates at its last step; validation off; warm-up just ends
)
def test_no_short_run_warning_at_the_edges(capsys, max_steps: int, limit_val_batches, warmup_steps: int) -> None:
    trainer = SimpleNamespace(val_check_interval=10, max_steps=max_steps, accumulate_grad_batches=1)
    trainer.limit_val_batches = limit_val_batches
    warn_of_a_short_run(trainer, warmup_steps=warmup_steps, saves_last=True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("precision", ["16", "16-mixed"])
def test_fp16_is_refused_on_a_cpu_in_both_spellings(precision: str) -> None:
    with pytest.raises(UserError, match=f"trainer.precision {precision} .* does not run on a CPU"):
        check_accelerator(SimpleNamespace(accelerator="cpu", precision=precision))
