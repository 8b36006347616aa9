"""Helpers shared by the benchmark scripts: device naming, timing, memory, output."""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from babygpt_pl.errors import UserError, one_line
from babygpt_pl.files import check_writable

RESULTS = Path(__file__).resolve().parent / "results"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (zero steps, tokens, rounds or threads measure nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse does not check option by option, before the run rather than after it: the device exists,
    and the output files can be written."""
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device {args.device}: use cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no CUDA GPU; pass --device cpu")
    for option in ("out", "profile"):
        if getattr(args, option) is not None:
            try:
                check_writable(getattr(args, option), f"--{option}", "result.json")
            except UserError as err:
                parser.error(str(err))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str) -> str:
    """A human name for the device: the GPU's model, or the CPU's model and thread count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "device"


def default_out(kind: str, device: str) -> Path:
    name = "cpu" if device == "cpu" else slug(device_name(device))
    return RESULTS / f"{kind}-{name}.json"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_profiler(device: str) -> profile:
    """torch.profiler over the CPU's ops, and the GPU's kernels on a GPU."""
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else []))


def report(text: str, path: Path | None) -> None:
    """Print ``text``, and append it to ``path`` when one is given."""
    print(text, flush=True)
    if path is not None:
        with path.open("a") as f:
            f.write(text + "\n")


def timed(fn: Callable[[], Any], device: str, rounds: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``rounds`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float:
    """Peak allocated GPU memory since the last reset, or the process's peak RSS on CPU (never reset)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def environment(device: str) -> dict[str, Any]:
    env = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.startswith("cuda"):
        env["cuda"] = torch.version.cuda
    return env


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """Two columns, figure and value; floats get a sensible number of digits."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    width = max(len(name) for name, _ in rows)
    print(f"\n{title}\n{'-' * len(title)}")
    for name, value in rows:
        print(f"{name:<{width}}  {fmt(value)}")


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's main: a bad setting it finds only later (a model shape the model refuses, a config file
    that is no YAML) is one ``error:`` line and exit code 2, as for the product's own commands."""
    try:
        main()
    except (UserError, yaml.YAMLError) as err:
        print("error:", one_line(err), file=sys.stderr)
        sys.exit(2)
