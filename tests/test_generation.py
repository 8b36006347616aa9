"""Tests for babygpt_pl.generation: KV-cache decoding, batching, sampling, and text completion."""

from __future__ import annotations

import copy
import dataclasses
import gc
import itertools
import warnings
import weakref

import pytest
import torch
from gpt_helper import randomize_weights

from babygpt_pl import generation
from babygpt_pl.errors import Terminated, UserError
from babygpt_pl.generation import (
    Completion,
    GenerationConfig,
    GraphedDecoder,
    Sampling,
    complete,
    encode_prompt,
    generate,
    graphed_decoder,
    sample_next,
    sample_seed,
    stream,
)
from babygpt_pl.model import BabyGPT, GPTConfig, KVCache, Linear, packing_available
from babygpt_pl.tokenizer import CharTokenizer

VOCAB = list(" \nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV")
V = len(VOCAB)  # 50
BLOCK = 16
GREEDY = Sampling(temperature=0)
SAMPLED = Sampling(temperature=0.9)


def make_model(seed: int = 0, tie_weights: bool = False) -> BabyGPT:
    """A tiny fp32 model in eval mode with large random weights, so greedy decoding is varied, not constant."""
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=V, block_size=BLOCK, n_embed=32, n_head=4, n_layer=2, dropout=0.0, tie_weights=tie_weights
    )
    return randomize_weights(BabyGPT(config), seed + 1).eval()


def constant_model(bias: torch.Tensor) -> BabyGPT:
    """A model whose logits are ``bias`` at every position, whatever the input (all other weights are 0)."""
    model = make_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "head.bias":
                p.zero_()
        model.head.bias[:V] = bias
    return model


@pytest.fixture(scope="module")
def model() -> BabyGPT:
    return make_model()


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer(VOCAB)


def run(model: BabyGPT, prompts, n: int, sampling: Sampling = GREEDY, use_cache: bool = True, generator=None):
    return torch.stack(list(stream(model, prompts, n, sampling, use_cache, generator)), dim=1)


