"""Helpers shared by the benchmark scripts: device naming, timing, memory, output."""

from __future__ import annotations

import argparse
import json
import os
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

from babygpt_pl.errors import UserError, exit_on_signal, one_line
from babygpt_pl.files import check_writable, in_place, same_file

RESULTS = Path(__file__).resolve().parent / "results"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (zero steps, tokens, rounds or threads measure nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse does not check option by option, before the run rather than after it: the device exists,
    the threads do, and the output files can be written without replacing an input or each other."""
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device {args.device}: use cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no CUDA GPU; pass --device cpu")
    if getattr(args, "threads", None) and args.threads > (os.cpu_count() or 1):  # (100,000 crashed torch)
        parser.error(f"--threads {args.threads}: this machine has {os.cpu_count()} CPU threads; pass at most that")
    check_outputs(parser, {"--out": args.out, "--profile": args.profile}, {"--config": getattr(args, "config", None)})


def check_outputs(parser: argparse.ArgumentParser, outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Each output file (option: path or None) can be written, and is none of the inputs nor another output."""
    given = {option: path for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        try:
            check_writable(path, option, "result.json")
        except UserError as err:
            parser.error(str(err))
        others = {**inputs, **{o: p for o, p in given.items() if o != option}}
        if clash := next((o for o, p in others.items() if p is not None and _one_file(path, p)), None):
            parser.error(f"{option} {path} is also {clash}, which the run would overwrite: give another file")


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


def _one_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths are one file: by name for a file yet to be written, also through a link for one there
    (a device such as /dev/null takes any number of writes)."""
    if in_place(Path(a)):
        return False
    return os.path.abspath(a) == os.path.abspath(b) or same_file(str(a), str(b))


_REPORTED: set[Path] = set()  # the report files this run has written: emptied at the first report, then added to


def report(text: str, path: Path | None) -> None:
    """Print ``text``, and add it to ``path`` when one is given: the file holds this run's reports alone."""
    print(text, flush=True)
    if path is not None:
        with path.open("a" if path in _REPORTED else "w") as f:
            f.write(text + "\n")
        _REPORTED.add(path)


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


def section_peak(device: str) -> dict[str, float]:
    """``{"peak_mib": …}`` of the part measured since the last reset_peak: on a GPU only, since a CPU's figure is
    the process's peak RSS, which cannot be reset (a part's would hold every earlier part's peak)."""
    return {"peak_mib": peak_memory_mib(device)} if device.startswith("cuda") else {}


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
    that is no YAML, a size the memory cannot hold) is one ``error:`` line and exit code 2, and Ctrl-C one
    line, as for the product's own commands."""
    try:
        main()
    except (UserError, yaml.YAMLError) as err:
        print("error:", one_line(err), file=sys.stderr)
        sys.exit(2)
    except (MemoryError, RuntimeError) as err:  # (torch.OutOfMemoryError is a RuntimeError)
        oom = isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)  # CPU's
        if not oom:
            raise
        print(f"error: out of memory ({one_line(err)[:200]}): use smaller sizes", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:  # the JSON is written at the end only: nothing is half-written
        exit_on_signal(err)
