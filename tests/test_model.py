"""Tests for babygpt_pl.model: config, shapes, loss, padded vocab, tied weights, split or packed Linear, KV cache."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from gpt_helper import randomize_weights
from torch import nn
from torch.nn import functional as F

from babygpt_pl.errors import UserError
from babygpt_pl.model import (
    PAD_LOGIT,
    SPLIT_MAX_ROWS,
    BabyGPT,
    ChunkedCrossEntropy,
    Dropout,
    GPTConfig,
    KVCache,
    Linear,
    _attend_one,
    packing_available,
)

VOCAB = 50
BLOCK = 16


def tiny_config(**overrides) -> GPTConfig:
    kwargs = dict(vocab_size=VOCAB, block_size=BLOCK, n_embed=32, n_head=4, n_layer=2, dropout=0.0)
    kwargs.update(overrides)
    return GPTConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> BabyGPT:
    torch.manual_seed(seed)
    return BabyGPT(tiny_config(**overrides)).eval()


# --- GPTConfig ---------------------------------------------------------------------------------------------------


def test_config_n_embed_not_divisible_by_n_head() -> None:
    with pytest.raises(UserError, match="divisible") as info:
        tiny_config(n_embed=30, n_head=4)
    assert isinstance(info.value, ValueError)
    assert "[1, 2, 3, 5, 6, 10" in str(info.value)  # suggests valid head counts


@pytest.mark.parametrize("name", ["vocab_size", "block_size", "n_embed", "n_head", "n_layer", "pad_vocab_to"])
@pytest.mark.parametrize("value", [0, -1, 2.0])
def test_config_non_positive_or_non_int_sizes(name: str, value) -> None:
    with pytest.raises(ValueError, match=name):
        tiny_config(**{name: value})


@pytest.mark.parametrize("name", ["dropout", "attn_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_config_dropout_out_of_range(name: str, value: float) -> None:
    with pytest.raises(UserError, match=name):
        tiny_config(**{name: value})


def test_config_valid_edges_and_derived_sizes() -> None:
    c = tiny_config(dropout=0.0, attn_dropout=None)
    assert c.head_dim == 8
    assert c.padded_vocab_size == 64
    assert tiny_config(pad_vocab_to=1).padded_vocab_size == VOCAB
    assert tiny_config(pad_vocab_to=25).padded_vocab_size == 50
    assert tiny_config(vocab_size=65).padded_vocab_size == 128
    assert tiny_config(dropout=0.99).dropout == 0.99


# --- forward ------------------------------------------------------------------------------------------------------


def test_forward_shapes_without_targets() -> None:
    model = tiny_model()
    idx = torch.randint(VOCAB, (3, 7))
    logits, loss = model(idx)
    assert logits.shape == (3, 7, VOCAB)
    assert loss is None
    assert torch.isfinite(logits).all()


def test_last_only_gives_the_last_positions_logits() -> None:
    model = tiny_model()
    randomize_weights(model)
    idx = torch.randint(VOCAB, (3, 7))
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (3, 1, VOCAB)
    torch.testing.assert_close(last, full[:, -1:])


def test_forward_shapes_with_targets_and_initial_loss() -> None:
    model = tiny_model()
    idx = torch.randint(VOCAB, (4, BLOCK))
    targets = torch.randint(VOCAB, (4, BLOCK))
    logits, loss = model(idx, targets)
    assert logits is None  # training needs only the loss; model(idx) gives the logits
    assert loss.shape == ()
    assert abs(loss.item() - math.log(VOCAB)) < 0.1


def test_padded_vocab_loss_matches_unpadded_cross_entropy() -> None:
    model = tiny_model(pad_vocab_to=64)
    randomize_weights(model)
    assert model.head.weight.shape[0] == 64
    idx = torch.randint(VOCAB, (2, BLOCK))
    targets = torch.randint(VOCAB, (2, BLOCK))
    _, loss = model(idx, targets)
    logits, _ = model(idx)
    assert logits.shape[-1] == VOCAB
    assert torch.isfinite(logits).all()
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert abs(loss.item() - math.log(VOCAB)) > 0.2  # the randomised head makes this a real comparison


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_cross_entropy_matches_the_plain_loss_and_gradients(tie: bool, monkeypatch) -> None:
    monkeypatch.setattr(ChunkedCrossEntropy, "CHUNK", 7)  # several chunks, the last one partial
    model = tiny_model(pad_vocab_to=64, tie_weights=tie).double()
    randomize_weights(model)
    idx, targets = torch.randint(VOCAB, (3, BLOCK)), torch.randint(VOCAB, (3, BLOCK))
    _, fused = model(idx, targets)
    fused.backward()
    fused_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(idx)
    plain = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    plain.backward()
    torch.testing.assert_close(fused, plain)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused_grads[name], p.grad, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(idx, targets)[1], plain)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_chunked_cross_entropy_without_grad_mode_computes_the_loss_alone(mode) -> None:
    model = tiny_model()
    idx, targets = torch.randint(VOCAB, (2, BLOCK)), torch.randint(VOCAB, (2, BLOCK))

    def ops(context) -> set[str]:
        with context(), torch.profiler.profile() as prof:
            model(idx, targets)
        return {event.key for event in prof.key_averages()}

    assert "aten::addmm_" in ops(torch.enable_grad)  # the head's weight gradient, made in the forward
    assert "aten::addmm_" not in ops(mode)


@pytest.mark.parametrize(("tie", "fused"), [(False, False), (True, False), (False, True)])
def test_padded_logits_have_zero_probability_and_stay_put_under_adamw(tie: bool, fused: bool) -> None:
    model = tiny_model(pad_vocab_to=64, tie_weights=tie).train()
    bias = model.head.bias
    assert (bias[VOCAB:] == PAD_LOGIT).all()
    assert torch.isfinite(bias[:VOCAB]).all()
    # Weight decay on every parameter, the bias too, as a user's own optimiser might do.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    for _ in range(2):
        idx = torch.randint(VOCAB, (2, BLOCK))
        _, loss = model(idx, torch.randint(VOCAB, (2, BLOCK)))
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert (bias.grad[VOCAB:] == 0).all()
        assert bias.grad[:VOCAB].abs().sum() > 0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert (bias[VOCAB:] < PAD_LOGIT / 2).all()  # only weight decay moves them, by lr * wd per step
    with torch.no_grad():
        h = model.ln_f(torch.randn(4, model.config.n_embed) * 10)
        probs = torch.softmax(model.head(h), dim=-1)
    assert (probs[:, VOCAB:] == 0).all()


def test_tie_weights_shares_the_tensor() -> None:
    tied = tiny_model(tie_weights=True)
    assert tied.head.weight is tied.tok_emb.weight
    untied = tiny_model(tie_weights=False)
    assert untied.head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 64 * 32


def test_forward_past_block_size_raises() -> None:
    model = tiny_model()
    model(torch.zeros(1, BLOCK, dtype=torch.long))  # exactly one window is fine
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, BLOCK + 1, dtype=torch.long))
    cache = KVCache(model.config, 1, "cpu", torch.float32)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache, pos=BLOCK - 1)


def test_attn_dropout_none_means_dropout() -> None:
    model = tiny_model(dropout=0.3, attn_dropout=None)
    assert all(block.attn.attn_dropout == 0.3 for block in model.blocks)
    model = tiny_model(dropout=0.3, attn_dropout=0.1)
    assert all(block.attn.attn_dropout == 0.1 for block in model.blocks)
    model = tiny_model(dropout=0.3)  # the default: off
    assert all(block.attn.attn_dropout == 0.0 for block in model.blocks)


def test_attn_dropout_only_in_training() -> None:
    model = tiny_model(dropout=0.0, attn_dropout=0.5)
    idx = torch.randint(VOCAB, (1, 8))
    torch.testing.assert_close(model.eval()(idx)[0], model(idx)[0])
    torch.manual_seed(0)
    a = model.train()(idx)[0]
    assert not torch.allclose(a, model.eval()(idx)[0])


@pytest.mark.parametrize(("p", "shape"), [(0.25, (200, 500)), (0.3, (3, 7, 4763))])  # 4763: numel % 4 == 1
def test_cpu_dropout_drops_p_of_the_entries_and_scales_the_rest(p: float, shape: tuple[int, ...]) -> None:
    drop = Dropout(p)
    x = torch.full(shape, 2.0, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    scale = 65536 / (65536 - round(p * 65536))  # 1 / the keep probability as drawn (p to 16 bits)
    assert abs(scale * (1 - p) - 1) < 1e-5
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 * scale), rtol=0, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept * scale, rtol=0, atol=0)  # the gradient goes through the same mask
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # drawn from the global generator: seeded runs repeat
    assert not torch.equal(drop(x), y)
    assert drop.eval()(x) is x and Dropout(0.0)(x) is x


def test_cpu_dropout_with_p_near_one_is_torch_dropout() -> None:
    torch.manual_seed(0)
    assert Dropout(1 - 1e-6)(torch.ones(1000)).count_nonzero() <= 1  # 16 bits would round p to 1


def test_flops_per_token() -> None:
    model = tiny_model()
    f8, f16 = model.flops_per_token(8), model.flops_per_token(16)
    assert 0 < f8 < f16
    assert f16 - f8 == 12 * 2 * 32 * 8
    assert model.flops_per_token() == f16  # defaults to block_size
    assert f16 > 6 * 2 * 12 * 32 * 32  # at least the blocks' matmuls


@pytest.mark.parametrize("tie", [False, True])
def test_flops_per_token_counts_every_matmul_weight_once_and_no_lookup(tie: bool) -> None:
    """6 FLOPs per weight of the blocks, final LayerNorm and head, tied or not: embeddings are lookups."""
    model = tiny_model(tie_weights=tie)
    c = model.config
    matmul_weights = sum(p.numel() for m in (model.blocks, model.ln_f, model.head) for p in m.parameters())
    assert model.flops_per_token(8) == 6 * matmul_weights + 12 * c.n_layer * c.n_embed * 8


# --- Linear.split ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 24), (3, 5, 24), (7, 24)])
def test_split_linear_matches_plain_linear(column_major: bool, bias: bool, shape: tuple[int, ...], monkeypatch) -> None:
    torch.manual_seed(0)
    lin = Linear(24, 36, bias=bias)
    if column_major:  # as generation holds the widening weights
        lin.weight.data = lin.weight.data.t().contiguous().t()
    x = torch.randn(shape)
    calls = []

    def spy(fn):
        return lambda *args, **kwargs: calls.append(fn) or fn(*args, **kwargs)

    for name in ("bmm", "baddbmm"):
        monkeypatch.setattr(torch, name, spy(getattr(torch, name)))
    with torch.no_grad():
        expected = F.linear(x, lin.weight, lin.bias)
        lin.split(4)
        assert lin.blocks[0].shape == (4, 24, 9)  # four blocks of 9 output rows, seen as (in, out) matrices
        torch.testing.assert_close(lin(x), expected, rtol=1e-6, atol=1e-6)
        assert calls  # the split path ran
        lin.weight.mul_(2)  # the blocks are views: in-place updates are seen
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-6, atol=1e-6)


def test_split_linear_with_a_gradient_takes_plain_products() -> None:
    torch.manual_seed(0)
    lin, plain = Linear(8, 10), nn.Linear(8, 10)
    plain.load_state_dict(lin.state_dict())
    with torch.inference_mode():
        lin.split(2)  # as generation does
    x = torch.randn(3, 8)
    for module in (lin, plain):
        module(x).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, plain.weight.grad)
    torch.testing.assert_close(lin.bias.grad, plain.bias.grad)


def test_split_linear_falls_back_to_plain_products(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: calls.append(1))
    lin = Linear(8, 10)
    lin.split(3)  # gcd(10, 3) == 1: nothing to split
    assert lin.blocks is None
    lin.split(4)
    assert lin.blocks[0].size(0) == 2
    with torch.no_grad():
        many = torch.randn(SPLIT_MAX_ROWS + 1, 8)
        torch.testing.assert_close(lin(many), F.linear(many, lin.weight, lin.bias), rtol=0, atol=0)
        lin.split(1)
        assert lin.blocks is None
        torch.testing.assert_close(lin(many[:1]), F.linear(many[:1], lin.weight, lin.bias), rtol=0, atol=0)
    assert not calls
    assert list(lin.state_dict()) == ["weight", "bias"]  # checkpoints are nn.Linear's


@pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_plain_linear_and_keeps_gradients(bias: bool) -> None:
    torch.manual_seed(0)
    lin = Linear(24, 36, bias=bias)
    x = torch.randn(5, 3, 24)
    with torch.no_grad():
        expected = F.linear(x, lin.weight, lin.bias)
        lin.pack(15)
        assert lin.packed is not None
        torch.testing.assert_close(lin(x), expected, rtol=1e-5, atol=1e-5)
        lin.weight.mul_(2)  # a copy: the packed weight stays as it was until packed again
        torch.testing.assert_close(lin(x), expected, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bf16 product, not the fp32 copy
            assert lin(x).dtype == torch.bfloat16
    lin(x).sum().backward()  # a gradient: plain F.linear, with the weight as it is now
    torch.testing.assert_close(lin.weight.grad, x.reshape(-1, 24).sum(0).expand(36, 24))
    lin.pack(None)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=0, atol=0)
    assert list(lin.state_dict()) == (["weight", "bias"] if bias else ["weight"])


@pytest.mark.parametrize("packed", [False, True] if packing_available() else [False])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_linear_applies_relu_and_adds_the_residual(packed: bool, relu: bool, residual: bool) -> None:
    torch.manual_seed(0)
    lin = Linear(24, 36)
    x = torch.randn(5, 3, 24)
    stream = torch.randn(36, 3, 5).transpose(0, 2) if residual else None  # not contiguous
    expected = F.linear(x, lin.weight, lin.bias)
    expected = F.relu(expected) if relu else expected
    expected = expected if stream is None else stream + expected
    (weight_grad,) = torch.autograd.grad(expected.sum(), lin.weight)
    with torch.no_grad(), torch.profiler.profile() as prof:
        lin.pack(15 if packed else None)
        out = lin(x, relu=relu, residual=stream)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if residual:  # a residual of another dtype or a broadcast shape: added as torch adds them
        with torch.no_grad():
            torch.testing.assert_close(lin(x, relu=relu, residual=stream.double()), expected.double())
            torch.testing.assert_close(lin(x, relu=relu, residual=stream[0, 0]), expected - stream + stream[0, 0])
    # oneDNN writes the ReLU or the sum with its product; the sum of its ReLU's output is a separate add.
    separate = {"aten::relu": relu and not packed, "aten::add": residual and (relu or not packed)}
    assert {e.name for e in prof.events()} & set(separate) == {name for name, run in separate.items() if run}
    lin.pack(None)
    out = lin(x, relu=relu, residual=stream)
    out.sum().backward()  # the training path: a gradient through the ReLU and the add
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lin.weight.grad, weight_grad)


# --- KV cache -----------------------------------------------------------------------------------------------------


def test_kv_cache_shapes() -> None:
    cache = KVCache(tiny_config(), 3, "cpu", torch.float32)
    assert len(cache.kv) == 2
    assert cache.kv[0].shape == (2, 3, 4, BLOCK, 8)
    assert cache.capacity == BLOCK
    small = KVCache(tiny_config(), 3, "cpu", torch.float32, capacity=5)
    assert small.kv[0].shape == (2, 3, 4, 5, 8)
    for capacity in (0, BLOCK + 1):
        with pytest.raises(ValueError, match="capacity"):
            KVCache(tiny_config(), 3, "cpu", torch.float32, capacity=capacity)


@pytest.mark.parametrize("chunks", [[5, 4, 1], [1] * 10, [10], [3, 7, 6]])
def test_kv_cache_chunked_prefill_matches_full_forward(chunks: list[int]) -> None:
    model = tiny_model()
    randomize_weights(model)
    total = sum(chunks)
    idx = torch.randint(VOCAB, (2, total))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config, 2, "cpu", torch.float32)
        pieces, pos = [], 0
        for size in chunks:
            logits, _ = model(idx[:, pos : pos + size], cache=cache, pos=pos)
            pieces.append(logits)
            pos += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    # The logits really depend on the context, so a wrong cache would show.
    assert not torch.allclose(full[:, 0], full[:, -1], atol=1e-3)


@pytest.mark.parametrize("additive", [False, True])
def test_decode_step_matches_full_forward(additive: bool) -> None:
    """The fixed-shape step (every cache slot, a mask, garbage in the slots not yet written) gives the logits of
    a full forward at every position, with a boolean mask or its additive float form."""
    model = tiny_model()
    randomize_weights(model)
    idx = torch.randint(VOCAB, (2, BLOCK))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config, 2, "cpu", torch.float32)
        for kv in cache.kv:
            kv.normal_(std=100.0)  # unwritten slots must be masked out, whatever they hold
        for t in range(BLOCK):
            allowed = (torch.arange(BLOCK) <= t).expand(2, 1, 1, BLOCK)
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")) if additive else allowed
            positions = torch.full((2, 1), t)
            logits = model.decode_step(idx[:, t : t + 1], positions, torch.tensor([t]), mask, cache)
            torch.testing.assert_close(logits[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


def test_decode_attention_from_a_bf16_cache_is_as_accurate_as_sdpa() -> None:
    """Scores and softmax in fp32, as SDPA keeps them (bf16 scores had 1.6x SDPA's error here)."""
    torch.manual_seed(0)
    q, kv = torch.randn(3, 6, 1, 64), torch.randn(2, 3, 6, BLOCK * 16, 64)
    allowed = torch.rand(3, 1, 1, BLOCK * 16) > 0.3
    allowed[..., 0] = True
    exact = F.scaled_dot_product_attention(q.double(), kv[0].double(), kv[1].double(), attn_mask=allowed)
    q, kv = q.bfloat16(), kv.bfloat16()
    ours = _attend_one(q, kv, allowed)
    sdpa = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=allowed)
    assert ours.dtype == torch.bfloat16
    assert (ours.double() - exact).abs().max() <= 1.05 * (sdpa.double() - exact).abs().max()


def test_a_compiled_training_step_on_a_cpu_prints_no_dynamo_warning(monkeypatch) -> None:
    """Dynamo could not trace Tensor.new_empty in the chunked loss, and said so as every compiled CPU run started."""
    monkeypatch.setattr(torch._dynamo.utils, "warn_once_cache", set())  # (it warns once a process)
    torch._dynamo.reset()
    model = BabyGPT(GPTConfig(vocab_size=32, block_size=16, n_embed=16, n_head=2, n_layer=1))
    model.compile(backend="aot_eager")  # (dynamo's tracing, without inductor's code generation)
    x = torch.randint(32, (4, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(x, x)[1].backward()
    assert not [str(w.message) for w in caught if "Dynamo" in str(w.message)]
