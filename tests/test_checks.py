"""The refusals and warnings of a run's settings (babygpt_pl/checks.py); through the CLI: test_failures.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from babygpt_pl.checks import check_accelerator, warn_of_a_short_run, warn_of_unfinished_writes
from babygpt_pl.errors import UserError


@pytest.mark.parametrize(("accumulate", "warned"), [(1, True), (4, False)])
def test_the_short_run_warning_counts_validation_in_batches(capsys, accumulate: int, warned: bool) -> None:
    """val_check_interval counts batches, max_steps optimizer steps: 3 steps of 4 batches do reach batch 10."""
    trainer = SimpleNamespace(val_check_interval=10, max_steps=3, accumulate_grad_batches=accumulate)
    trainer.limit_val_batches = None
    warn_of_a_short_run(trainer, warmup_steps=0)
    assert ("will not validate" in capsys.readouterr().err) is warned


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
