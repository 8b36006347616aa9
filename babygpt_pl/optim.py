"""MuonAdamW: Muon for the hidden layers' weight matrices, AdamW for everything else, as one optimizer.

Muon (Keller Jordan, 2024) replaces each matrix's momentum by the nearest semi-orthogonal matrix (a few
Newton-Schulz iterations) and takes a step of fixed size along it. With it, configs/cpu.yaml reached val loss
4.685 in 1800 steps where AdamW reached 4.836 in 2400, and now 4.678 in 1600 (README, "Performance").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

# The quintic Newton-Schulz coefficients of Keller Jordan's Muon (also torch.optim.Muon's defaults).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(grads: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately U V^T for each matrix U S V^T of a (..., m, n) stack, by Newton-Schulz iteration.

    bf16 on a GPU, as Muon's authors run it; fp32 elsewhere, since a CPU without bf16 matrix units runs the
    bf16 iteration ~15x slower than fp32 (116 ms against 8 ms for one 1152 x 128 matrix on a 2-core EPYC).
    """
    x = grads.to(torch.bfloat16) if grads.is_cuda else grads.float()
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT  # iterate on the smaller Gram matrix
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # spectral norm <= Frobenius norm <= 1
    x = _gram_newton_schulz(x, steps) if x.dtype == torch.float32 else _newton_schulz(x, steps)
    return (x if wide else x.mT).to(grads.dtype)


def _newton_schulz(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Muon's quintic iteration on each m x n (m <= n) matrix of ``x``, whose spectral norms are <= 1."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def _gram_newton_schulz(x: torch.Tensor, steps: int) -> torch.Tensor:
    """:func:`_newton_schulz`, carried on the m x m Gram matrix of each m x n (m <= n) matrix of ``x``.

    A step is X' = Q X with Q = aI + bA + cA^2 and A = X X^T. Q is a polynomial in A, so A' = Q A Q, and the
    result is Q_last ... Q_first X: two products with X in all instead of two per step. At configs/cpu.yaml's
    shapes that is ~40% less time (72 -> 41 ms a step on a 2-core EPYC). For singular values spread over 1e-4..1,
    fp32 results stayed within 4e-4 of the plain iteration run in float64 (the plain one: 1e-5 in fp32, 4e-2 in
    bf16 as on a GPU). Not for bf16: errors in A build up over the steps; singular values grew to 14 in a check.
    """
    a, b, c = NS_COEFFICIENTS
    gram = x @ x.mT
    product = None
    for step in range(steps):
        q = (gram @ gram).mul_(c).add_(gram, alpha=b)
        q.diagonal(dim1=-2, dim2=-1).add_(a)
        product = q if product is None else q @ product
        if step < steps - 1:
            gram = q @ gram @ q
    return x if product is None else product @ x


def _is_muon(group: dict[str, Any]) -> bool:
    # .get: a plain AdamW group, or one loaded from its state_dict, has no such key
    return bool(group.get("muon"))


def _muon_flags(groups: Iterable[dict[str, Any]]) -> list[bool]:
    return [_is_muon(g) for g in groups]


class MuonAdamW(torch.optim.AdamW):
    """AdamW, except that param groups with ``muon=True`` (2-D weights only) take Muon's update.

    One optimizer because Lightning's automatic optimisation steps one, and Muon suits only the hidden matrices
    (embeddings, head, biases and LayerNorms keep AdamW). Not torch.optim.Muon: it accepts only 2-D parameters
    and orthogonalises in bf16 even on a CPU (see :func:`orthogonalize`). A Muon group's ``lr`` is the
    spectral-norm step of its matrices (torch's "original" scaling by sqrt(max(1, rows/cols))), its
    ``weight_decay`` decoupled as in AdamW; ``momentum`` (Nesterov) and ``ns_steps`` default to 0.95 and 5.
    Same-shaped matrices are orthogonalised together, one batched matmul per Newton-Schulz step.
    """

    def __init__(self, params: Iterable[dict[str, Any]], **adamw_kwargs: Any) -> None:
        super().__init__(params, **adamw_kwargs)
        # A fused AdamW unscales fp16 gradients (and skips inf steps) inside its own step, so GradScaler leaves
        # that to it; Muon's update would see scaled or inf gradients. Let the scaler unscale and skip first.
        self._step_supports_amp_scaling = False
        for group in self.param_groups:
            group.setdefault("muon", False)
            if group["muon"]:
                group.setdefault("momentum", 0.95)
                group.setdefault("ns_steps", 5)
                flat = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if flat:
                    raise ValueError(f"Muon updates 2-D weight matrices only, got shapes {flat}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, ours = _muon_flags(state_dict["param_groups"]), _muon_flags(self.param_groups)
        if saved != ours:
            # Same-sized groups would load, and a Muon group would silently carry on as AdamW (or fail later).
            raise ValueError(f"saved state has Muon flags {saved} per group, this optimizer {ours}")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if _is_muon(group):
                self._muon_step(group)
        super().step()  # AdamW for the rest: it skips parameters without a gradient, as Muon's now are
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        by_shape: dict[torch.Size, list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.grad is not None:
                by_shape.setdefault(p.shape, []).append(p)
        momentum, lr, decay = group["momentum"], group["lr"], group["weight_decay"]
        for shape, params in by_shape.items():
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:  # and a step count, which AdamW's load_state_dict expects
                    step_device = p.device if group["fused"] else None  # where AdamW keeps its step count
                    state["momentum_buffer"], state["step"] = torch.zeros_like(p), torch.tensor(0.0, device=step_device)
                state["step"] += 1
                state["momentum_buffer"].lerp_(p.grad, 1 - momentum)
            grads = torch.stack([p.grad for p in params])
            bufs = torch.stack([self.state[p]["momentum_buffer"] for p in params])
            updates = orthogonalize(grads.lerp_(bufs, momentum), group["ns_steps"])  # Nesterov momentum
            step = lr * max(1.0, shape[0] / shape[1]) ** 0.5
            for p, update in zip(params, updates, strict=True):
                p.mul_(1 - lr * decay).sub_(update, alpha=step)
                p.grad = None  # consumed
