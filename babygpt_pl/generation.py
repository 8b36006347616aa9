"""Sampling from a BabyGPT with a preallocated KV cache.

Token level: :func:`stream` yields the next token of every row, one step at a time, for prompts of
different lengths (left-padded, with per-row positions and a padding mask); :func:`generate` collects it
into one tensor. Text level: :func:`complete` adds the tokenizer, ``num_samples``, stop strings and timing.

Past ``block_size`` (the learned position table ends there) the cache keeps the most recent half window:
when it is full, the last ``block_size // 2`` tokens are prefilled again at positions ``0..`` in one
forward pass and decoding goes on from there. That is one prefill of half a window per half window of new
tokens, instead of a full forward per token. Without the cache, every step re-reads the last ``block_size``
tokens (the tutorial's crop), so the two agree exactly inside the window and differ after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import get_args

import torch

from babygpt_pl.errors import UserError, refuse_unquoted_items
from babygpt_pl.errors import warn as warn_user
from babygpt_pl.model import BabyGPT, KVCache, Linear, packing_available
from babygpt_pl.tokenizer import CharTokenizer, OOVPolicy


def _require(name: str, value: object, kinds: tuple[type, ...], what: str) -> None:
    """A one-line error for a value of the wrong type from Python (the CLI checks types itself): else a
    TypeError from deep in torch, or from a comparison below. A bool is no number here."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise UserError(f"{name} must be {what}, got {value!r}")


