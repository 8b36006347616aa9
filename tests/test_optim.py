"""Tests for babygpt_pl.optim: Newton-Schulz orthogonalisation and the MuonAdamW optimizer."""

from __future__ import annotations

import copy

import pytest
import torch

from babygpt_pl.optim import MuonAdamW, _gram_newton_schulz, _newton_schulz, orthogonalize


def spread_spectrum(shape: tuple, seed: int, dtype: torch.dtype = torch.float32):
    """Random matrices U S V^T of ``shape`` whose singular values S spread over 1..1e-4, with their U and V^T."""
    g = torch.Generator().manual_seed(seed)
    u, _, vh = torch.linalg.svd(torch.randn(shape, generator=g, dtype=dtype), full_matrices=False)
    s = torch.logspace(0, -4, u.size(-1), dtype=dtype).expand(*shape[:-2], -1)
    return u @ torch.diag_embed(s) @ vh, u, vh


@pytest.mark.parametrize("shape", [(48, 12), (12, 48), (3, 20, 20)])
def test_orthogonalize_flattens_the_singular_values_and_keeps_the_directions(shape: tuple) -> None:
    grads, u, vh = spread_spectrum(shape, seed=0)  # four orders of magnitude: the update must not care
    out = orthogonalize(grads, steps=5)
    assert out.shape == grads.shape and out.dtype == grads.dtype
    sv = torch.linalg.svdvals(out)
    big = sv[..., : u.size(-1) // 2]  # Newton-Schulz lifts even the small ones; Muon's quintic lands in ~(0.5, 1.5)
    assert big.min() > 0.5 and sv.max() < 1.5, sv
    polar = u @ vh  # the exact orthogonal factor U V^T

    def cosine(a: torch.Tensor) -> torch.Tensor:
        return ((a * polar).sum((-2, -1)) / (a.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))).min()

    assert cosine(grads) < 0.5 and cosine(out) > 0.85


@pytest.mark.parametrize("shape", [(12, 48), (3, 20, 20), (2, 16, 64)])
def test_the_gram_iteration_is_the_plain_one(shape: tuple) -> None:
    x, _, _ = spread_spectrum(shape, seed=1, dtype=torch.float64)
    x = x / x.norm(dim=(-2, -1), keepdim=True)
    plain = _newton_schulz(x, steps=5)
    assert torch.allclose(_gram_newton_schulz(x.float(), steps=5).double(), plain, atol=1e-3)  # entries ~0.4
    assert torch.equal(_gram_newton_schulz(x, steps=0), x)


def two_layer_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 4, generator=g)
    return model, x, y


def muon_groups(model: torch.nn.Sequential, **muon) -> list[dict]:
    matrices = [model[0].weight, model[2].weight]
    rest = [model[0].bias, model[2].bias]
    return [{"params": matrices, "muon": True, "lr": 0.02, **muon}, {"params": rest}]


def train(model, optimizer, x, y, steps: int, loss_scale: float = 1.0) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        (loss * loss_scale).backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_groups_without_muon_are_plain_adamw() -> None:
    model, x, y = two_layer_problem()
    twin = copy.deepcopy(model)
    train(model, MuonAdamW(model.parameters(), lr=1e-2, weight_decay=0.1), x, y, steps=5)
    train(twin, torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1), x, y, steps=5)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_muon_learns_and_its_step_size_ignores_the_gradient_scale() -> None:
    model, x, y = two_layer_problem()
    twin = copy.deepcopy(model)
    losses = train(model, MuonAdamW(muon_groups(model), lr=1e-2), x, y, steps=60)
    assert losses[-1] < 0.5 * losses[0]
    # Orthogonalised momentum has a fixed size, and Adam is scale-free too: 1000x the loss, the same steps.
    scaled = train(twin, MuonAdamW(muon_groups(twin), lr=1e-2), x, y, steps=60, loss_scale=1000.0)
    torch.testing.assert_close(torch.tensor(scaled), torch.tensor(losses), rtol=1e-3, atol=1e-5)


def test_muon_update_is_the_orthogonalised_nesterov_momentum() -> None:
    w = torch.nn.Parameter(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
    group = {"params": [w], "muon": True, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.5}
    optimizer = MuonAdamW([group], lr=1e-3)
    g1, g2 = torch.randn(6, 3), torch.randn(6, 3)
    expected = w.detach().clone()
    buf = torch.zeros(6, 3)
    for g in (g1, g2):
        w.grad = g.clone()
        optimizer.step()
        buf = 0.9 * buf + 0.1 * g
        nesterov = 0.1 * g + 0.9 * buf
        expected = expected * (1 - 0.1 * 0.5) - 0.1 * (6 / 3) ** 0.5 * orthogonalize(nesterov, steps=5)
        torch.testing.assert_close(w.detach(), expected)
    assert w.grad is None and set(optimizer.state[w]) == {"momentum_buffer", "step"}  # no Adam moments


def test_an_inf_gradient_under_a_grad_scaler_skips_the_step() -> None:
    model, x, y = two_layer_problem()
    before = copy.deepcopy(model.state_dict())
    optimizer = MuonAdamW(muon_groups(model), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("inf")
    scaler.step(optimizer)
    scaler.update()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # Muon's matrices too, not only AdamW's vectors


def test_loading_another_optimizers_state_is_refused() -> None:
    model, _, _ = two_layer_problem()
    plain = torch.optim.AdamW([{"params": [model[0].weight, model[2].weight]}, {"params": [model[0].bias]}])
    muon = MuonAdamW(muon_groups(model), lr=1e-2)
    with pytest.raises(ValueError, match="Muon flags"):
        muon.load_state_dict(plain.state_dict())


def test_muon_state_round_trips_through_state_dict() -> None:
    model, x, y = two_layer_problem()
    optimizer = MuonAdamW(muon_groups(model, weight_decay=0.1), lr=1e-2)
    train(model, optimizer, x, y, steps=3)
    assert "momentum_buffer" in optimizer.state[model[0].weight] and "exp_avg" in optimizer.state[model[0].bias]
    saved_model, saved_state = copy.deepcopy(model), copy.deepcopy(optimizer.state_dict())
    resumed = MuonAdamW(muon_groups(saved_model, weight_decay=0.1), lr=1e-2)
    resumed.load_state_dict(saved_state)
    assert train(saved_model, resumed, x, y, steps=3) == train(model, optimizer, x, y, steps=3)


def test_muon_refuses_vectors() -> None:
    bias = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([{"params": [bias], "muon": True}], lr=1e-3)


def test_muons_defaults_are_nesterov_momentum_0_95_and_5_newton_schulz_steps() -> None:
    w = torch.nn.Parameter(torch.randn(4, 3))
    (group,) = MuonAdamW([{"params": [w], "muon": True}], lr=0.01).param_groups
    assert (group["momentum"], group["ns_steps"]) == (0.95, 5)


def test_a_zero_gradient_leaves_the_weights_finite() -> None:
    assert torch.isfinite(orthogonalize(torch.zeros(4, 3), 5)).all()
    w = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = MuonAdamW([{"params": [w], "muon": True}], lr=0.01)
    w.grad = torch.zeros_like(w)
    optimizer.step()
    assert torch.isfinite(w).all()
