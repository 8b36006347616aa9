#!/usr/bin/env python3
"""Generation speed of BabyGPT through the public API: prefill, KV-cache decode, no-cache decode, past the window.

    python benchmarks/bench_generate.py                         # seed shape, cuda if available
    python benchmarks/bench_generate.py --device cpu --batch 1 --new-tokens 50
    python benchmarks/bench_generate.py --compile               # also the compiled decode step (GPU only)

On a CPU the cached decode also runs without the decode layout (``decode_plain``: nn.Linear's row-major weights
and MKL's products), to show what splitting the products over the threads and reading the widening weights
column-major (batch 1 to 3), or oneDNN's packed weights (from batch 4), gain. On a GPU the cached decode runs
three ways: eager (``cuda_graph=False``), replayed from a CUDA graph (the default) and, with ``--compile``, from a
CUDA graph of the torch.compile'd step.

Every time is the median of ``--rounds`` runs after one warm-up, under torch.inference_mode with the model in
eval mode. Weights are random: speed does not depend on them (sampling is at temperature 1 over the full vocab).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import (  # noqa: E402
    check_args,
    default_device,
    default_out,
    device_profiler,
    environment,
    median,
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

from babygpt_pl import generation  # noqa: E402
from babygpt_pl.generation import generate  # noqa: E402
from babygpt_pl.model import BabyGPT, GPTConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/generate-<device>.json)")
    p.add_argument("--vocab", type=positive_int, default=6148, help="vocabulary size (6148: the ci corpus)")
    p.add_argument("--block-size", type=positive_int, default=256)
    p.add_argument("--n-embed", type=positive_int, default=384)
    p.add_argument("--n-head", type=positive_int, default=6)
    p.add_argument("--n-layer", type=positive_int, default=6)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and KV cache")
    p.add_argument("--new-tokens", type=positive_int, default=200, help="tokens per decode run")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 64], help="batch sizes for the cached decode")
    p.add_argument("--prompt-len", type=positive_int, default=128, help="prompt of the prefill and the window runs")
    p.add_argument("--decode-prompt-len", type=positive_int, default=8, help="prompt of the decode runs")
    p.add_argument(
        "--no-cache-tokens",
        type=positive_int,
        help="tokens of the use_cache=False run (default: new-tokens; at most 50 on cpu)",
    )
    p.add_argument("--window-tokens", type=positive_int, help="tokens of the past-window run (default: 3 * block-size)")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--compile", action="store_true", help="also measure the compiled decode step (GPU only)")
    p.add_argument("--skip-past-window", action="store_true", help="skip the in-window vs past-window runs")
    p.add_argument("--profile", type=Path, help="also write torch.profiler's tables of one batch-1 decode here")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.prompt_len >= args.block_size:
        p.error(f"--prompt-len ({args.prompt_len}) must be less than --block-size ({args.block_size})")
    if args.window_tokens is not None and args.window_tokens <= args.block_size - args.prompt_len:
        inside = args.block_size - args.prompt_len
        p.error(f"--window-tokens must pass the window: more than block-size - prompt-len = {inside}")
    return args


def build_model(args: argparse.Namespace) -> BabyGPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=args.vocab,
        block_size=args.block_size,
        n_embed=args.n_embed,
        n_head=args.n_head,
        n_layer=args.n_layer,
        dropout=0.0,
    )
    return BabyGPT(config).to(args.device, dtype=getattr(torch, args.dtype)).eval()


def prompt(args: argparse.Namespace, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    return torch.randint(args.vocab, (batch, length), generator=generator).to(args.device)


def seconds(model: BabyGPT, idx: torch.Tensor, new_tokens: int, args: argparse.Namespace, **kw: Any) -> float:
    """Median wall time of ``generate`` over the rounds."""
    with torch.inference_mode():
        return median(timed(lambda: generate(model, idx, new_tokens, **kw), args.device, args.rounds))


def bench_prefill(model: BabyGPT, args: argparse.Namespace, batch: int) -> dict[str, float]:
    # One new token is the prefill plus one sample: the closest the public API gets to a bare prefill.
    t = seconds(model, prompt(args, batch, args.prompt_len), 1, args)
    return {f"prefill_b{batch}_ms": t * 1e3, f"prefill_b{batch}_tokens_per_s": batch * args.prompt_len / t}


def bench_decode(model: BabyGPT, args: argparse.Namespace, batch: int, tag: str = "", **kw: Any) -> dict[str, float]:
    """Cached decode of ``new_tokens`` after a short prompt, so it stays inside the window."""
    reset_peak(args.device)
    t = seconds(model, prompt(args, batch, args.decode_prompt_len), args.new_tokens, args, **kw)
    key = f"decode{tag}_b{batch}"
    return {
        f"{key}_tokens_per_s": batch * args.new_tokens / t,
        f"{key}_ms_per_step": t * 1e3 / args.new_tokens,
        **{f"{key}_{k}": v for k, v in section_peak(args.device).items()},
    }


def bench_plain_layout(model: BabyGPT, args: argparse.Namespace, batch: int) -> dict[str, float]:
    """The CPU decode with plain nn.Linear products throughout: what the CPU decode layout gains."""
    layout = generation._cpu_decode_layout
    generation._cpu_decode_layout = lambda *args: contextlib.nullcontext()
    try:
        return bench_decode(model, args, batch, tag="_plain")
    finally:
        generation._cpu_decode_layout = layout


def bench_no_cache(model: BabyGPT, args: argparse.Namespace) -> dict[str, float]:
    """use_cache=False for batch 1, and the cached run over the very same tokens for a fair ratio."""
    n = args.no_cache_tokens or (args.new_tokens if args.device.startswith("cuda") else min(args.new_tokens, 50))
    idx = prompt(args, 1, args.decode_prompt_len)
    slow = seconds(model, idx, n, args, use_cache=False)
    fast = seconds(model, idx, n, args, use_cache=True)
    return {
        "no_cache_tokens": n,
        "no_cache_b1_tokens_per_s": n / slow,
        "cache_b1_same_run_tokens_per_s": n / fast,
        "cache_speedup_b1": slow / fast,
    }


def bench_past_window(model: BabyGPT, args: argparse.Namespace) -> dict[str, float]:
    """ms/token inside the window vs past it (where the cache refills its newest half window)."""
    idx = prompt(args, 1, args.prompt_len)
    inside = args.block_size - args.prompt_len
    total = args.window_tokens or 3 * args.block_size
    t_in = seconds(model, idx, inside, args)
    t_all = seconds(model, idx, total, args)
    ms_in = t_in * 1e3 / inside
    ms_past = (t_all - t_in) * 1e3 / (total - inside)  # as measured: noise may even make it negative
    return {
        "window_in_tokens": inside,
        "window_past_tokens": total - inside,
        "window_in_ms_per_token": ms_in,
        "window_past_ms_per_token": ms_past,
        "window_past_over_in": ms_past / ms_in,
    }


def bench_compiled(model: BabyGPT, args: argparse.Namespace) -> dict[str, Any]:
    """The cached decode replayed from a CUDA graph of the torch.compile'd step."""
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            generate(model, prompt(args, 1, args.decode_prompt_len), 2, compile=True)  # compiles and captures
        out: dict[str, Any] = {"compile_warmup_s": time.perf_counter() - t0}
        for batch in args.batch:
            out.update(bench_decode(model, args, batch, tag="_compiled", compile=True))
        return out
    except Exception as err:  # a compile failure must not lose the other figures
        print(f"compile: failed: {type(err).__name__}: {err}")
        return {"compile": f"failed: {type(err).__name__}: {str(err)[:500]}"}


