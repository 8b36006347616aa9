#!/usr/bin/env python3
"""Where a `babygpt fit` step goes: wall time per step of the real Lightning loop, and torch.profiler's tables.

    python benchmarks/profile_fit.py --config configs/base.yaml --trainer.precision bf16-mixed
    python benchmarks/profile_fit.py --config configs/cpu.yaml --start 5 --steps 5

Every other argument goes to `babygpt fit`. Steps ``--start`` .. ``--start + --steps`` are timed unprofiled, the
next ``--steps`` are profiled, then the run stops. Its checkpoints, wandb files and config.yaml go to a temporary
folder, removed after, so a real run's checkpoints/last.ckpt stays as it was. The first table
is by self CPU time: a host sync per step shows up there as cudaStreamSynchronize or aten::_local_scalar_dense
with one call per step. The second is by device time. Compare the wall ms/step with bench_train.py's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import check_outputs, device_profiler, positive_int, report, run_main, sync  # noqa: E402

from babygpt_pl import cli  # noqa: E402


class StepProfiler(L.Callback):
    """Times steps start..start+steps, profiles the next ``steps``, then stops training."""

    def __init__(self, start: int, steps: int, out: Path | None) -> None:
        self.start, self.steps, self.out = start, steps, out
        self.t0 = 0.0
        self.prof: profile | None = None
        self._last_step = -1

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        step = trainer.global_step
        if step == self._last_step:  # another batch of the step (gradient accumulation): its start is timed
            return
        self._last_step = step
        device = str(trainer.strategy.root_device)
        if step == self.start:
            sync(device)
            self.t0 = time.perf_counter()
        elif step == self.start + self.steps:
            sync(device)
            wall = (time.perf_counter() - self.t0) * 1e3 / self.steps
            report(f"wall: {wall:.2f} ms/step over steps {self.start}..{step - 1}, unprofiled", self.out)
            self.prof = device_profiler(device)
            self.prof.__enter__()
        elif step == self.start + 2 * self.steps and self.prof is not None:
            sync(device)
            self.prof.__exit__(None, None, None)
            averages = self.prof.key_averages()
            keys = ["self_cpu_time_total"] + (["self_cuda_time_total"] if device.startswith("cuda") else [])
            for key in keys:
                table = averages.table(sort_by=key, row_limit=25, max_name_column_width=60)
                report(f"# {self.steps} profiled steps, by {key}\n{table}", self.out)
            trainer.should_stop = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--start", type=positive_int, default=20, help="first timed step (after warm-up)")
    parser.add_argument("--steps", type=positive_int, default=10, help="steps timed, then as many profiled")
    parser.add_argument("--out", type=Path, help="also write the report to this file (this run's alone)")
    args, rest = parser.parse_known_args()
    configs = [b for a, b in zip(rest, rest[1:], strict=False) if a in ("-c", "--config")]
    configs += [a.split("=", 1)[1] for a in rest if a.startswith("--config=")]
    for config in configs or [None]:  # before the run, not after all of it
        check_outputs(parser, {"--out": args.out}, {"--config": config})
    profiler = StepProfiler(args.start, args.steps, args.out)
    defaults = cli.trainer_defaults
    # The run's checkpoints and wandb files default to a folder of its own, removed after: a profile must not write
    # over the last.ckpt of a real run in checkpoints/ (--checkpoint.dirpath and the logger's options still win).
    with tempfile.TemporaryDirectory(prefix="profile_fit-") as scratch:

        def with_profiler() -> dict:
            settings = defaults()
            settings["callbacks"] = [*settings["callbacks"], profiler]
            settings["logger"]["init_args"]["save_dir"] = settings["default_root_dir"] = scratch
            return settings

        cli.trainer_defaults = with_profiler
        cli.CHECKPOINT_DEFAULTS = {**cli.CHECKPOINT_DEFAULTS, "checkpoint.dirpath": f"{scratch}/checkpoints"}
        sys.argv = [sys.argv[0], "fit", *rest, f"--trainer.max_steps={args.start + 2 * args.steps + 1}"]
        cli.main()


if __name__ == "__main__":
    run_main(main)
