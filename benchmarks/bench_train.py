#!/usr/bin/env python3
"""Training-step speed of BabyGPT at a config's shape: seconds/step, tokens/s, MFU and peak memory.

    python benchmarks/bench_train.py --config configs/base.yaml               # cuda if available
    python benchmarks/bench_train.py --config configs/cpu.yaml --device cpu --steps 3
    python benchmarks/bench_train.py --config configs/base.yaml --compile both  # eager, then compiled

A plain PyTorch loop (no Lightning) on random tokens: forward with the loss, backward, AdamW (fused on CUDA),
under torch.autocast in bf16 for --precision bf16-mixed. The figure is the mean over --steps steps run
back to back after the warm-up, synchronised only at both ends as a training loop runs (the first step,
which compiles a compiled model, is reported apart).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import (  # noqa: E402
    check_args,
    default_device,
    default_out,
    device_profiler,
    environment,
    peak_memory_mib,
    positive_int,
    print_table,
    report,
    reset_peak,
    run_main,
    section_peak,
    sync,
    timed,
    write_json,
)

from babygpt_pl.errors import UserError  # noqa: E402
from babygpt_pl.model import BabyGPT, GPTConfig  # noqa: E402

MODEL_FIELDS = ("block_size", "n_embed", "n_head", "n_layer", "dropout", "attn_dropout", "tie_weights", "pad_vocab_to")
# Dense bf16 peaks for GPUs Lightning's table lacks or lists with sparsity (its H200 figures are 2:4 sparse).
DENSE_BF16_FALLBACK = {"h200": 989.4e12, "h100": 989.4e12, "gh200": 989.4e12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config", type=Path, default=Path("configs/base.yaml"), help="model/data sizes (YAML; default: %(default)s)"
    )
    p.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--steps", type=positive_int, help="timed steps (default: 20 on cuda, 3 on cpu)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 3 on cuda, 1 on cpu)")
    p.add_argument("--batch", type=positive_int, help="override data.batch_size")
    p.add_argument("--vocab", type=positive_int, default=6148, help="vocabulary size (6148: the ci corpus)")
    p.add_argument(
        "--compile",
        nargs="?",
        const="compiled",
        default="eager",
        choices=["eager", "compiled", "both"],
        help="--compile: compiled only; --compile both: eager then compiled",
    )
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the compiled model (reduce-overhead: CUDA graphs)",
    )
    p.add_argument("--precision", choices=["32", "bf16-mixed"], help="default: bf16-mixed on cuda, 32 on cpu")
    p.add_argument(
        "--cpu-peak-gflops",
        type=float,
        help="CPU peak for MFU (default: measured, the best rate of a large fp32 matrix product on these threads)",
    )
    p.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/train-<device>.json)")
    p.add_argument("--profile", type=Path, help="also write torch.profiler's table of one step's top kernels here")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.cpu_peak_gflops is not None and not 0 < args.cpu_peak_gflops < math.inf:
        p.error(
            f"--cpu-peak-gflops must be > 0 and finite, got {args.cpu_peak_gflops:g}; or leave it out to measure it"
        )
    if not args.config.is_file():
        p.error(f"--config {args.config} is not a file; pass a babygpt config, e.g. configs/cpu.yaml")
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.precision = args.precision or ("bf16-mixed" if cuda else "32")
    return args


def read_config(path: Path) -> tuple[dict[str, Any], int]:
    """The model fields and the batch size of a babygpt config file."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"--config {path} is not UTF-8 text; pass a babygpt config, e.g. configs/cpu.yaml") from None
    sections = {key: config.get(key) or {} for key in ("model", "data")} if isinstance(config, dict) else {}
    if not sections or not all(isinstance(section, dict) for section in sections.values()):
        raise UserError(
            f"--config {path} holds no model: and data: settings; pass a babygpt config, e.g. configs/cpu.yaml"
        )
    model = {k: v for k, v in sections["model"].items() if k in MODEL_FIELDS}
    model.setdefault("attn_dropout", None)  # BabyGPTModule's default: the tutorial's dropout on attention too
    batch = sections["data"].get("batch_size", 64)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise UserError(f"--config {path}: data.batch_size must be a positive integer, got {batch!r}")
    return model, batch


# A CPU's peak cannot be read off a VM (its clock is unknown, and AVX2's FMA units are 128 bits wide on some
# cores, 256 on others: 2x apart), so MFU on a CPU is against the rate its BLAS reaches on a large product.
MATMUL_SIZE = 2048