def record_logits(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Make stream's sample_next also record the last-position logits it is given."""
    seen: list[torch.Tensor] = []
    original = generation.sample_next

    def spy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(generation, "sample_next", spy)
    return seen


# --- KV cache vs recomputation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len", [1, 5, BLOCK - 1])
def test_cached_and_uncached_greedy_agree(model: BabyGPT, prompt_len: int) -> None:
    prompt = torch.randint(V, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    n = BLOCK - prompt_len + 1  # the last step reads a full window
    cached = generate(model, prompt, n, temperature=0, use_cache=True)
    uncached = generate(model, prompt, n, temperature=0, use_cache=False)
    assert cached.shape == (2, prompt_len + n)
    assert torch.equal(cached[:, :prompt_len], prompt)
    assert torch.equal(cached, uncached)
    assert len(set(cached[:, prompt_len:].flatten().tolist())) > 1  # not a constant output


@pytest.mark.parametrize(
    ("use_cache", "rows"),
    [(True, 1), (False, 1), (True, generation._PACK_MIN_ROWS)],  # 1 row: split products; more: oneDNN's (if built)
)
def test_stream_logits_match_full_forward_each_step(
    model: BabyGPT, monkeypatch: pytest.MonkeyPatch, use_cache: bool, rows: int
) -> None:
    logits_seen = record_logits(monkeypatch)
    prompts = [[4, 9, 17], [5, 9, 17], [30, 2, 8], [1, 1, 1]][:rows]
    n = 3 * BLOCK
    out = run(model, prompts, n, use_cache=use_cache).tolist()
    assert len(logits_seen) == n
    for row, prompt in enumerate(prompts):
        tokens = prompt + out[row]
        start = 0
        with torch.no_grad():
            for step, got in enumerate(logits_seen):
                end = len(prompt) + step  # tokens[:end] is the context of this step
                if use_cache:
                    # Documented: when the cache is full, its newest half window is prefilled again at positions 0..
                    if end - start > BLOCK:
                        start = end - BLOCK // 2
                else:
                    start = max(0, end - BLOCK)  # the tutorial's crop
                expected = model(torch.tensor([tokens[start:end]]))[0][0, -1]
                torch.testing.assert_close(got[row], expected, rtol=1e-5, atol=1e-5, msg=f"row {row} step {step}")
        assert start > 0  # the test went past the window


def test_cache_logits_inside_window_equal_full_forward(model: BabyGPT, monkeypatch: pytest.MonkeyPatch) -> None:
    logits_seen = record_logits(monkeypatch)
    prompt = [[1, 2], [30, 31]]
    n = BLOCK - 1
    out = run(model, prompt, n)
    full = torch.cat([torch.tensor(prompt), out], dim=1)
    with torch.no_grad():
        reference, _ = model(full[:, :-1])
    for step, got in enumerate(logits_seen):
        torch.testing.assert_close(got, reference[:, 1 + step], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("prompt_len", "new", "capacity"), [(3, 5, 8), (3, BLOCK - 3, BLOCK), (3, 3 * BLOCK, BLOCK)])
def test_the_cache_holds_only_the_slots_a_call_fills(
    model: BabyGPT, monkeypatch: pytest.MonkeyPatch, prompt_len: int, new: int, capacity: int
) -> None:
    made = []

    class Recorded(KVCache):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self.capacity)

    monkeypatch.setattr(generation, "KVCache", Recorded)
    out = run(model, [list(range(1, prompt_len + 1))], new)
    assert made == [capacity]
    assert out.shape == (1, new)


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_head_reads_one_position_per_row(model: BabyGPT, monkeypatch: pytest.MonkeyPatch, use_cache: bool) -> None:
    """Prefills (the prompt, a window re-read) compute no logits for positions nothing samples from."""
    rows = []
    monkeypatch.setattr(model.head, "forward", lambda x: rows.append(x.shape[:-1]) or torch.zeros(*x.shape[:-1], V))
    run(model, [[1, 2, 3, 4, 5], [6, 7]], 2 * BLOCK, use_cache=use_cache)
    assert len(rows) == 2 * BLOCK
    assert set(rows) == {(2, 1)}


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_past_the_window(model: BabyGPT, use_cache: bool) -> None:
    prompt = torch.tensor([[3, 4, 5], [6, 7, 8]])
    out = generate(model, prompt, 3 * BLOCK, temperature=0, use_cache=use_cache)
    assert out.shape == (2, 3 + 3 * BLOCK)
    assert out.dtype == torch.long
    assert ((out >= 0) & (out < V)).all()
    assert torch.equal(out[:, :3], prompt)


def test_cpu_decoding_sets_up_the_linears_and_restores_them(two_threads) -> None:
    model = make_model()
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = model.config.padded_vocab_size
    short = stream(model, [[3, 4]], 4, GREEDY)
    next(short)
    assert model.head.blocks[0].stride() == (rows // 2 * 32, 1, 32)  # a few tokens would not pay for the copies
    assert all(m.kept_column_major is None for m in linears)
    short.close()
    gen = stream(model, [[3, 4]], 40, GREEDY)
    try:
        next(gen)
        assert all(m.blocks[0].size(0) == 2 for m in linears)  # products split over the 2 threads
        widening = [model.blocks[0].attn.qkv, model.blocks[0].mlp.fc, model.head]
        assert all(m.blocks[0].data_ptr() == m.kept_column_major.data_ptr() for m in widening)  # read from copies
        assert model.head.blocks[0].stride() == (rows // 2, rows, 1)  # views of the column-major copy
        narrowing = model.blocks[0].mlp.proj
        assert narrowing.kept_column_major is None and narrowing.blocks[0].data_ptr() == narrowing.weight.data_ptr()
    finally:
        gen.close()  # an early stop restores the Linears too
    assert all(m.blocks is None and m.packed is None for m in linears)
    assert all(p.is_contiguous() and not p.is_inference() for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    model.train()(torch.tensor([[3, 4, 5]]), torch.tensor([[4, 5, 6]]))[1].backward()  # still trainable


def test_a_kept_column_major_copy_follows_the_weight(two_threads) -> None:
    model = make_model()
    head = model.head
    with torch.inference_mode():
        first = generate(model, torch.tensor([[3, 4]]), 40, temperature=0)
        kept = head.kept_column_major
        assert torch.equal(kept, head.weight) and kept.stride() == (1, head.out_features)
        assert generate(model, torch.tensor([[3, 4]]), 40, temperature=0).equal(first)
        assert head.kept_column_major is kept  # unchanged weights: the copy is reused
    head.weight.data[:V] = head.weight.data[:V].flip(0)  # through .data: the version counter does not move
    with torch.inference_mode():
        changed = generate(model, torch.tensor([[3, 4]]), 40, temperature=0)
        reference = generate(model, torch.tensor([[3, 4]]), 40, temperature=0, use_cache=False)
    assert head.kept_column_major is not kept and torch.equal(head.kept_column_major, head.weight)
    inside = slice(None, BLOCK + 1)  # past the window the two ways differ by design
    assert torch.equal(changed[:, inside], reference[:, inside]) and not torch.equal(changed, first)


@pytest.mark.parametrize("tie_weights", [False, True])
@pytest.mark.parametrize(
    ("new_tokens", "batch"),
    [(4, 1), (40, 1), (4, generation._PACK_MIN_ROWS), (40, generation._PACK_MIN_ROWS)],  # (40, many): oneDNN
)
def test_cpu_decode_layout_keeps_the_logits(two_threads, tie_weights: bool, new_tokens: int, batch: int) -> None:
    model = make_model(tie_weights=tie_weights)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    idx = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    packs = new_tokens >= generation._LAYOUT_MIN_TOKENS and batch >= generation._PACK_MIN_ROWS and packing_available()
    with torch.inference_mode():
        plain, plain_one = model(idx)[0], model(idx[:1, -1:])[0]
        with generation._cpu_decode_layout(model, new_tokens, batch):
            assert all((m.packed is not None) == packs and (m.blocks is None) == packs for m in linears)
            laid_out, laid_out_one = model(idx)[0], model(idx[:1, -1:])[0]  # 12 rows a product, then 1
        after = model(idx)[0]
    torch.testing.assert_close(laid_out, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(laid_out_one, plain_one, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, plain)  # the plain products again once the stream is over
    assert all(m.blocks is None and m.packed is None for m in linears)


def test_onednn_turned_off_is_respected(two_threads) -> None:
    model = make_model()
    off = torch.backends.mkldnn.flags(enabled=False)
    with off, torch.inference_mode(), generation._cpu_decode_layout(model, 40, generation._PACK_MIN_ROWS):
        assert model.head.packed is None and model.head.blocks is not None  # the split instead


def test_the_decode_state_is_not_copied_or_moved_with_the_model(two_threads) -> None:
    model = make_model()
    with torch.inference_mode():
        generate(model, torch.tensor([[3, 4]]), 40, temperature=0)
        with generation._cpu_decode_layout(model, 40, generation._PACK_MIN_ROWS if packing_available() else 1):
            twin = copy.deepcopy(model)
    assert model.head.kept_column_major is not None  # kept by the model itself
    assert all(
        m.blocks is None and m.packed is None and m.kept_column_major is None
        for m in twin.modules()
        if isinstance(m, Linear)
    )
    model.double()
    assert model.head.kept_column_major is None  # a copy of the old storage, dropped


def test_cpu_decoding_of_a_model_made_under_inference_mode() -> None:
    """vs_seed.py builds its models inside torch.inference_mode, so their parameters are inference tensors."""
    with torch.inference_mode():
        model = make_model()
        first = generate(model, torch.tensor([[3, 4]]), 5, temperature=0)
        again = generate(model, torch.tensor([[3, 4]]), 5, temperature=0)
    assert torch.equal(first, again) and model.head.weight.is_inference()


def test_cache_and_no_cache_agree_through_the_window_of_a_long_generation(model: BabyGPT) -> None:
    prompt = torch.tensor([[3]])
    n = 3 * BLOCK
    cached = generate(model, prompt, n, temperature=0, use_cache=True)
    uncached = generate(model, prompt, n, temperature=0, use_cache=False)
    assert torch.equal(cached[:, : BLOCK + 1], uncached[:, : BLOCK + 1])


def test_generate_zero_new_tokens_returns_input(model: BabyGPT) -> None:
    idx = torch.tensor([[1, 2, 3]])
    out = generate(model, idx, 0)
    assert torch.equal(out, idx)
    assert list(stream(model, [[1, 2, 3]], 0)) == []


def test_stream_rejects_bad_inputs(model: BabyGPT) -> None:
    with pytest.raises(UserError):
        list(stream(model, [[1, 2], []], 3))
    with pytest.raises(UserError):
        list(stream(model, [], 3))
    with pytest.raises(UserError):
        list(stream(model, [[1]], -1))


# --- batching ------------------------------------------------------------------------------------------------------

PROMPTS = [[3], [5, 6, 7, 8, 9], list(range(10, 10 + BLOCK - 1))]


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_prompts_match_generating_alone_inside_window(model: BabyGPT, use_cache: bool) -> None:
    n = 2  # the longest prompt fills the window after 1 step
    batched = run(model, PROMPTS, n, use_cache=use_cache)
    assert batched.shape == (3, n)
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(batched[row], run(model, [prompt], n, use_cache=use_cache)[0]), row
    short = [[3], [5, 6, 7, 8, 9]]
    n = BLOCK - 4  # stays inside the window for both rows
    batched = run(model, short, n, use_cache=use_cache)
    for row, prompt in enumerate(short):
        assert torch.equal(batched[row], run(model, [prompt], n, use_cache=use_cache)[0]), row


@pytest.mark.parametrize("path", ["cache", "fixed-shape step", "no cache"])
@pytest.mark.parametrize("sampling", [SAMPLED, Sampling(temperature=0.9, top_k=8, top_p=0.95, repetition_penalty=1.3)])
def test_a_generator_per_row_samples_each_row_as_alone(
    model: BabyGPT, path: str, sampling: Sampling, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one generator for the batch a row's samples depended on the rows beside it (generation.seed: on the
    other prompts, and on num_samples)."""
    monkeypatch.setattr(generation, "DRAWS", 5)  # fresh uniforms every 5 steps
    if path == "fixed-shape step":  # the CUDA graphs' step, run eagerly on the CPU
        monkeypatch.setattr(generation, "graphed_decoder", lambda *args: GraphedDecoder(*args))
    prompts, seeds, n = [[3], [5, 6, 7, 8, 9], [3]], [11, 12, 13], BLOCK - 5  # inside the window
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    batched = run(model, prompts, n, sampling, use_cache=path != "no cache", generator=generators)
    for row, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        alone = run(model, [prompt], n, sampling, path != "no cache", torch.Generator().manual_seed(seed))
        assert torch.equal(batched[row], alone[0]), row
    assert not torch.equal(batched[0], batched[2])  # the same prompt, other seeds


def test_no_new_tokens_runs_no_forward(model: BabyGPT, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "forward", None)  # called, it would raise
    assert list(stream(model, PROMPTS, 0)) == []


def test_one_generator_per_row_or_one_for_all(model: BabyGPT) -> None:
    with pytest.raises(ValueError, match="2 generators for 3 rows: give one per row, or one for all"):
        run(model, PROMPTS, 2, SAMPLED, generator=[torch.Generator(), torch.Generator()])


def test_batched_prompts_match_alone_past_window_without_cache(model: BabyGPT) -> None:
    # Long enough that the token buffer (two windows of new tokens) moves its newest window to the front twice,
    # with a prompt longer than the window, so the other rows' padding reaches past it.
    n = 5 * BLOCK
    prompts = [*PROMPTS, list(range(1, BLOCK + 5))]
    batched = run(model, prompts, n, use_cache=False)
    for row, prompt in enumerate(prompts):
        assert torch.equal(batched[row], run(model, [prompt], n, use_cache=False)[0]), row


def test_a_huge_max_new_tokens_reserves_nothing_up_front(model: BabyGPT) -> None:
    """Generate until a stop string, with a cap of a trillion: it used to allocate 8 bytes per token first."""
    tokens = stream(model, [[1, 2], [3]], 10**12, GREEDY)
    assert [next(tokens).shape for _ in range(3)] == [torch.Size([2])] * 3
    tokens.close()


def test_stream_accepts_tensor_prompts(model: BabyGPT) -> None:
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.equal(run(model, prompt, 4), run(model, prompt.tolist(), 4))


# --- Sampling ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"top_k": 0},
        {"top_k": -3},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": -0.2},
        {"repetition_penalty": 0.0},
        {"repetition_penalty": -1.0},
        {"repetition_penalty": float("nan")},  # the seen tokens' logits would be NaN, and argmax would pick one
        {"repetition_penalty": float("inf")},
    ],
)
def test_sampling_validation(kwargs: dict) -> None:
    with pytest.raises(UserError):
        Sampling(**kwargs)
    with pytest.raises(UserError):
        GenerationConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "generation.max_new_tokens must be >= 0, got -1"),
        ({"num_samples": 0}, "generation.num_samples must be >= 1, got 0"),
        ({"stop": ["\n\n", ""]}, "generation.stop holds an empty string"),  # it would end every sample at once
        ({"stop": "。"}, r"generation.stop must be a list of strings, e.g. \['。'\], not one string"),
        (
            {"stop": "[。, 1]"},
            r"generation.stop \[。, 1\]: 1 is not read as a string, so the list was read as one string; quote",
        ),
        ({"temperature": -1.0}, r"generation.temperature must be >= 0 \(0 is greedy\) and finite in fp32, got -1.0"),
        ({"temperature": 1e39}, r"generation.temperature must be >= 0 \(0 is greedy\) and finite in fp32, got 1e\+39"),
        ({"top_p": 1.5}, r"generation.top_p must be in \(0, 1\]"),
        ({"seed": 2**32 + 1}, r"generation.seed must be from 0 to 2\*\*32 - 1, got 4294967297"),
        ({"seed": -1}, r"generation.seed must be from 0 to 2\*\*32 - 1, got -1"),
        ({"output": ""}, "generation.output is empty: give a file name"),
        # Types, from Python (the CLI checks its own): else a TypeError from deep in torch.
        ({"max_new_tokens": 2.5}, "generation.max_new_tokens must be an integer, got 2.5"),
        ({"num_samples": "2"}, "generation.num_samples must be an integer, got '2'"),
        ({"top_k": 2.5}, r"generation.top_k must be an integer \(or unset\), got 2.5"),
        ({"top_k": True}, r"generation.top_k must be an integer \(or unset\), got True"),
        ({"top_p": "0.9"}, r"generation.top_p must be a number \(or unset\), got '0.9'"),
        ({"temperature": None}, "generation.temperature must be a number, got None"),
        ({"repetition_penalty": False}, "generation.repetition_penalty must be a number, got False"),
        ({"seed": 1.5}, r"generation.seed must be an integer \(or unset\), got 1.5"),
        ({"stop": ["a", 1]}, r"generation.stop must be a list of strings, got \['a', 1\]"),
        ({"oov": "skip"}, "generation.oov must be one of error, drop, replace, got 'skip'"),
        ({"use_cache": 1}, "generation.use_cache must be true or false, got 1"),
        ({"output": 5}, r"generation.output must be a file name \(or unset\), got 5"),
        ({"batch_size": 0}, r"generation.batch_size must be >= 1 \(null: all rows at once\), got 0"),
        ({"batch_size": 2.5}, r"generation.batch_size must be an integer \(or unset\), got 2.5"),
    ],
)
def test_generation_config_names_the_bad_value(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        GenerationConfig(**kwargs)


def test_sampling_valid_edges() -> None:
    Sampling(temperature=0, top_k=1, top_p=1.0, repetition_penalty=0.5)
    for seed in (0, 2**32 - 1):  # the 32 bits torch's CPU generator keeps
        torch.Generator().manual_seed(GenerationConfig(seed=seed).seed)
    Sampling(temperature=torch.finfo(torch.float32).max)


def test_generation_config_sampling() -> None:
    config = GenerationConfig(temperature=0.5, top_k=3, top_p=0.9, repetition_penalty=1.2, max_new_tokens=0)
    assert config.sampling == Sampling(0.5, 3, 0.9, 1.2)


def test_top_k_one_and_tiny_top_p_equal_greedy(model: BabyGPT) -> None:
    prompt = torch.tensor([[1, 2, 3], [7, 8, 9]])
    greedy = generate(model, prompt, 12, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, prompt, 12, temperature=1.5, top_k=1, generator=g), greedy)
    assert torch.equal(generate(model, prompt, 12, temperature=1.5, top_p=1e-6, generator=g), greedy)


def test_seeded_generator_is_reproducible(model: BabyGPT) -> None:
    prompt = torch.tensor([[1, 2, 3]])

    def sample(seed: int) -> torch.Tensor:
        return generate(model, prompt, 30, temperature=3.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_greedy_decoding_leaves_the_global_generator_alone(model: BabyGPT) -> None:
    """Greedy uses no random numbers, so it must not move the global generator (a caller's seeded run would shift)."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run(model, [[3, 4]], 2 * BLOCK, GREEDY)
    assert torch.equal(torch.rand(3), expected)


def test_sample_next_greedy_and_top_k_top_p_support() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 2.8]]).repeat(400, 1)
    assert sample_next(logits, GREEDY).tolist() == [1] * 400
    g = torch.Generator().manual_seed(0)
    top2 = sample_next(logits, Sampling(temperature=1.0, top_k=2), g)
    assert set(top2.tolist()) == {1, 2}
    # probs of [3, 2.9, 2.8] are ~[.37, .33, .30] of the 3 big ones (plus a little for the rest): 0.6 keeps 2.
    top_p = sample_next(logits, Sampling(temperature=1.0, top_p=0.6), g)
    assert set(top_p.tolist()) == {1, 2}
    everything = sample_next(logits, Sampling(temperature=1.0), g)
    assert {0, 1, 2, 4} <= set(everything.tolist())


def test_a_tiny_top_p_keeps_argmaxs_choice_where_two_logits_exp_to_the_same() -> None:
    logits = torch.tensor([[0.1, 0.1 + 1.5e-8, -1.0]])  # both best ones exp to exactly 1 after the max is taken
    assert sample_next(logits, Sampling(temperature=1.0, top_p=1e-6)).tolist() == sample_next(logits, GREEDY).tolist()


@pytest.mark.parametrize("bad", [-1, len(VOCAB)])
def test_generate_names_a_token_id_outside_the_vocabulary(model: BabyGPT, bad: int) -> None:
    """-1 was an IndexError in the embedding; an id up to the padded vocabulary was read without a word."""
    with pytest.raises(UserError, match=f"token ids are 0..{len(VOCAB) - 1} for this model, got {bad}"):
        generate(model, torch.tensor([[0, bad]]), 2)


def test_top_p_keeps_the_smallest_prefix_whose_mass_reaches_it_exactly() -> None:
    tied = torch.tensor([[0.0, 0.0, -30.0]]).repeat(400, 1)  # probabilities .5, .5 and ~0
    g = torch.Generator().manual_seed(0)
    assert len(set(sample_next(tied, Sampling(temperature=1.0, top_p=0.5), g).tolist())) == 1
    assert set(sample_next(tied, Sampling(temperature=1.0, top_p=0.51), g).tolist()) == {0, 1}


@pytest.mark.parametrize(
    "sampling",
    [Sampling(), Sampling(temperature=0), Sampling(temperature=1e-30), Sampling(0.7, top_k=3, top_p=0.8)]
    + [Sampling(1.3, repetition_penalty=1.5)],
)
def test_sample_next_leaves_its_inputs_alone(sampling: Sampling) -> None:
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0)) * 4
    seen, uniform = torch.rand(3, V) < 0.3, torch.rand(3, 1)
    before = (logits.clone(), seen.clone(), uniform.clone())
    token = sample_next(logits, sampling, seen=seen, uniform=uniform)
    assert all(torch.equal(a, b) for a, b in zip(before, (logits, seen, uniform), strict=True))
    if sampling.top_k is None and sampling.top_p is None and sampling.repetition_penalty == 1 and not sampling.greedy:
        # The inverse CDF of the normalised distribution, drawn with the same uniforms: the same tokens.
        cdf = torch.softmax(logits / sampling.temperature, dim=-1).cumsum(-1)
        assert torch.equal(token, torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(-1))


def test_a_tiny_temperature_or_penalty_tends_to_greedy_not_to_overflow() -> None:
    """Scores divided by 1e-40 (or by a penalty of 1e-300) overflow to inf, and inf - inf made NaN probabilities,
    which picked the last token of the vocabulary every time; 1e-46 rounds to 0 in fp32, and 0/0 is NaN."""
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 2.8]]).repeat(50, 1)
    g = torch.Generator().manual_seed(0)
    for temperature in (1e-40, 1e-46):
        assert sample_next(logits, Sampling(temperature=temperature), g).tolist() == [1] * 50
    seen = torch.tensor([[False, False, True, False, False]]).repeat(50, 1)
    promoted = sample_next(logits, Sampling(temperature=1.0, repetition_penalty=1e-300), g, seen=seen)
    assert promoted.tolist() == [2] * 50  # 2.9 / 1e-300 overflows; it is still the one best score


