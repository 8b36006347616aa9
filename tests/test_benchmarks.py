"""The benchmark scripts run end to end at tiny sizes, write their JSON, and refuse bad options before running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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
    # On a CPU only the process's peak: a part's would hold every earlier part's (it cannot be reset).
    assert figures["peak_mib"] > 0 and not [key for key in figures if key.endswith("_peak_mib")]


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
    # On a CPU only the process's peak: a part's would hold every earlier part's (it cannot be reset).
    assert figures["peak_mib"] > 0 and not [key for key in figures if key.endswith("_peak_mib")]


def test_profile_fit_reports_and_leaves_the_folders_of_real_runs_alone(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("a real run's")
    before = sorted(tmp_path.rglob("*"))
    tiny = ["--model.n_layer=1", "--model.n_embed=16", "--model.n_head=2", "--model.block_size=16"]
    args = [f"--data.path={corpus}", *tiny, "--data.batch_size=2", "--trainer.enable_progress_bar=false"]
    args += ["--trainer.accumulate_grad_batches=2", "--trainer.val_check_interval=10"]  # timed per step, not batch
    command = [sys.executable, str(ROOT / "benchmarks" / "profile_fit.py"), "--start=1", "--steps=1", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=babygpt_env())
    assert result.returncode == 0, result.stderr[-2000:]
    [wall] = [line for line in result.stdout.splitlines() if line.startswith("wall:")]  # one, not one per batch
    assert "ms/step over steps 1..1, unprofiled" in wall
    assert sorted(tmp_path.rglob("*")) == before  # no checkpoint, wandb run or config.yaml here
    assert (tmp_path / "checkpoints" / "last.ckpt").read_text() == "a real run's"


@pytest.mark.parametrize(
    ("script", "args", "shown"),
    [
        ("bench_generate.py", ["--new-tokens=0"], "argument --new-tokens: must be >= 1, got 0"),
        ("bench_generate.py", ["--window-tokens=10"], "--window-tokens must pass the window"),
        ("bench_generate.py", ["--out=."], "--out . is a directory"),
        ("bench_train.py", ["--steps=-2"], "argument --steps: must be >= 1, got -2"),
        ("bench_train.py", ["--cpu-peak-gflops=0"], "--cpu-peak-gflops must be > 0 and finite, got 0"),
        ("bench_train.py", ["--cpu-peak-gflops=inf"], "--cpu-peak-gflops must be > 0 and finite, got inf"),
        ("bench_train.py", ["--config=nope.yaml"], "--config nope.yaml is not a file"),
        ("bench_train.py", [f"--config={ROOT / 'README.md'}"], "error: while scanning for the next token found"),
        ("bench_generate.py", ["--device=banana"], "--device banana: use cpu, cuda or cuda:N"),
        (
            "bench_generate.py",
            ["--n-embed=16", "--n-head=3", "--n-layer=1", "--vocab=32", "--block-size=16", "--prompt-len=8"],
            "error: GPTConfig.n_embed (16) must be divisible by n_head (3)",
        ),
        ("profile_fit.py", ["--steps=0"], "argument --steps: must be >= 1, got 0"),
        ("bench_train.py", ["--threads=100000"], "--threads 100000: this machine has"),
    ],
)
def test_bad_options_are_refused_before_running(tmp_path: Path, script: str, args: list[str], shown: str) -> None:
    out = [] if any(a.startswith("--out") for a in args) else [f"--out={tmp_path / 'o'}"]  # (a run let through)
    result = bench(script, "--device=cpu", *args, *out)
    assert result.returncode == 2
    assert shown in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("script", "inputs"),
    [
        ("bench_train.py", ["--out", "--config"]),
        ("bench_train.py", ["--out", "--profile"]),
        ("profile_fit.py", ["--out", "--config"]),
    ],
)
def test_an_output_that_is_an_input_or_another_output_is_refused(tmp_path: Path, script: str, inputs: list) -> None:
    """The run wrote its JSON over its config (or its profile), or appended its report to the config."""
    config = tmp_path / "c.yaml"
    config.write_text("model: {n_layer: 1}\n")
    first, second = inputs
    result = bench(script, "--device=cpu", f"{first}={config}", f"{second}={config}")
    assert result.returncode == 2
    assert f"error: {first} {config} is also {second}, which the run would overwrite" in result.stderr
    assert config.read_text() == "model: {n_layer: 1}\n"


def test_two_outputs_are_one_file_also_before_either_is_there(tmp_path: Path, monkeypatch) -> None:
    result = bench("bench_generate.py", "--device=cpu", f"--out={tmp_path / 'x'}", f"--profile={tmp_path / 'x'}")
    assert result.returncode == 2 and f"--out {tmp_path / 'x'} is also --profile" in result.stderr
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import benchutil

    assert not benchutil._one_file("/dev/null", "/dev/null")  # a device takes any number of writes


def test_a_training_benchmark_that_measured_nothing_fails_and_writes_nothing(tmp_path: Path) -> None:
    """It exited 0 with a JSON of errors: over the figures of an earlier run, where --out was left out."""
    out = tmp_path / "t.json"
    result = bench("bench_train.py", "--device=cpu", "--batch=100000000000", "--vocab=64", f"--out={out}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: every mode failed (see their errors above)")
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        ("- a\n", "holds no model: and data: settings"),
        ("model: 5\n", "holds no model: and data: settings"),
        ("data: {batch_size: 0}\n", "data.batch_size must be a positive integer, got 0"),
        ("data: {batch_size: abc}\n", "data.batch_size must be a positive integer, got 'abc'"),
    ],
)
def test_a_config_that_is_no_babygpt_config_is_one_line(tmp_path: Path, content: str, shown: str) -> None:
    """They ended in tracebacks, or (a batch of 0) in a JSON of errors and exit code 0."""
    (tmp_path / "c.yaml").write_text(content)
    result = bench("bench_train.py", "--device=cpu", f"--config={tmp_path / 'c.yaml'}", f"--out={tmp_path / 'o.json'}")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: --config {tmp_path / 'c.yaml'}") and shown in line


def test_a_report_file_holds_the_reports_of_this_run_alone(tmp_path: Path, monkeypatch) -> None:
    """--profile FILE grew by a run's tables at every run."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import benchutil

    monkeypatch.setattr(benchutil, "_REPORTED", set())  # a new run
    path = tmp_path / "profile.txt"
    path.write_text("an earlier run's table\n")
    benchutil.report("one", path)
    benchutil.report("two", path)
    assert path.read_text() == "one\ntwo\n"


@pytest.mark.parametrize(
    ("raised", "code", "said"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 TB"),
            2,
            "error: out of memory",
        ),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"), 2, "error: out of memory"),
        (MemoryError(), 2, "error: out of memory"),
    ],
)
def test_a_benchmark_stopped_or_out_of_memory_is_one_line(monkeypatch, capsys, raised, code, said) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import benchutil

    def main() -> None:
        raise raised

    with pytest.raises(SystemExit) as info:
        benchutil.run_main(main)
    assert info.value.code == code
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(said)