_NUMBER = (int, float)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``temperature=0`` is greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        _require("temperature", self.temperature, _NUMBER, "a number")
        _require("top_k", self.top_k, (int, type(None)), "an integer (or unset)")
        _require("top_p", self.top_p, (*_NUMBER, type(None)), "a number (or unset)")
        _require("repetition_penalty", self.repetition_penalty, _NUMBER, "a number")
        if not 0 <= self.temperature <= torch.finfo(torch.float32).max:  # (beyond, the logits divide to 0s)
            raise UserError(f"temperature must be >= 0 (0 is greedy) and finite in fp32, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k must be >= 1 (or unset), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1] (or unset), got {self.top_p}")
        if not 0 < self.repetition_penalty < math.inf:  # (NaN or inf would make the seen tokens' logits NaN)
            raise UserError(f"repetition_penalty must be > 0 and finite (1 disables it), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        """Argmax: a temperature of 0, or so small that dividing the fp32 logits by it would make 0/0."""
        return self.temperature < torch.finfo(torch.float32).tiny


@dataclass
class GenerationConfig:
    """What ``predict``, ``chat`` and the sample logger generate; every field is a command-line option.

    Args:
        max_new_tokens: characters to generate per sample.
        temperature: 0 is greedy; higher is more adventurous.
        top_k: sample only from the k most likely characters.
        top_p: sample only from the smallest set of characters whose probability reaches top_p.
        repetition_penalty: > 1 discourages characters already in the context (1 disables it).
        num_samples: continuations per prompt.
        batch_size: rows (prompts x samples) generated together, each batch with a KV cache of its own (null: all
            at once). A row's text does not depend on it (up to float rounding).
        seed: makes sampling reproducible (None: a different result each run).
        stop: stop a sample at the first of these strings, e.g. "\\n\\n" for the end of a poem.
        oov: what to do with prompt characters outside the vocabulary: error, drop, or replace (with a space).
        use_cache: decode with the KV cache (False recomputes the whole window per token).
        cuda_graph: on a CUDA device, replay each decode step from a CUDA graph (ignored on a CPU).
        compile: on a CUDA device, also fuse the graph's kernels with torch.compile: faster per token, after
            a compilation of tens of seconds on the first call. Worth it for long or many generations.
        output: also write one JSON line per sample (prompt, text, tokens, seconds, sample, stopped,
            tokens_per_s) to this file.
    """

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_samples: int = 1
    batch_size: int | None = 64
    seed: int | None = None
    stop: list[str] | str = field(default_factory=list)  # (a string: refused below with an example)
    oov: OOVPolicy = "error"
    use_cache: bool = True
    cuda_graph: bool = True
    compile: bool = False
    output: str | None = None

    def __post_init__(self) -> None:
        try:
            _ = self.sampling  # validate now, not at the first sample
        except UserError as err:  # named as the option that sets it
            raise UserError(f"generation.{err}") from None
        for name in ("max_new_tokens", "num_samples"):
            _require(f"generation.{name}", getattr(self, name), (int,), "an integer")
        _require("generation.batch_size", self.batch_size, (int, type(None)), "an integer (or unset)")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"generation.batch_size must be >= 1 (null: all rows at once), got {self.batch_size}")
        _require("generation.seed", self.seed, (int, type(None)), "an integer (or unset)")
        for name in ("use_cache", "cuda_graph", "compile"):
            _require(f"generation.{name}", getattr(self, name), (bool,), "true or false")
        _require("generation.output", self.output, (str, type(None)), "a file name (or unset)")
        if self.oov not in get_args(OOVPolicy):
            raise UserError(f"generation.oov must be one of {', '.join(get_args(OOVPolicy))}, got {self.oov!r}")
        if self.max_new_tokens < 0:
            raise UserError(f"generation.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise UserError(f"generation.num_samples must be >= 1, got {self.num_samples}")
        # torch's CPU generator keeps 32 bits of its seed: a larger one repeated a smaller one's samples.
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise UserError(f"generation.seed must be from 0 to 2**32 - 1, got {self.seed}")
        if isinstance(self.stop, str):  # `"" in "。"` is True: the check below would name the wrong slip
            refuse_unquoted_items(self.stop, "generation.stop")
            raise UserError(f"generation.stop must be a list of strings, e.g. [{self.stop!r}], not one string")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) for s in self.stop):
            raise UserError(f"generation.stop must be a list of strings, got {self.stop!r}")
        if "" in self.stop:  # it would end every sample at once, so it could only be a slip
            raise UserError(f"generation.stop holds an empty string: {self.stop}; drop it")
        if self.output is not None and not self.output.strip():
            raise UserError("generation.output is empty: give a file name (e.g. samples.jsonl), or leave it out")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)


def sample_next(
    logits: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token id per row from last-position logits (B, V). ``seen`` (B, V) marks tokens to penalise;
    ``uniform`` (B, 1) in [0, 1) is the random draw per row (None: drawn here from ``generator``)."""
    logits = logits.float()
    if seen is not None and sampling.repetition_penalty != 1.0:
        p = sampling.repetition_penalty  # CTRL's penalty: shrink the scores of tokens already in the context
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if sampling.greedy:
        return logits.argmax(dim=-1)
    # Relative to each row's best: a tiny temperature (or penalty) then sends the others to -inf, greedy's limit,
    # where the best's own score would overflow to inf, and inf - inf is NaN.
    # The clamp is this function's own copy: every step after it works in place.
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)
    logits.sub_(logits.amax(dim=-1, keepdim=True))  # amax: max with indices took 8x as long
    if sampling.temperature != 1:
        logits.div_(sampling.temperature)
    if sampling.top_k is not None and sampling.top_k < logits.size(-1):
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits.masked_fill_(logits < kth, float("-inf"))
    nucleus = sampling.top_p is not None and sampling.top_p < 1
    if nucleus:
        # The logits' order, not the probabilities': logits within ~3e-8 of the best all exp to 1, and a tiny top_p
        # must keep argmax's choice (stable: the first of equal logits, as argmax).
        order = logits.argsort(dim=-1, descending=True, stable=True)
    # Not normalised (the best token's is 1): the draw below scales by each row's total instead, one pass less.
    probs = logits.exp_()
    if nucleus:
        probs.div_(probs.sum(dim=-1, keepdim=True))
        sorted_probs = probs.gather(-1, order)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    # Inverse-CDF sampling: one uniform per row and a binary search, a fraction of torch.multinomial's cost
    # per step at this vocabulary size (it draws V exponentials). Zero-probability tokens are never chosen.
    cdf = probs.cumsum(dim=-1)
    if uniform is None:
        uniform = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=DRAW_DTYPE)
    u = uniform * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def _window_inputs(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids and attention mask for a window of left-padded rows (``valid`` is False on padding)."""
    positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    if bool(valid.all()):
        return positions, None  # the plain causal path, fastest
    T = valid.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    # A padding query may see itself, so no row of the mask is empty (an empty row makes NaN in SDPA).
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    return positions, ((causal & valid[:, None, :]) | eye)[:, None]


def _left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts as one (B, longest) tensor, padded on the left, and where it holds real tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    tokens = torch.zeros(len(prompts), longest, dtype=torch.long)
    valid = torch.zeros(len(prompts), longest, dtype=torch.bool)
    for row, p in enumerate(prompts):
        tokens[row, longest - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        valid[row, longest - len(p) :] = True
    return tokens.to(device), valid.to(device)


def cache_dtype(model: BabyGPT) -> torch.dtype:
    """The KV cache's dtype: that of the keys the model computes (the autocast dtype under autocast)."""
    device = next(model.parameters()).device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)  # keys are computed in it: storing them so is exact, and no cast
    return next(model.parameters()).dtype