def test_repetition_penalty_demotes_seen_tokens() -> None:
    logits = torch.tensor([[2.0, 1.9, 0.5], [-1.0, -1.4, -3.0]])
    seen = torch.tensor([[True, False, False], [True, False, False]])
    assert sample_next(logits, GREEDY, seen=seen).tolist() == [0, 0]  # no penalty: argmax
    penalised = sample_next(logits, Sampling(temperature=0, repetition_penalty=1.5), seen=seen)
    # 2.0 / 1.5 < 1.9 and -1.0 * 1.5 < -1.4: a seen token with the highest logit is demoted in both signs.
    assert penalised.tolist() == [1, 1]
    # A penalty below 1 promotes seen tokens instead.
    assert sample_next(logits[:, [1, 0, 2]], Sampling(temperature=0, repetition_penalty=0.5), seen=seen).tolist() == [
        0,
        0,
    ]


def test_repetition_penalty_in_stream_tracks_prompt_and_generated_tokens() -> None:
    model = constant_model(5 - 0.1 * torch.arange(V))  # logits prefer 0, then 1, then 2, ...
    assert run(model, [[0]], 5).tolist() == [[0] * 5]
    penalised = Sampling(temperature=0, repetition_penalty=10)
    # The prompt's 0 is seen, so the first new token is 1; every generated token is then seen in turn.
    assert run(model, [[0]], 5, penalised).tolist() == [[1, 2, 3, 4, 5]]
    assert run(model, [[2, 0]], 4, penalised).tolist() == [[1, 3, 4, 5]]
    # Batched rows track their own tokens (the left padding of the short row is not a "seen" token 0).
    assert run(model, [[1, 2, 3], [5]], 3, penalised).tolist() == [[0, 4, 5], [0, 1, 2]]
    assert run(model, [[1, 2, 3], [0]], 3, penalised).tolist() == [[0, 4, 5], [1, 2, 3]]


