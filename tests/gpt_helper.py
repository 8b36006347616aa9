"""Tiny models for the model and generation tests."""

from __future__ import annotations

import torch

from babygpt_pl.model import BabyGPT


def randomize_weights(model: BabyGPT, seed: int = 1) -> BabyGPT:
    """Large random weights (the init makes the logits ~0), so that logits differ clearly between positions and
    greedy decoding is varied, not constant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.head.bias[: model.config.vocab_size] = torch.randn(model.config.vocab_size, generator=g)
    return model