# Uniforms drawn at a time for sampling: one launch per this many tokens instead of one per token, and a CUDA
# graph reads its token's draw from the same buffer the eager steps read theirs from.
DRAWS = 64

# Decode steps one CUDA graph replays at a time, where the window, the draws and the tokens asked for leave room:
# replays of one step each leave the GPU idle between them while Python launches the next (and hands the
# token over), tens of microseconds in a step of ~200 on an H100.
CHUNK = 8


# fp32 whatever the default dtype (64-true makes it fp64): a generator's fp64 uniforms are other numbers, and a seed
# would sample other text under that precision.
DRAW_DTYPE = torch.float32


def _draw(draws: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> None:
    """Fill ``draws`` (DRAWS, B, 1) with uniforms in [0, 1): from one generator, or row r's from ``generator[r]``,
    so that a row's samples do not depend on the other rows of the batch."""
    if generator is None or isinstance(generator, torch.Generator):
        draws.uniform_(generator=generator)
        return
    for row, row_generator in enumerate(generator):
        draws[:, row] = torch.rand(DRAWS, 1, generator=row_generator, device=draws.device, dtype=draws.dtype)


def sample_seed(seed: int, prompt: str, sample: int) -> int:
    """The seed of sample number ``sample`` (from 0) of ``prompt`` under ``generation.seed``: a hash of the three,
    in the 32 bits a CPU generator keeps. The prompt is in it so that two prompts' samples draw different numbers
    (from the seed and the sample's number alone, the first samples of all prompts drew the same ones)."""
    digest = hashlib.blake2b(f"{seed}\0{sample}\0{prompt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _counter_views(counters: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's one counter tensor as each row's next position (B, 1), the cache slot (1,) and the uniform
    draw (1,): views, so that one kernel advances them all."""
    return counters[:batch, None], counters[batch : batch + 1], counters[batch + 1 :]


def _decode_next(
    model: BabyGPT,
    cache: KVCache,
    sampling: Sampling,
    idx: torch.Tensor,
    counters: torch.Tensor,
    valid: torch.Tensor,
    slots: torch.Tensor,
    uniforms: torch.Tensor,
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """One fixed-shape decode step and its sample, read from and written back to the decoder's buffers in place:
    what a CUDA graph captures (and torch.compile fuses). ``counters``: see :func:`_counter_views`."""
    positions, slot, draw = _counter_views(counters, idx.size(0))
    # Additive, made once per step: a boolean mask would be converted again in every layer's attention.
    mask = torch.zeros_like(valid, dtype=cache.kv[0].dtype)
    mask.masked_fill_(~(valid & (slots <= slot)), float("-inf"))
    logits = model.decode_step(idx, positions, slot, mask, cache)
    token = sample_next(logits[:, -1], sampling, seen=seen, uniform=uniforms.index_select(0, draw)[0])
    if seen is not None:
        seen.scatter_(1, token[:, None], True)
    idx.copy_(token[:, None])
    counters.add_(1)
    return token


class GraphedDecoder:
    """The decode step of one model at one batch size and sampling, captured in CUDA graphs and replayed.

    At small batches a GPU spends a decode step waiting for Python to launch ~100 tiny kernels one by one; a
    graph replay launches them all at once. Its shapes are fixed: the decoder owns the KV cache, reads its
    inputs from buffers updated in place, attends every cache slot under a mask, samples the next token (from
    pre-drawn uniforms), feeds it back as its next input, and advances its own position, slot and draw
    counters. One graph holds one step, another :data:`CHUNK` steps in a row; :meth:`next` hands their tokens
    out one by one.
    """

    def __init__(self, model: BabyGPT, batch_size: int, sampling: Sampling, compile: bool = False) -> None:
        p = next(model.parameters())
        window = model.config.block_size
        # zeros, not empty: the step reads every slot, and a NaN in a masked-out one still poisons the softmax.
        self.cache = KVCache(model.config, batch_size, p.device, cache_dtype(model))
        for kv in self.cache.kv:
            kv.zero_()
        self.idx = torch.zeros(batch_size, 1, dtype=torch.long, device=p.device)
        self.counters = torch.zeros(batch_size + 2, dtype=torch.long, device=p.device)
        self.positions, self.slot, self.draw = _counter_views(self.counters, batch_size)
        self.valid = torch.ones(batch_size, 1, 1, window, dtype=torch.bool, device=p.device)  # False: padding
        self.slots = torch.arange(window, device=p.device)
        self.sampling = sampling
        self.uniforms = torch.zeros(DRAWS, batch_size, 1, device=p.device, dtype=DRAW_DTYPE)
        # The tokens a repetition penalty applies to: the stream fills in the prompt's, the graph adds each new one.
        self.seen = (
            torch.zeros(batch_size, model.config.vocab_size, dtype=torch.bool, device=p.device)
            if sampling.repetition_penalty != 1.0
            else None
        )
        # A weak reference: the decoders live in a dict keyed weakly by the model.
        self.model = weakref.ref(model)
        # The whole step, sampling included, so that inductor fuses the mask, the sampler and the counters too.
        self.step = torch.compile(_decode_next, fullgraph=True, dynamic=False) if compile else _decode_next
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # steps replayed -> graph
        self.tokens: dict[int, torch.Tensor] = {}  # steps replayed -> the (steps, B) tokens the graph writes
        self.pending: list[torch.Tensor] = []  # tokens of the last replay not handed out yet, the next one last
        self.busy = False  # one stream at a time uses the cache

    def _run(self, steps: int = 1) -> torch.Tensor:
        """``steps`` decode steps in a row: their tokens, (steps, B)."""
        model = self.model()
        args = (self.sampling, self.idx, self.counters, self.valid, self.slots, self.uniforms, self.seen)
        return torch.stack([self.step(model, self.cache, *args) for _ in range(steps)])

    def capture(self) -> None:
        # Warm up on a side stream first (cuBLAS workspaces, compilation), as torch.cuda.graph asks.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.counters.zero_()  # positions, slot and draw: inside the window however small it is
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        # A stream replays a chunk only where its whole room fits before the window's end (at most block_size - 1).
        for steps in (1, CHUNK) if self.slots.numel() > CHUNK else (1,):
            self.graphs[steps] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graphs[steps]):
                self.tokens[steps] = self._run(steps)

    def load(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        """Set up after a prefill of ``valid.size(1)`` slots: ``positions`` (B, 1) are the next token's, and
        ``valid`` (B, slots) is False on the slots that hold padding."""
        self.positions.copy_(positions)
        self.slot.fill_(valid.size(1))
        _mark_padding(self.valid, valid)
        self.pending.clear()

    def feed(self, token: torch.Tensor, draw: int) -> None:
        """Decode from ``token`` (B,) next, sampling with uniform number ``draw`` of the current batch of them."""
        self.idx.copy_(token[:, None])
        self.draw.fill_(draw)

    def next(self, room: int = 1) -> torch.Tensor:
        """The next token (B,) after the last one fed or sampled. ``room``: the steps that may be decoded ahead
        (cache slots, uniforms and tokens still wanted), of which the tokens not asked for yet are kept."""
        if not self.pending:
            steps = CHUNK if room >= CHUNK else 1
            if self.graphs:
                self.graphs[steps].replay()
                tokens = self.tokens[steps].clone()  # the graph's buffer is overwritten by the next replay
            else:
                tokens = self._run(steps)
            self.pending = list(tokens.unbind(0))[::-1]
        return self.pending.pop()


def _mark_padding(slots: torch.Tensor, valid: torch.Tensor) -> None:
    """``slots`` (B, 1, 1, capacity) after a prefill of ``valid`` (B, filled): False on the slots that hold
    padding, True on every other (the tokens decoded after the prefill)."""
    filled = valid.size(1)
    slots[:, 0, 0, :filled] = valid
    slots[:, 0, 0, filled:] = True


_DECODERS: weakref.WeakKeyDictionary[BabyGPT, dict] = weakref.WeakKeyDictionary()


def graphed_decoder(
    model: BabyGPT, batch_size: int, sampling: Sampling = Sampling(), compile: bool = False
) -> GraphedDecoder | None:
    """The model's captured decoder for this batch size and sampling (made once, then reused), or None where it does not
    apply: not on CUDA, in training mode (dropout draws new numbers per call), while another stream of the
    same batch size and sampling is using it, or where capture failed (warned once)."""
    if not _graphs_apply(model):
        return None
    p = next(model.parameters())
    # The graph reads the weights where they were at capture: new storage (.to(), a new model) needs a new graph.
    key = (batch_size, sampling, compile, cache_dtype(model), p.dtype, tuple(t.data_ptr() for t in model.parameters()))
    decoders = _DECODERS.setdefault(model, {})
    if key not in decoders:
        if len(decoders) >= 4:
            decoders.clear()  # the caches of the last few batch sizes and samplings, not of every one ever used
        decoders[key] = _capture(model, batch_size, sampling, compile)
    decoder = decoders[key]
    return None if decoder is None or decoder.busy else decoder


# The widening weights' column-major copies (26 ms to make at the seed shape, 11 to check a kept one) cost what
# batch 1 saves in 5-20 tokens; packing the weights for oneDNN (~30 ms) about what batch 4 saves in 10.
_LAYOUT_MIN_TOKENS = 32

# From this many rows a decode step's products run faster with oneDNN's packed weights than split over the threads
# (whole generations on the 2-core EPYC, tokens/s packed against split: batch 2 195 / 202, batch 4 356 / 279,
# batch 64 1,463 / 1,339, batch 128 1,688 / 1,476).
_PACK_MIN_ROWS = 4


@contextlib.contextmanager
def _cpu_decode_layout(model: BabyGPT, new_tokens: int, batch: int = 1) -> Iterator[None]:
    """Set the model's Linears up for decoding ``batch`` rows while a CPU stream runs, and back after (even on an
    early close). The parameters themselves are never touched.

    A decode step reads every weight once per token, so at a small batch it is bound by how fast the weights
    stream from memory:
    - every Linear splits its few-row products across the threads (:meth:`babygpt_pl.model.Linear.split`);
    - the widening weights (more outputs than inputs: QKV, MLP up, head) are read from column-major copies
      (:meth:`babygpt_pl.model.Linear.column_major_weight`), for a stream of at least :data:`_LAYOUT_MIN_TOKENS`.
    Together a batch-1 decode step ran 1.55x faster in a timing of single steps (README, "Performance"; whole
    generations, bench_generate.py's decode_plain rows: 1.42x). From :data:`_PACK_MIN_ROWS` rows and
    :data:`_LAYOUT_MIN_TOKENS` new tokens every Linear multiplies with a oneDNN copy of its weight instead
    (:meth:`babygpt_pl.model.Linear.pack`), where oneDNN is available and the weights are fp32 without autocast.
    Products may differ in the last bits. Until the stream ends, every forward of the model without a gradient reads
    those copies, made when it started. Not for two threads decoding one model at once: they share its Linears.
    """
    p = next(model.parameters())
    if p.device.type != "cpu":
        yield
        return
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    long = new_tokens >= _LAYOUT_MIN_TOKENS
    pack = (
        long
        and batch >= _PACK_MIN_ROWS
        and p.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and packing_available()
    )
    try:
        for m in linears:
            if pack:
                m.pack(batch)
            else:
                m.split(torch.get_num_threads(), column_major=long and m.out_features > m.in_features)
        yield
    finally:
        for m in linears:
            m.pack(None)
            m.split(1)


@contextlib.contextmanager
def _held(decoder: GraphedDecoder | None) -> Iterator[None]:
    """Marks the decoder busy until the stream that uses it ends (or is closed, or collected)."""
    if decoder is None:
        yield
        return
    decoder.busy = True
    try:
        yield
    finally:
        decoder.busy = False


def _graphs_apply(model: BabyGPT) -> bool:
    return next(model.parameters()).device.type == "cuda" and not model.training


def _capture(model: BabyGPT, batch_size: int, sampling: Sampling, compile: bool) -> GraphedDecoder | None:
    decoder = GraphedDecoder(model, batch_size, sampling, compile)
    amp = torch.is_autocast_enabled("cuda")
    # Autocast's weight cache would hand the graph copies that are freed when the autocast region ends.
    amp_ctx = torch.autocast("cuda", cache_dtype(model), cache_enabled=False) if amp else contextlib.nullcontext()
    try:
        with amp_ctx:
            decoder.capture()
    except Exception as err:  # a speed-up only: say so once and go on without it
        if compile:
            # E.g. torch.compile's limit of 8 compilations of one function: each model, batch size and sampling
            # compiles the step anew.
            warnings.warn(f"compiling the decode step failed, capturing it uncompiled: {err}", stacklevel=3)
            return _capture(model, batch_size, sampling, compile=False)
        warnings.warn(f"CUDA graph capture of the decode step failed, decoding eagerly: {err}", stacklevel=3)
        return None
    return decoder


@torch.inference_mode()
def stream(
    model: BabyGPT,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    use_cache: bool = True,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    cuda_graph: bool = True,
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, shape (B,), ``max_new_tokens`` times.

    ``generator``: where sampling draws its random numbers: the global generator (None), one generator for the
    whole batch, or one per row (on the model's device), which makes each row's samples those of the row alone.

    Prompts may differ in length; each row sees only its own tokens and its own positions, so inside the
    window its tokens equal those of generating it alone. Past the window the cache of the whole batch moves
    on together, so a shorter row drops its oldest tokens sooner than it would alone (:func:`complete` gives such
    a generation batches of one prompt length; without the cache each row keeps its own last ``block_size``
    tokens). The model's train/eval mode is left to the caller.
    """
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    window = model.config.block_size
    device = next(model.parameters()).device
    rows = prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts
    if not (generator is None or isinstance(generator, torch.Generator)) and len(generator) != len(rows):
        raise ValueError(f"{len(generator)} generators for {len(rows)} rows: give one per row, or one for all")
    vocab = model.config.vocab_size
    if (bad := next((t for row in rows for t in row if not 0 <= t < vocab), None)) is not None:
        # Else an IndexError deep in the embedding, or, up to the padded vocabulary, a row silently read.
        raise UserError(f"token ids are 0..{vocab - 1} for this model, got {bad}")
    tokens, valid = _left_pad(rows, device)  # the context a prefill reads (new tokens join it at a prefill)
    if max_new_tokens == 0:  # nothing to prefill for, nor to capture a graph for
        return
    decoder = graphed_decoder(model, len(rows), sampling, compile) if use_cache and cuda_graph else None
    seen = None
    if sampling.repetition_penalty != 1.0:
        # scatter_add, not scatter_: a padding 0 and a real token 0 in one row must not race for seen[row, 0].
        counts = torch.zeros(len(rows), model.config.vocab_size, dtype=torch.int32, device=device)
        seen = counts.scatter_add_(1, tokens, valid.int()) > 0
        if decoder is not None:
            seen = decoder.seen.copy_(seen)  # one record, kept by the graph's steps and the eager ones alike
    draws = (
        decoder.uniforms if decoder is not None else torch.empty(DRAWS, len(rows), 1, device=device, dtype=DRAW_DTYPE)
    )
    cache = None
    if decoder is not None:
        cache = decoder.cache
    elif use_cache:
        # Only the slots this call fills: the prompt and the new tokens, or a whole window if they pass it.
        cache = KVCache(
            model.config, len(rows), device, cache_dtype(model), min(window, tokens.size(1) + max_new_tokens)
        )
    slot_valid = torch.ones(len(rows), 1, 1, window, dtype=torch.bool, device=device)  # False: a cache slot of padding

    def prefill(keep: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Logits after reading the last ``keep`` tokens into the cache from its slot 0, each row's last
        position, and whether those tokens hold padding."""
        positions, mask = _window_inputs(valid[:, -keep:])
        logits, _ = model(tokens[:, -keep:], cache=cache, positions=positions, mask=mask, last_only=True)
        if mask is not None:
            _mark_padding(slot_valid, valid[:, -keep:])
        if decoder is not None:
            decoder.load(positions[:, -1:] + 1, valid[:, -keep:])
        return logits, positions[:, -1:], mask is not None

    with _cpu_decode_layout(model, max_new_tokens, len(rows)), _held(decoder):
        filled = min(window, tokens.size(1))  # cache slots in use
        logits, row_pos, padded = prefill(filled)
        new: list[torch.Tensor] = []  # tokens since the last prefill
        for step in range(max_new_tokens):
            if step % DRAWS == 0:
                if not sampling.greedy:  # greedy draws nothing: it leaves the global generator as it was
                    _draw(draws, generator)
                if decoder is not None:
                    decoder.draw.zero_()
            if logits is None:  # the graph decodes and samples, up to the window's end, the draws' or the last token
                nxt = decoder.next(room=min(window - filled + 1, DRAWS - step % DRAWS, max_new_tokens - step))
            else:
                nxt = sample_next(logits[:, -1], sampling, seen=seen, uniform=draws[step % DRAWS])
                if seen is not None:
                    seen.scatter_(1, nxt[:, None], True)
            yield nxt
            if step == max_new_tokens - 1:
                break
            new.append(nxt)
            if cache is not None and filled < window:
                filled += 1
                if decoder is not None:
                    if logits is not None:  # the first token after a prefill
                        decoder.feed(nxt, (step + 1) % DRAWS)
                    logits = None
                    continue
                row_pos = row_pos + 1
                pad_mask = slot_valid[..., :filled] if padded else None
                logits, _ = model(nxt[:, None], cache=cache, pos=filled - 1, positions=row_pos, mask=pad_mask)
                continue
            # No cache: re-read the last full window. Cache full: keep its newest half and prefill that once.
            tokens = torch.cat([tokens, torch.stack(new, dim=1)], dim=1)[:, -window:]
            valid = torch.cat([valid, valid.new_ones(len(rows), len(new))], dim=1)[:, -window:]
            new.clear()
            filled = min(tokens.size(1), window if cache is None else max(1, window // 2))
            logits, row_pos, padded = prefill(filled)


def generate(
    model: BabyGPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
    cuda_graph: bool = True,
    compile: bool = False,
) -> torch.Tensor:
    """Continue each row of ``idx`` (B, T) by ``max_new_tokens`` tokens; returns (B, T + max_new_tokens)."""
    if idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"idx must be token ids of shape (batch, tokens), got {idx.dtype} of shape {tuple(idx.shape)}")
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    new = list(stream(model, idx, max_new_tokens, sampling, use_cache, generator, cuda_graph, compile))
    if not new:
        return idx
    return torch.cat([idx, torch.stack(new, dim=1).to(idx.device)], dim=1)


@dataclass
class Completion:
    """One generated sample: the prompt, its continuation, and how fast it came.

    ``tokens`` counts every generated character, a stop string's included (``text`` leaves it out);
    ``seconds`` runs from the start of the batch to this sample's end (its stop string, or the batch's end).
    """

    prompt: str
    text: str
    tokens: int
    seconds: float
    sample: int = 0
    stopped: bool = False
    tokens_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens_per_s = self.tokens / self.seconds if self.seconds > 0 else 0.0


def encode_prompt(
    tokenizer: CharTokenizer,
    prompt: str,
    window: int,
    oov: OOVPolicy = "error",
    warn: Callable[[str], None] = warn_user,
) -> list[int]:
    """Token ids of a prompt: unknown characters handled per ``oov``, cropped to the last ``window``."""
    ids = tokenizer.encode(prompt, oov=oov)
    if not ids:
        raise UserError(f"prompt {prompt!r} is empty (after the oov policy): give at least one known character")
    if len(ids) > window:
        warn(f"prompt of {len(ids)} characters is longer than the window; keeping its last {window}")
        ids = ids[-window:]
    return ids


def encode_prompts(
    tokenizer: CharTokenizer,
    prompts: Sequence[str],
    window: int,
    oov: OOVPolicy = "error",
    warn: Callable[[str], None] = warn_user,
) -> list[list[int]]:
    """:func:`encode_prompt` of each prompt; with ``oov="error"``, one error naming the unknown characters of all."""
    if isinstance(prompts, str):  # a str is a sequence of one-character prompts: surely not what was meant
        raise TypeError(f"prompts must be a list of strings, e.g. [{prompts!r}], not one string")
    if not prompts:
        raise UserError("no prompt: give at least one")
    if oov == "error":
        tokenizer.require_known("".join(prompts))
    return [encode_prompt(tokenizer, p, window, oov, warn) for p in prompts]


def _stop_prefix(text: str, stop: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper start of a stop string."""
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def complete(
    model: BabyGPT,
    tokenizer: CharTokenizer,
    prompts: Sequence[str],
    config: GenerationConfig | None = None,
    on_text: Callable[[int, str], None] | None = None,
    warn: Callable[[str], None] = warn_user,
) -> list[Completion]:
    """Generate ``config.num_samples`` continuations of each prompt, ``config.batch_size`` rows at a time.

    A row stops at the first of ``config.stop`` (the stop string is cut off) or after ``max_new_tokens``.
    ``on_text(row, piece)`` receives each row's new text as it is generated (for streaming).
    """
    config = config or GenerationConfig()
    device = next(model.parameters()).device
    ids = encode_prompts(tokenizer, prompts, model.config.block_size, config.oov, warn)
    rows = [(p, i, s) for p, i in zip(prompts, ids, strict=True) for s in range(config.num_samples)]
    if config.seed is None:  # fresh randomness, not the global generator's: seed_everything fixes that one
        shared = torch.Generator(device=device)
        shared.seed()
    else:  # a stream per sample: a prompt's samples are the same whatever else the batch holds
        per_row = [torch.Generator(device=device).manual_seed(sample_seed(config.seed, p, s)) for p, _, s in rows]
    lengths = [len(r[1]) for r in rows]
    # Whether the cache fills and moves on (the last new token is never read back in).
    passes = config.use_cache and max(lengths) + config.max_new_tokens - 1 > model.config.block_size
    results: dict[int, Completion] = {}
    for batch in _batches(lengths, config.batch_size or len(rows), by_length=passes):
        generator = shared if config.seed is None else [per_row[i] for i in batch]
        shifted = None if on_text is None else lambda row, piece, batch=batch: on_text(batch[row], piece)
        done = _complete_batch(model, tokenizer, [rows[i] for i in batch], config, generator, shifted)
        results.update(zip(batch, done, strict=True))
    return [results[i] for i in range(len(rows))]


def _batches(lengths: Sequence[int], size: int, by_length: bool) -> list[list[int]]:
    """The rows' indices, ``size`` at a time; with ``by_length``, each batch holds rows of one prompt length.

    For a generation that passes the window: a batch's KV cache moves on when its longest row fills the window,
    so a shorter row beside it would drop its oldest tokens sooner than alone, and its text could differ.
    """
    groups: dict[int, list[int]] = {}
    for row, length in enumerate(lengths):
        groups.setdefault(length if by_length else 0, []).append(row)
    return [group[k : k + size] for group in groups.values() for k in range(0, len(group), size)]


def _complete_batch(
    model: BabyGPT,
    tokenizer: CharTokenizer,
    rows: Sequence[tuple[str, list[int], int]],
    config: GenerationConfig,
    generator: torch.Generator | Sequence[torch.Generator],
    on_text: Callable[[int, str], None] | None,
) -> list[Completion]:
    """:func:`complete` of one batch of (prompt, token ids, sample number) rows."""
    stop = config.stop
    texts = [""] * len(rows)
    counts = [0] * len(rows)
    done = [False] * len(rows)
    ended = [0.0] * len(rows)
    shown = [0] * len(rows)
    t0 = time.perf_counter()
    tokens = stream(
        model,
        [r[1] for r in rows],
        config.max_new_tokens,
        config.sampling,
        config.use_cache,
        generator,
        config.cuda_graph,
        config.compile,
    )
    for nxt in tokens:
        for row, token in enumerate(nxt.tolist()):
            if done[row]:
                continue
            texts[row] += tokenizer.vocab[token]
            counts[row] += 1
            # The longest that ends here, whatever their order: with ["t", "pt"], "pt" is cut whole.
            hit = max((s for s in stop if texts[row].endswith(s)), key=len, default=None)
            if hit:
                texts[row] = texts[row][: -len(hit)]
                done[row] = True
                ended[row] = time.perf_counter() - t0
            if on_text is not None:
                # Hold back a tail that may still grow into a stop string, so it is never shown.
                safe = len(texts[row]) if done[row] else len(texts[row]) - _stop_prefix(texts[row], stop)
                on_text(row, texts[row][shown[row] : safe])
                shown[row] = max(shown[row], safe)
        if all(done):
            break
    if on_text is not None:
        for row, text in enumerate(texts):
            on_text(row, text[shown[row] :])
    seconds = time.perf_counter() - t0
    return [
        Completion(prompt=p, text=t, tokens=c, seconds=e if d else seconds, sample=s, stopped=d)
        for (p, _, s), t, c, d, e in zip(rows, texts, counts, done, ended, strict=True)
    ]