def matmul_flops(size: int = MATMUL_SIZE, reps: int = 3) -> float:
    """The best FLOP/s of ``reps`` fp32 (size x size) @ (size x size) products on torch's CPU threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / min(timed(lambda: a @ b, "cpu", reps))  # after a warm-up: MKL's buffers and threads


def peak_flops(args: argparse.Namespace) -> tuple[float | None, str]:
    """Peak FLOP/s of the device at the training precision, and where the figure comes from."""
    if not args.device.startswith("cuda"):
        if args.cpu_peak_gflops is not None:
            return args.cpu_peak_gflops * 1e9, f"--cpu-peak-gflops {args.cpu_peak_gflops:g} (given)"
        rate = matmul_flops()
        return rate, f"measured: the best of 3 fp32 {MATMUL_SIZE}^3 matrix products, {rate / 1e9:.1f} GFLOP/s"
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    name = torch.cuda.get_device_name().lower()
    flops = get_available_flops(torch.device(args.device), dtype)
    if dtype is torch.bfloat16 and (flops is None or "h200" in name):
        dense = next((v for k, v in DENSE_BF16_FALLBACK.items() if k in name), None)
        if dense is not None:
            return dense, "dense bf16 figure of the H100/H200 datasheet (Lightning's H200 figure is sparse)"
    return (float(flops), "lightning get_available_flops") if flops else (None, "unknown GPU: no MFU")


def build(args: argparse.Namespace, model_cfg: dict[str, Any]) -> tuple[BabyGPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = BabyGPT(GPTConfig(vocab_size=args.vocab, **model_cfg)).to(args.device).train()
    cuda = args.device.startswith("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)
    return model, opt


def train_steps(
    model: BabyGPT, opt: torch.optim.Optimizer, args: argparse.Namespace, batch: int, steps: int
) -> tuple[float, float]:
    """Seconds for ``steps`` steps in a row, synchronised only at both ends as in a training loop (the CPU
    queues the next step while the GPU runs this one), and the last loss."""
    block = model.config.block_size
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(args.vocab, (batch, block), generator=generator).to(args.device)
    y = torch.randint(args.vocab, (batch, block), generator=generator).to(args.device)
    bf16 = args.precision == "bf16-mixed"
    loss = torch.zeros(())
    sync(args.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(args.device)
    return time.perf_counter() - t0, float(loss.detach())


def write_profile(model: BabyGPT, opt: torch.optim.Optimizer, args: argparse.Namespace, batch: int, tag: str) -> None:
    """torch.profiler's table of one more step, by self time on the device (what limits the step)."""
    with device_profiler(args.device) as prof:
        train_steps(model, opt, args, batch, 1)
    key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60)
    report(f"# one {tag} training step, {args.config}, batch {batch}, {args.precision}\n{table}\n", args.profile)


def bench(
    args: argparse.Namespace, model_cfg: dict[str, Any], batch: int, compiled: bool, peak: float | None
) -> dict[str, Any]:
    """One mode's figures; MFU against ``peak`` FLOP/s (None: no MFU)."""
    tag = "compiled" if compiled else "eager"
    model, opt = build(args, model_cfg)
    if compiled:
        model.compile(mode=args.compile_mode)  # in place, as BabyGPTModule does
    reset_peak(args.device)
    try:
        first, _ = train_steps(model, opt, args, batch, 1)  # compiles, for a compiled model
        train_steps(model, opt, args, batch, args.warmup)
        total, loss = train_steps(model, opt, args, batch, args.steps)
        if args.profile:
            write_profile(model, opt, args, batch, tag)
    except Exception as err:  # e.g. no C compiler for inductor: keep the other mode's figures
        print(f"{tag}: failed: {type(err).__name__}: {err}")
        return {f"{tag}_error": f"{type(err).__name__}: {str(err)[:500]}"}
    step = total / args.steps
    tokens_per_s = batch * model.config.block_size / step
    out = {
        f"{tag}_s_per_step": step,
        f"{tag}_first_step_s": first,
        f"{tag}_tokens_per_s": tokens_per_s,
        f"{tag}_mfu": model.flops_per_token() * tokens_per_s / peak if peak else None,
        **{f"{tag}_{k}": v for k, v in section_peak(args.device).items()},
        f"{tag}_final_loss": loss,
    }
    del model, opt
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_cfg, batch = read_config(args.config)
    batch = args.batch or batch
    if args.device == "cpu" and args.compile != "eager":
        print("note: torch.compile on CPU needs a C compiler and takes minutes to compile; expect a slow first step")
    flops, source = peak_flops(args)
    probe = BabyGPT(GPTConfig(vocab_size=args.vocab, **model_cfg))
    res: dict[str, Any] = {**environment(args.device), "config": str(args.config), **model_cfg}
    res.update(
        compile_mode=args.compile_mode,
        vocab=args.vocab,
        batch=batch,
        precision=args.precision,
        steps=args.steps,
        warmup=args.warmup,
        parameters=probe.num_parameters(),
        flops_per_token=probe.flops_per_token(),
        peak_flops=flops,
        peak_flops_source=source,
    )
    del probe
    modes = {"eager": [False], "compiled": [True], "both": [False, True]}[args.compile]
    for compiled in modes:
        res.update(bench(args, model_cfg, batch, compiled, flops))
    if "eager_s_per_step" in res and "compiled_s_per_step" in res:
        res["compile_speedup"] = res["eager_s_per_step"] / res["compiled_s_per_step"]
    parts = [res[f"{tag}_peak_mib"] for tag in ("eager", "compiled") if f"{tag}_peak_mib" in res]
    # GPU: the larger mode's; CPU: the process's peak RSS (every mode's, and Python's).
    res["peak_mib"] = max(parts) if parts else peak_memory_mib(args.device)
    print_table(f"train: {res['device_name']}, torch {res['torch']}", list(res.items()))
    if not args.device.startswith("cuda"):
        print(f"MFU on CPU is against {source}")
    if not any(f"{tag}_s_per_step" in res for tag in ("eager", "compiled")):  # (not over an earlier run's figures)
        raise UserError("every mode failed (see their errors above): nothing was measured, no JSON written")
    write_json(args.out or default_out("train", args.device), res)


if __name__ == "__main__":
    run_main(main)
