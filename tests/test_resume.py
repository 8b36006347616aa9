"""Exact resume after SIGKILL, checkpoints on Ctrl-C/SIGTERM, the same wandb run, atomic checkpoint writes."""

from __future__ import annotations

import csv
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helper import TINY, babygpt, babygpt_cmd, babygpt_env

pytestmark = pytest.mark.slow

N = 10  # steps before the kill; the runs go to 2N
RUN = [
    "fit",
    "--data.path=corpus.txt",
    f"--trainer.max_steps={2 * N}",
    f"--trainer.val_check_interval={N}",
    "--trainer.log_every_n_steps=1",
    "--model.dropout=0.1",  # dropout's randomness must repeat too
    "--model.lr_schedule=cosine",
    "--model.warmup_steps=3",
    *TINY[:6],
    "--trainer.enable_progress_bar=false",
]


def fit_args(max_steps: int) -> list[str]:
    """RUN, to ``max_steps``."""
    return [*RUN[:2], f"--trainer.max_steps={max_steps}", *RUN[3:]]


def csv_logger(folder: str) -> list[str]:
    return ["--trainer.logger=CSVLogger", f"--trainer.logger.init_args.save_dir={folder}"]


def train_losses(run: Path, folder: str, metric: str = "train_loss") -> dict[int, str]:
    """step -> ``metric`` as written (the exact decimal repr of the float) from every CSV log of a run."""
    losses: dict[int, str] = {}
    for path in sorted((run / folder).rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(metric):
                    losses[int(row["step"])] = row[metric]
    return losses


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


@pytest.fixture
def run_dir(tmp_path: Path, corpus_text: str):
    def make(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "corpus.txt").write_text(corpus_text, encoding="utf-8")
        return path

    return make


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_sigkill_is_exact(run_dir, optimizer: str) -> None:
    run = [*RUN, f"--model.optimizer={optimizer}"]  # Muon's momentum must come back too
    a = run_dir("a")
    babygpt(a, *run, *csv_logger("logs"))

    b = run_dir("b")
    killed = babygpt(
        b,
        *run,
        *csv_logger("logs1"),
        "--trainer.callbacks+=signals_helper.KillAfterStep",
        f"--trainer.callbacks.init_args.step={N}",
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    assert last(b)["global_step"] == N
    babygpt(b, *run, *csv_logger("logs2"), "--ckpt_path=checkpoints/last.ckpt")

    losses_a, losses_b = train_losses(a, "logs"), train_losses(b, "logs2")
    after = list(range(N, 2 * N))
    assert [losses_b.get(s) for s in after] == [losses_a[s] for s in after]
    ckpt_a, ckpt_b = last(a), last(b)
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 2 * N
    for key, tensor in ckpt_a["state_dict"].items():
        assert torch.equal(tensor, ckpt_b["state_dict"][key]), key
    val = [k for k in ckpt_a["callbacks"] if k.startswith("ModelCheckpoint")][0]
    assert torch.equal(ckpt_a["callbacks"][val]["best_model_score"], ckpt_b["callbacks"][val]["best_model_score"])


@pytest.mark.parametrize("stop_at", [N - 3, N])  # between validations, and at a step that validates
def test_resume_after_ctrl_c_is_exact(run_dir, stop_at: int) -> None:
    a = run_dir("a")
    babygpt(a, *RUN, *csv_logger("logs"))
    b = run_dir("b")
    stop = ["--trainer.callbacks+=signals_helper.SignalAtStep", f"--trainer.callbacks.init_args.step={stop_at}"]
    stopped = babygpt(b, *RUN, *csv_logger("logs1"), *stop, check=False)
    assert stopped.returncode == 128 + signal.SIGINT
    assert last(b)["global_step"] == stop_at
    # No validation on the way out, but the one due at this step.
    assert len(list((b / "checkpoints").glob("best-*"))) == (stop_at == N)
    babygpt(b, *RUN, *csv_logger("logs2"), "--ckpt_path=checkpoints/last.ckpt")
    losses_a, losses_b = train_losses(a, "logs"), train_losses(b, "logs2")
    after = list(range(stop_at, 2 * N))
    assert [losses_b.get(s) for s in after] == [losses_a[s] for s in after]  # the same steps: no lag
    val_a, val_b = train_losses(a, "logs", "val_loss"), train_losses(b, "logs1", "val_loss")
    val_b.update(train_losses(b, "logs2", "val_loss"))
    assert val_b == val_a  # every validation of the uninterrupted run, once
    for key, tensor in last(a)["state_dict"].items():
        assert torch.equal(tensor, last(b)["state_dict"][key]), key


def test_ctrl_c_inside_a_gradient_accumulation_saves_at_the_end_of_the_step(run_dir) -> None:
    """Saved in the middle of a step, the checkpoint would lack the gradient of the batches before: the resumed
    step would average fewer batches."""
    steps = ["--trainer.max_steps=6", "--trainer.val_check_interval=6"]
    run = [*RUN[:2], *steps, *RUN[4:], "--trainer.accumulate_grad_batches=2"]
    a = run_dir("a")
    babygpt(a, *run)
    b = run_dir("b")
    stop = ["--trainer.callbacks+=signals_helper.SignalAfterBatch", "--trainer.callbacks.init_args.batch=7"]
    stopped = babygpt(b, *run, *stop, check=False)
    assert stopped.returncode == 128 + signal.SIGINT
    assert last(b)["global_step"] == 4  # batch 7 is half of step 4: the save waited for batch 8
    babygpt(b, *run, "--ckpt_path=checkpoints/last.ckpt")
    for key, tensor in last(a)["state_dict"].items():
        assert torch.equal(tensor, last(b)["state_dict"][key]), key


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_resumable_checkpoint(run_dir, signum: int) -> None:
    run = run_dir("run")
    marker = run / "started"
    args = [
        *fit_args(100000),
        "--trainer.callbacks+=signals_helper.MarkStep",
        "--trainer.callbacks.init_args.step=3",
        f"--trainer.callbacks.init_args.path={marker}",
    ]
    proc = subprocess.Popen(
        babygpt_cmd(*args), cwd=run, env=babygpt_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err[-2000:]
    step = last(run)["global_step"]
    assert step >= 3
    assert f"stopped by a signal at step {step}" in err
    assert "weights_only" not in err  # Lightning's note on how it saved, noise before our line
    babygpt(run, *fit_args(step + 2), "--ckpt_path=checkpoints/last.ckpt")
    assert last(run)["global_step"] == step + 2


def test_resume_continues_the_same_wandb_run(run_dir) -> None:
    run = run_dir("run")
    babygpt(run, *fit_args(N))
    run_id = last(run)["wandb_run_id"]
    babygpt(run, *fit_args(N + 2), "--ckpt_path=checkpoints/last.ckpt")
    assert last(run)["wandb_run_id"] == run_id
    assert len(list((run / "outputs" / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    # The saved config is the settings as given: a new run started from it must not log into this wandb run.
    saved = yaml.safe_load((run / "outputs" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["ckpt_path"] == "checkpoints/last.ckpt"
    assert saved["trainer"]["logger"]["init_args"].get("id") is None
    # validate logs to a wandb run of its own, not at step 0 of the training run.
    babygpt(run, "validate", *RUN[1:2], *TINY[:6], "--ckpt_path=checkpoints/last.ckpt")
    runs = list((run / "outputs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3
    assert len([r for r in runs if r.name.endswith(run_id)]) == 2


def test_fit_offline_never_waits_for_the_network(run_dir) -> None:
    run = run_dir("run")
    start = time.monotonic()
    # A closed port on loopback: anything that tried to reach wandb's server would hang until its timeout.
    result = babygpt(
        run,
        *fit_args(3),
        WANDB_BASE_URL="http://127.0.0.1:9",
        WANDB_MODE=None,
        WANDB_SILENT=None,
    )
    assert time.monotonic() - start < 60
    assert "offline" in result.stderr  # wandb speaks (not silenced), and has nothing to warn of
    assert "WARNING" not in result.stderr


def test_wandb_mode_disabled_is_obeyed_and_default_root_dir_takes_the_run_config(run_dir) -> None:
    """Lightning's offline logger set WANDB_MODE=dryrun over the user's own setting, so it wrote a run anyway; and
    the default logger's own save_dir (outputs) overrode Lightning's default_root_dir: root/ stayed empty."""
    run = run_dir("run")
    args = [*fit_args(3), "--trainer.default_root_dir=root"]
    babygpt(run, *args, WANDB_MODE="disabled")
    assert not (run / "outputs").exists() and not (run / "root" / "wandb").exists()
    assert last(run)["global_step"] == 3
    saved = yaml.safe_load((run / "root" / "config.yaml").read_text(encoding="utf-8"))
    logger = saved["trainer"]["logger"]["init_args"]  # the settings as given, not this run's changes
    assert logger["mode"] is None and logger["save_dir"] == "outputs"