# --- text level ----------------------------------------------------------------------------------------------------


def fake_stream(text: str, tokenizer: CharTokenizer, calls: list | None = None):
    """A replacement for generation.stream that emits ``text`` on every row, ignoring the model."""

    def fake(model, prompts, max_new_tokens, *args, **kwargs):
        if calls is not None:
            calls.append({"prompts": [list(p) for p in prompts], "max_new_tokens": max_new_tokens})
        for token in tokenizer.encode(text)[:max_new_tokens]:
            yield torch.full((len(prompts),), token, dtype=torch.long)

    return fake


def test_complete_cuts_at_stop_string(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "stream", fake_stream("abc\n\ndef", tokenizer))
    pieces: list[tuple[int, str]] = []
    config = GenerationConfig(max_new_tokens=20, stop=["\n\n"])
    (result,) = complete(model, tokenizer, ["ab"], config, on_text=lambda row, piece: pieces.append((row, piece)))
    assert isinstance(result, Completion)
    assert result.prompt == "ab"
    assert result.text == "abc"
    assert result.stopped is True
    assert result.tokens == 5  # the stop string's tokens were generated
    assert "".join(p for _, p in pieces) == "abc"  # the first "\n" of the stop string is never streamed
    assert all(row == 0 for row, _ in pieces)