def write_decode_profile(model: BabyGPT, args: argparse.Namespace, compile: bool = False) -> None:
    """torch.profiler's tables of one batch-1 decode, by device time and by host time: which of them bounds it."""
    idx = prompt(args, 1, args.decode_prompt_len)
    with torch.inference_mode():
        generate(model, idx, args.new_tokens, compile=compile)  # warm (on a GPU: the graph is captured)
        with device_profiler(args.device) as prof:
            sync(args.device)
            t0 = time.perf_counter()
            generate(model, idx, args.new_tokens, compile=compile)
            sync(args.device)
            ms_per_token = (time.perf_counter() - t0) * 1e3 / args.new_tokens
    keys = (["self_cuda_time_total"] if args.device.startswith("cuda") else []) + ["self_cpu_time_total"]
    events = prof.key_averages()
    tables = [events.table(sort_by=key, row_limit=25, max_name_column_width=60) for key in keys]
    what = "compiled " if compile else ""
    title = (
        f"# one {what}batch-1 decode of {args.new_tokens} tokens on {args.device}: {ms_per_token:.3f} ms/token profiled"
    )
    report("\n".join([title, *(f"## by {k}\n{t}" for k, t in zip(keys, tables, strict=True))]) + "\n", args.profile)


def graph_captured(model: BabyGPT) -> bool:
    return bool(generation._DECODERS.get(model))


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = build_model(args)
    shape = {k: getattr(args, k) for k in ("vocab", "block_size", "n_embed", "n_head", "n_layer", "dtype")}
    res: dict[str, Any] = {**environment(args.device), **shape, "parameters": model.num_parameters()}
    res.update(new_tokens=args.new_tokens, prompt_len=args.prompt_len, rounds=args.rounds)
    sections = [lambda b=b: bench_prefill(model, args, b) for b in args.batch]
    sections += [lambda b=b: bench_decode(model, args, b) for b in args.batch]
    cuda = args.device.startswith("cuda")
    if cuda:
        sections.append(lambda: {"cuda_graph_captured": graph_captured(model)})
        sections += [lambda b=b: bench_decode(model, args, b, tag="_eager", cuda_graph=False) for b in args.batch]
    else:
        sections += [lambda b=b: bench_plain_layout(model, args, b) for b in args.batch]
    sections.append(lambda: bench_no_cache(model, args))
    if not args.skip_past_window:
        sections.append(lambda: bench_past_window(model, args))
    if args.compile and cuda:
        sections.append(lambda: bench_compiled(model, args))
    elif args.compile:
        print("compile: skipped (the compiled decode step is for CUDA graphs: GPU only)")
    peak = 0.0
    for section in sections:
        reset_peak(args.device)
        res.update(section())
        peak = max(peak, peak_memory_mib(args.device))
    if args.profile:
        write_decode_profile(model, args)
        if args.compile and cuda and "compile" not in res:  # not where the compile failed
            write_decode_profile(model, args, compile=True)
    # GPU: the largest allocation of any section; CPU: the process's peak RSS (includes Python and torch).
    res["peak_mib"] = peak
    return res


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode_prompt_len + args.new_tokens > args.block_size:
        print(f"note: decode prompt + new tokens exceed block_size {args.block_size}: decode includes refills")
    res = run(args)
    print_table(f"generate: {res['device_name']}, torch {res['torch']}", [(k, v) for k, v in res.items()])
    write_json(args.out or default_out("generate", args.device), res)


if __name__ == "__main__":
    run_main(main)
