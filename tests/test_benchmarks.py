"""The benchmark scripts run end to end at tiny sizes, write their JSON, and refuse bad options before running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helper import babygpt_env

ROOT = Path(__file__).resolve().parent.parent
TINY_GENERATE = ["--device=cpu", "--threads=1", "--vocab=64", "--block-size=32", "--n-embed=32", "--n-head=2"]
TINY_GENERATE += ["--n-layer=2", "--new-tokens=8", "--batch", "1", "2", "--prompt-len=8", "--rounds=1"]


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bench_generate_writes_every_figure(tmp_path: Path) -> None:
    result = bench("bench_generate.py", *TINY_GENERATE, f"--out={tmp_path / 'g.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "g.json").read_text())
    decode = ("decode_b1_tokens_per_s", "decode_b2_tokens_per_s", "decode_plain_b2_tokens_per_s")
    for key in ("prefill_b1_ms", *decode, "cache_speedup_b1"):
        assert figures[key] > 0, key
    assert figures["window_past_tokens"] > 0


def test_bench_train_writes_its_figures(tmp_path: Path) -> None:
    args = ["--config=configs/cpu.yaml", "--device=cpu", "--threads=1", "--steps=1", "--warmup=0", "--batch=2"]
    result = bench("bench_train.py", *args, "--vocab=64", f"--out={tmp_path / 't.json'}")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "t.json").read_text())
    assert figures["eager_tokens_per_s"] > 0 and figures["eager_s_per_step"] > 0
    assert figures["peak_flops_source"].startswith("measured") and figures["peak_flops"] > 1e8
    assert 0 < figures["eager_mfu"] < 1, "the step's rate against the matrix product's, measured on this CPU"
    mfu = figures["flops_per_token"] * figures["eager_tokens_per_s"] / figures["peak_flops"]
    assert figures["eager_mfu"] == pytest.approx(mfu)  # against the peak the output names, not another measurement


def test_profile_fit_reports_and_leaves_the_folders_of_real_runs_alone(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("a real run's")
    before = sorted(tmp_path.rglob("*"))
    tiny = ["--model.n_layer=1", "--model.n_embed=16", "--model.n_head=2", "--model.block_size=16"]
    args = [f"--data.path={corpus}", *tiny, "--data.batch_size=2", "--trainer.enable_progress_bar=false"]
    command = [sys.executable, str(ROOT / "benchmarks" / "profile_fit.py"), "--start=1", "--steps=1", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=babygpt_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ms/step over steps 1..1, unprofiled" in result.stdout
    assert sorted(tmp_path.rglob("*")) == before  # no checkpoint, wandb run or config.yaml here
    assert (tmp_path / "checkpoints" / "last.ckpt").read_text() == "a real run's"


@pytest.mark.parametrize(
    ("script", "args", "shown"),
    [
        ("bench_generate.py", ["--new-tokens=0"], "argument --new-tokens: must be >= 1, got 0"),
        ("bench_generate.py", ["--window-tokens=10"], "--window-tokens must pass the window"),
        ("bench_generate.py", ["--out=."], "--out . is a directory"),
        ("bench_train.py", ["--steps=-2"], "argument --steps: must be >= 1, got -2"),
        ("bench_train.py", ["--cpu-peak-gflops=0"], "--cpu-peak-gflops must be > 0, got 0"),
        ("bench_train.py", ["--config=nope.yaml"], "--config nope.yaml is not a file"),
        ("bench_train.py", [f"--config={ROOT / 'README.md'}"], "error: while scanning for the next token found"),
        ("bench_generate.py", ["--device=banana"], "--device banana: use cpu, cuda or cuda:N"),
        (
            "bench_generate.py",
            ["--n-embed=16", "--n-head=3", "--n-layer=1", "--vocab=32", "--block-size=16", "--prompt-len=8"],
            "error: GPTConfig.n_embed (16) must be divisible by n_head (3)",
        ),
        ("profile_fit.py", ["--steps=0"], "argument --steps: must be >= 1, got 0"),
    ],
)
def test_bad_options_are_refused_before_running(script: str, args: list[str], shown: str) -> None:
    result = bench(script, "--device=cpu", *args)
    assert result.returncode == 2
    assert shown in result.stderr.splitlines()[-1]