def test_streamed_text_is_the_whole_text_when_no_stop_string_completes(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "stream", fake_stream("abc\n", tokenizer))
    pieces: list[str] = []
    config = GenerationConfig(max_new_tokens=4, stop=["\n\n"])
    (result,) = complete(model, tokenizer, ["ab"], config, on_text=lambda row, piece: pieces.append(piece))
    assert result.text == "abc\n"
    assert "".join(pieces) == "abc\n"  # the held-back "\n" is flushed at the end


def test_complete_without_stop_runs_to_max_new_tokens(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "stream", fake_stream("abc\n\ndef", tokenizer))
    monkeypatch.setattr(generation.time, "perf_counter", itertools.count(10.0, 2.0).__next__)  # the batch: 2 s
    (result,) = complete(model, tokenizer, ["ab"], GenerationConfig(max_new_tokens=6, stop=["zz"]))
    assert result.text == "abc\n\nd"
    assert result.stopped is False
    assert result.tokens == 6
    assert (result.seconds, result.tokens_per_s) == (2.0, 3.0)


def test_complete_first_stop_string_wins(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "stream", fake_stream("xyzabcdef", tokenizer))
    (result,) = complete(model, tokenizer, ["a"], GenerationConfig(max_new_tokens=20, stop=["de", "bc"]))
    assert result.text == "xyza"
    assert result.stopped


@pytest.mark.parametrize("stop", [["c", "bc"], ["bc", "c"]])
def test_of_stop_strings_ending_together_the_longest_is_cut(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch, stop: list[str]
) -> None:
    """Whatever their order: with ["c", "bc"] the text once kept the "b" of "bc"."""
    monkeypatch.setattr(generation, "stream", fake_stream("xyzabcdef", tokenizer))
    (result,) = complete(model, tokenizer, ["a"], GenerationConfig(max_new_tokens=20, stop=stop))
    assert result.text == "xyza"


