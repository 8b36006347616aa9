"""Callbacks for the side concerns of training and prediction."""

from __future__ import annotations

import json
import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ThroughputMonitor

from babygpt_pl.files import write_atomic


def batch_size(batch: Any) -> int:
    """Windows in an (x, y) batch, or prompts in a predict batch."""
    return batch[0].size(0) if torch.is_tensor(batch[0]) else len(batch)


def batch_tokens(batch: Any) -> int:
    """Tokens in an (x, y) batch (B*T), so ThroughputMonitor's items/s are tokens/s; prompt characters else."""
    return batch[0].numel() if torch.is_tensor(batch[0]) else sum(map(len, batch))


def token_throughput() -> ThroughputMonitor:
    return ThroughputMonitor(batch_size_fn=batch_size, length_fn=batch_tokens)


def format_completion(completion: dict) -> str:
    head = f"--- {completion['prompt']}"
    if completion.get("sample"):
        head += f" (sample {completion['sample'] + 1})"
    return f"{head}\n{completion['prompt']}{completion['text']}\n"


class PredictionPrinter(BasePredictionWriter):
    """Prints each prompt's continuation as it is generated, and writes them all as JSON lines at the end
    (to ``generation.output`` when it is set)."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.records: list[dict] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.records = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for completion in prediction:
            sys.stdout.write(format_completion(completion) + "\n")
            self.records.append(completion)
        sys.stdout.flush()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        output = getattr(pl_module, "generation", None) and pl_module.generation.output
        if output and trainer.is_global_zero:
            write_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records).encode())