def test_complete_num_samples(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    config = GenerationConfig(max_new_tokens=5, num_samples=3, seed=0, temperature=2.0)
    results = complete(model, tokenizer, ["ab", "xyz"], config)
    assert len(results) == 6
    assert [(r.prompt, r.sample) for r in results] == [(p, s) for p in ("ab", "xyz") for s in range(3)]
    assert all(len(r.text) == 5 and r.tokens == 5 and not r.stopped for r in results)
    assert all(set(r.text) <= set(VOCAB) for r in results)
    # The samples of one prompt are independent draws, not copies of one.
    assert len({r.text for r in results[:3]}) > 1


def test_with_a_seed_a_prompts_samples_do_not_depend_on_the_rest_of_the_batch(
    model: BabyGPT, tokenizer: CharTokenizer
) -> None:
    def texts(prompts: list[str], num_samples: int) -> list[str]:
        config = GenerationConfig(max_new_tokens=8, num_samples=num_samples, seed=7, temperature=3.0)
        return [r.text for r in complete(model, tokenizer, prompts, config)]

    alone = texts(["ab"], 1)
    assert texts(["ab", "xyz"], 1)[0] == alone[0]
    two = texts(["ab"], 2)
    assert two[0] == alone[0] and two[1] != alone[0]  # the first sample as with one; the second its own
    assert texts(["xyz", "ab"], 2)[2:] == two


def test_rows_are_generated_batch_size_at_a_time_with_the_same_texts(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = []
    original = generation.stream
    monkeypatch.setattr(generation, "stream", lambda m, rows, *a: batches.append(len(rows)) or original(m, rows, *a))
    pieces: dict[int, str] = {}

    def texts(batch_size: int | None) -> list[str]:
        config = GenerationConfig(max_new_tokens=8, num_samples=2, seed=3, temperature=3.0, batch_size=batch_size)
        on_text = (lambda row, piece: pieces.update({row: pieces.get(row, "") + piece})) if batch_size else None
        return [r.text for r in complete(model, tokenizer, ["ab", "xyz", "q"], config, on_text=on_text)]

    whole = texts(None)
    assert texts(4) == whole and batches == [6, 4, 2]
    assert pieces == dict(enumerate(whole))  # streamed under each row's own index, not its batch's


@pytest.mark.parametrize("config", [GenerationConfig(temperature=0), GenerationConfig(seed=4, temperature=3.0)])
def test_past_the_window_a_rows_text_is_its_text_alone(
    model: BabyGPT, tokenizer: CharTokenizer, config: GenerationConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's cache moves on when its longest row fills the window: rows of other prompt lengths go in batches
    of their own, else a shorter row dropped its oldest characters sooner than alone."""
    batches = []
    original = generation.stream
    monkeypatch.setattr(generation, "stream", lambda m, rows, *a: batches.append(len(rows)) or original(m, rows, *a))
    prompts = ["ab", "xyz", "cd", "q"]

    def texts(prompts: list[str], max_new_tokens: int) -> list[str]:
        run = dataclasses.replace(config, max_new_tokens=max_new_tokens, num_samples=2, batch_size=3)
        return [r.text for r in complete(model, tokenizer, prompts, run)]

    past = texts(prompts, 3 * BLOCK)
    assert past == [text for prompt in prompts for text in texts([prompt], 3 * BLOCK)]
    assert batches == [3, 1, 2, 2] + [2] * 4  # by length: "ab" and "cd"'s four rows three at a time, then alone
    batches.clear()
    texts(prompts, BLOCK - 3)  # inside the window: the rows as they come
    assert batches == [3, 3, 2]


def test_with_a_seed_each_prompt_and_sample_draws_from_its_own_stream(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeded by the seed and the sample's number alone, the first samples of all prompts drew the same numbers
    (two prompts then ended in the same characters)."""
    seeds = []
    monkeypatch.setattr(generation, "stream", lambda *args: seeds.append([g.initial_seed() for g in args[5]]) or [])
    complete(model, tokenizer, ["ab", "xy", "ab"], GenerationConfig(num_samples=2, seed=7))
    ((ab0, ab1, xy0, xy1, again0, again1),) = seeds
    assert len({ab0, ab1, xy0, xy1}) == 4 and (again0, again1) == (ab0, ab1)  # a prompt's own, whatever beside it
    assert ab0 != sample_seed(8, "ab", 0)


@pytest.mark.parametrize("seed", [5, None])  # a generator per sample; the global one
def test_a_seeds_samples_do_not_depend_on_the_default_dtype(model: BabyGPT, tokenizer: CharTokenizer, seed) -> None:
    """Under --trainer.precision 64-true the default dtype is fp64, and the generators' fp64 uniforms were other
    numbers: other text for the same seed."""

    def texts(m: BabyGPT) -> list[str]:
        torch.manual_seed(1)  # (the global generator, for ``stream`` with no generator)
        if seed is None:
            return [run(m, [[3, 4]], 20, SAMPLED)[0].tolist()]
        config = GenerationConfig(max_new_tokens=20, num_samples=2, seed=seed, temperature=3.0)
        return [r.text for r in complete(m, tokenizer, ["ab", "xyz"], config)]

    single = texts(model)
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(2))
    drawn = sample_next(logits, SAMPLED, generator=torch.Generator().manual_seed(3))  # its own uniforms
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert texts(copy.deepcopy(model).double()) == single
        assert torch.equal(sample_next(logits.double(), SAMPLED, generator=torch.Generator().manual_seed(3)), drawn)
    finally:
        torch.set_default_dtype(default)


def test_complete_seed_reproducible(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    def texts(seed: int) -> list[str]:
        config = GenerationConfig(max_new_tokens=20, num_samples=2, seed=seed, temperature=3.0)
        return [r.text for r in complete(model, tokenizer, ["ab"], config)]

    assert texts(5) == texts(5)
    assert texts(5) != texts(6)


def test_complete_greedy_matches_generate(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    (result,) = complete(model, tokenizer, ["hello"], GenerationConfig(max_new_tokens=8, temperature=0))
    ids = generate(model, torch.tensor([tokenizer.encode("hello")]), 8, temperature=0)[0, 5:]
    assert result.text == tokenizer.decode(ids.tolist())


def test_complete_empty_prompt_raises(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    with pytest.raises(UserError, match="empty"):
        complete(model, tokenizer, ["ab", ""], GenerationConfig(max_new_tokens=2))
    with pytest.raises(UserError, match="empty"):
        complete(model, tokenizer, ["??"], GenerationConfig(max_new_tokens=2, oov="drop"))


def test_complete_refuses_one_string_for_the_list_of_prompts(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    # A str is a sequence: "ab" would silently be the two prompts "a" and "b".
    with pytest.raises(TypeError, match=r"prompts must be a list of strings, e.g. \['ab'\], not one string"):
        complete(model, tokenizer, "ab", GenerationConfig(max_new_tokens=2))


def test_complete_long_prompt_is_cropped_with_warning(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(generation, "stream", fake_stream("abc", tokenizer, calls))
    warnings: list[str] = []
    prompt = "abcdefghijklmnopqrstuvwxyz"  # 26 > BLOCK
    complete(model, tokenizer, [prompt], GenerationConfig(max_new_tokens=3), warn=warnings.append)
    assert len(warnings) == 1
    assert "26" in warnings[0] and str(BLOCK) in warnings[0]
    assert calls[0]["prompts"] == [tokenizer.encode(prompt[-BLOCK:])]
    # A prompt that fits is passed through without a warning.
    complete(model, tokenizer, [prompt[:BLOCK]], GenerationConfig(max_new_tokens=3), warn=warnings.append)
    assert len(warnings) == 1
    assert calls[1]["prompts"] == [tokenizer.encode(prompt[:BLOCK])]


def test_complete_long_prompt_really_generates(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    warnings: list[str] = []
    prompt = "abcdefghijklmnopqrstuvwxyz"
    (result,) = complete(
        model, tokenizer, [prompt], GenerationConfig(max_new_tokens=4, temperature=0), warn=warnings.append
    )
    (short,) = complete(model, tokenizer, [prompt[-BLOCK:]], GenerationConfig(max_new_tokens=4, temperature=0))
    assert warnings
    assert result.text == short.text
    assert len(result.text) == 4


def test_complete_oov_policies(model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="vocabulary"):
        complete(model, tokenizer, ["ab?c"], GenerationConfig(max_new_tokens=2))
    calls: list[dict] = []
    monkeypatch.setattr(generation, "stream", fake_stream("xy", tokenizer, calls))
    (result,) = complete(model, tokenizer, ["ab?c"], GenerationConfig(max_new_tokens=2, oov="drop"))
    assert result.prompt == "ab?c"
    assert result.text == "xy"
    assert calls[0]["prompts"] == [tokenizer.encode("abc")]
    complete(model, tokenizer, ["ab?c"], GenerationConfig(max_new_tokens=2, oov="replace"))
    assert calls[1]["prompts"] == [tokenizer.encode("ab c")]


def test_encode_prompt(tokenizer: CharTokenizer) -> None:
    warnings: list[str] = []
    assert encode_prompt(tokenizer, "abc", 2, warn=warnings.append) == tokenizer.encode("bc")
    assert len(warnings) == 1
    assert encode_prompt(tokenizer, "abc", 3, warn=warnings.append) == tokenizer.encode("abc")
    assert len(warnings) == 1
    with pytest.raises(UserError):
        encode_prompt(tokenizer, "", 3)


def test_complete_max_new_tokens_zero(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    results = complete(model, tokenizer, ["ab"], GenerationConfig(max_new_tokens=0))
    assert [(r.text, r.tokens, r.stopped) for r in results] == [("", 0, False)]


def test_sampling_follows_the_distribution_and_never_picks_impossible_tokens() -> None:
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    logits = probs.clamp_min(1e-45).log().masked_fill(probs == 0, float("-inf")).repeat(20000, 1)
    draws = sample_next(logits, Sampling(), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5) / len(draws)
    assert freq[1] == 0 and freq[4] == 0
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


# --- the fixed-shape decode step that CUDA graphs capture ----------------------------------------------------------


def sampled_run(
    model: BabyGPT,
    prompts: list,
    n: int,
    fixed_shape: bool,
    compile: bool = False,
    sampling: Sampling = SAMPLED,
) -> tuple[torch.Tensor, list]:
    """Tokens and per-step logits of a seeded sampled decode, through the fixed-shape step (run on the CPU,
    where it is not captured; compiled or not) or through the ordinary cached forward. The logits are not
    recorded from a compiled step: the recording would be traced into it, and each new length recompiles."""
    built: list[GraphedDecoder] = []

    def build(model: BabyGPT, batch_size: int, sampling: Sampling, _compile: bool = False) -> GraphedDecoder:
        built.append(GraphedDecoder(model, batch_size, sampling, compile))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        if fixed_shape:
            patch.setattr(generation, "graphed_decoder", build)
        seen = [] if compile else record_logits(patch)
        tokens = run(model, prompts, n, sampling, generator=torch.Generator().manual_seed(3))
    assert len(built) == fixed_shape
    return tokens, seen


FILTERED = Sampling(temperature=0.9, top_k=8, top_p=0.95, repetition_penalty=1.3)


@pytest.mark.parametrize(
    ("prompts", "compile", "sampling"),
    [
        ([[4, 9, 17]], False, SAMPLED),
        (PROMPTS, False, SAMPLED),
        (PROMPTS, False, FILTERED),
        pytest.param(PROMPTS, True, FILTERED, marks=pytest.mark.slow),
    ],
)
def test_fixed_shape_decode_matches_eager_decode(
    model: BabyGPT, prompts: list, compile: bool, sampling: Sampling, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixed-shape step samples inside the graph: the same tokens from the same uniforms, the penalty's
    record of seen tokens kept across graph steps, chunks of steps, prefills and fresh batches of uniforms."""
    monkeypatch.setattr(generation, "DRAWS", 7)  # a fresh batch of uniforms mid-window and right after a prefill
    monkeypatch.setattr(generation, "CHUNK", 3)  # chunks that the draws, the window and the last token cut short
    chunks = []
    run_steps = GraphedDecoder._run
    monkeypatch.setattr(GraphedDecoder, "_run", lambda self, steps=1: chunks.append(steps) or run_steps(self, steps))
    n = 3 * BLOCK  # inside the window, then past it, where the cache refills its newest half
    eager_tokens, eager_logits = sampled_run(model, prompts, n, fixed_shape=False, sampling=sampling)
    fixed_tokens, fixed_logits = sampled_run(model, prompts, n, fixed_shape=True, compile=compile, sampling=sampling)
    assert 1 in chunks and 3 in chunks
    assert torch.equal(fixed_tokens, eager_tokens)
    if compile:
        return
    assert len(fixed_logits) == len(eager_logits) == n
    for step, (fixed, eager) in enumerate(zip(fixed_logits, eager_logits, strict=True)):
        torch.testing.assert_close(fixed, eager, rtol=1e-5, atol=1e-5, msg=f"step {step}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(
    ("sampling", "compile"), [(GREEDY, False), (SAMPLED, False), (FILTERED, False), (FILTERED, True)]
)
def test_cuda_graph_decode_matches_eager_decode_on_a_gpu(sampling: Sampling, compile: bool) -> None:
    gpu = make_model(seed=4).cuda()
    n = 3 * BLOCK

    def decode(cuda_graph: bool) -> torch.Tensor:
        generator = torch.Generator("cuda").manual_seed(3)
        return torch.stack(list(stream(gpu, PROMPTS, n, sampling, True, generator, cuda_graph, compile)), dim=1)

    eager = decode(cuda_graph=False)
    graphed = decode(cuda_graph=True)
    (decoder,) = generation._DECODERS[gpu].values()
    assert set(decoder.graphs) == {1, generation.CHUNK}  # captured, not fallen back to eager
    assert torch.equal(graphed, eager)


def test_graphed_decoder_only_on_cuda_in_eval_mode(model: BabyGPT) -> None:
    assert graphed_decoder(model, 1) is None  # a CPU model decodes eagerly: no graph, no error
    if torch.cuda.is_available():
        gpu = make_model().cuda()
        assert graphed_decoder(gpu, 2) is graphed_decoder(gpu, 2) is not None  # captured once, reused
        assert graphed_decoder(gpu.train(), 2) is None  # dropout draws new numbers each call


@pytest.fixture
def graphs_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let graphed_decoder build (uncaptured) decoders on the CPU, so its bookkeeping runs here."""
    monkeypatch.setattr(generation, "_graphs_apply", lambda model: not model.training)
    monkeypatch.setattr(GraphedDecoder, "capture", lambda self: None)


def test_fixed_shape_decode_is_not_fooled_by_garbage_in_unused_slots(
    model: BabyGPT, graphs_on_cpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh cache holds whatever memory held; the fixed-shape step reads every slot, and a masked-out inf
    (inf - inf) or NaN would still make the softmax NaN."""
    prompts = [[3, 4], [5, 6, 7, 8, 9]]
    eager = torch.stack(list(stream(model, prompts, 2 * BLOCK, GREEDY, cuda_graph=False)), dim=1)
    allocate = KVCache.__init__

    def allocate_garbage(self, *args, **kwargs) -> None:
        allocate(self, *args, **kwargs)
        for kv in self.kv:
            kv.fill_(float("inf"))

    monkeypatch.setattr(KVCache, "__init__", allocate_garbage)
    fresh = make_model(seed=0)  # the same weights, a new decoder
    fixed = torch.stack(list(stream(fresh, prompts, 2 * BLOCK, GREEDY)), dim=1)
    assert generation._DECODERS.get(fresh)
    assert torch.equal(fixed, eager)


def test_decoder_is_reused_not_shared_and_lets_its_model_go(graphs_on_cpu) -> None:
    model = make_model(seed=1)
    alone = [run(model, [[3, 4]], 6, use_cache=True)[0].tolist(), run(model, [[7]], 6, use_cache=True)[0].tolist()]
    first = stream(model, [[3, 4]], 6, GREEDY)
    tokens_first = [int(next(first))]
    decoder = graphed_decoder(model, 1, GREEDY)
    assert decoder is None  # the one decoder of batch size 1 is in use by `first`
    second = [int(t) for t in stream(model, [[7]], 6, GREEDY)]  # decodes eagerly meanwhile
    tokens_first += [int(t) for t in first]
    assert [tokens_first, second] == alone
    assert graphed_decoder(model, 1, GREEDY) is graphed_decoder(model, 1, GREEDY) is not None  # released, and reused
    ref = weakref.ref(model)
    del model, decoder
    gc.collect()
    assert ref() is None  # the decoder registry does not keep a model alive


def test_a_sigterm_during_capture_is_not_taken_for_a_failed_capture(graphs_on_cpu, monkeypatch) -> None:
    """The capture's fallback catches Exception; Terminated (predict's SIGTERM) must go through it."""

    def terminated(self) -> None:
        raise Terminated

    monkeypatch.setattr(GraphedDecoder, "capture", terminated)
    with pytest.raises(Terminated):
        generate(make_model(seed=3), torch.tensor([[3, 4]]), 5, temperature=0)


def test_a_failed_capture_warns_once_and_decodes_eagerly(graphs_on_cpu, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self) -> None:
        raise RuntimeError("no graphs today")

    monkeypatch.setattr(GraphedDecoder, "capture", fail)
    fresh = make_model(seed=2)
    prompt = torch.tensor([[3, 4]])
    eager = generate(fresh, prompt, 5, temperature=0, cuda_graph=False)
    with pytest.warns(UserWarning, match="no graphs today"):
        first = generate(fresh, prompt, 5, temperature=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is remembered: no second capture, no second warning
        again = generate(fresh, prompt, 5, temperature=0)
    assert torch.equal(first, eager) and torch.equal(again, eager)


def test_a_failed_compile_captures_the_step_uncompiled(graphs_on_cpu, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile refuses a 9th compilation of one function (fullgraph): the graph must still be captured."""

    def fail_compiled(self) -> None:
        if self.step is not generation._decode_next:
            raise RuntimeError("recompile limit")

    monkeypatch.setattr(GraphedDecoder, "capture", fail_compiled)
    fresh = make_model(seed=2)
    with pytest.warns(UserWarning, match="compiling the decode step failed, capturing it uncompiled: recompile limit"):
        decoder = graphed_decoder(fresh, 1, GREEDY, compile=True)
    assert decoder is not None and decoder.step is generation._decode_next


def test_complete_names_the_unknown_characters_of_every_prompt(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    with pytest.raises(UserError, match=r"2 character\(s\) not in the model's vocabulary: '#%'"):
        complete(model, tokenizer, ["ab#", "cd%"], GenerationConfig(max_new_tokens=2))


def test_complete_without_a_seed_ignores_the_global_seed(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    """seed_everything fixes the global generator: an unseeded run must still differ from the last one."""
    config = GenerationConfig(max_new_tokens=30, temperature=2.0)
    texts = []
    for _ in range(2):
        torch.manual_seed(1337)
        texts.append(complete(model, tokenizer, ["ab"], config)[0].text)
    assert texts[0] != texts[1]


def test_a_stopped_sample_reports_its_own_time(
    model: BabyGPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(1000))
    monkeypatch.setattr(generation.time, "perf_counter", lambda: float(next(clock)))  # one tick per reading
    config = GenerationConfig(max_new_tokens=8, stop=["\n\n"])
    monkeypatch.setattr(generation, "stream", two_row_stream("ab\n\ncdef", "abcdefgh", tokenizer))
    stopped, full = complete(model, tokenizer, ["a", "b"], config)
    assert stopped.stopped and not full.stopped
    assert stopped.seconds < full.seconds
    assert full.tokens_per_s == full.tokens / full.seconds


def two_row_stream(first: str, second: str, tokenizer: CharTokenizer):
    def fake(model, prompts, max_new_tokens, *args, **kwargs):
        for a, b in zip(tokenizer.encode(first), tokenizer.encode(second), strict=True):
            yield torch.tensor([a, b])

    return fake


@pytest.mark.parametrize("idx", [torch.tensor([1, 2]), torch.tensor([[1.0, 2.0]])])
def test_generate_names_an_idx_that_is_not_a_batch_of_token_ids(model: BabyGPT, idx: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"idx must be token ids of shape \(batch, tokens\), got torch"):
        generate(model, idx, 3)


def test_complete_without_prompts_says_so(model: BabyGPT, tokenizer: CharTokenizer) -> None:
    with pytest.raises(UserError, match="no prompt: give at least one"):
        complete(model, tokenizer, [], GenerationConfig(max_new_tokens=2))
