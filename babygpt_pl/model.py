"""BabyGPT: the tutorial's character-level GPT, in one file of plain PyTorch.

Token + learned position embeddings, ``n_layer`` pre-LayerNorm blocks (causal multi-head self-attention and a
4x ReLU MLP, with dropout and residuals), a final LayerNorm and a linear head. Attention uses one fused QKV
projection and ``scaled_dot_product_attention`` instead of the tutorial's Python list of heads; generation
uses a preallocated KV cache (:class:`KVCache`) written in place, and its CPU decode steps spread each matrix
product over the threads or hand it to oneDNN (:class:`Linear`). No Lightning in here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from babygpt_pl.errors import UserError


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_embed: int = 384
    n_head: int = 6
    n_layer: int = 6
    dropout: float = 0.2
    # Dropout on the attention probabilities. On CPU any attention dropout forces SDPA off its fused kernel onto
    # the math one (a ~1.2x slower training step at the seed shape), so in the Python API it is off unless asked
    # for. None means "same as dropout", the tutorial exactly, and is the CLI's default (model.attn_dropout).
    attn_dropout: float | None = 0.0
    # The output head shares the token embedding's weight (saves V*C parameters; often a lower loss).
    tie_weights: bool = False
    # The embedding/head rows are padded to a multiple of this for faster GPU matmuls. The padded logits get
    # a fixed bias of PAD_LOGIT, so they have probability 0 exactly: the loss and samples are those of vocab_size.
    pad_vocab_to: int = 64

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_embed", "n_head", "n_layer", "pad_vocab_to"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embed % self.n_head:
            raise UserError(
                f"GPTConfig.n_embed ({self.n_embed}) must be divisible by n_head ({self.n_head}); "
                f"pick n_head from {[h for h in range(1, self.n_embed + 1) if self.n_embed % h == 0][:12]}"
            )
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise UserError(f"GPTConfig.{name} must be in [0, 1), got {value!r}")

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_to) * self.pad_vocab_to

    @property
    def head_dim(self) -> int:
        return self.n_embed // self.n_head


# The head bias of the padded vocabulary entries: exp(PAD_LOGIT - max) is exactly 0 in fp32 and bf16. Finite,
# not -inf: CUDA's fused AdamW decays a weight as p - lr*wd*p, which is NaN for p = -inf (seen on an H200).
PAD_LOGIT = -1e9

# Products of at most this many rows (decode steps) are the ones Linear.split spreads across threads.
SPLIT_MAX_ROWS = 64


class Dropout(nn.Dropout):
    """nn.Dropout whose mask, on a CPU, is drawn as 16-bit integers, four to each 64-bit draw: torch's CPU random
    number kernels run on one thread, one draw per element, and ``bernoulli_`` is ~2.5x slower than even
    ``rand_like``. A residual dropout's forward and backward at the seed shape (16 x 256 x 384, 2 cores): 26 ms
    with bernoulli_, 14-15 with rand_like, 8 this way. The drop probability is ``p`` rounded to a multiple of
    1/65536 and the kept entries are scaled by the inverse of the rounded keep probability, so the expected
    output is exactly the input. Elsewhere (CUDA's fused kernel), in eval mode and for a ``p`` within 1/131072
    of 0 or 1, exactly nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # nn.Dropout's identity, without its call: 12 of them per decoded token
            return x
        dropped = round(self.p * 65536)
        if not 0 < dropped < 65536 or x.device.type != "cpu":
            return super().forward(x)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        halves = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform on -32768..32767
        scale = (halves >= dropped - 32768).to(x.dtype).mul_(65536 / (65536 - dropped))
        return x * scale


class Linear(nn.Linear):
    """nn.Linear with two faster ways to run the few-row products of decoding on a CPU (generation turns them on).

    - :meth:`split`: MKL runs the product of a few rows by a weight matrix (a decode step: one row per sequence)
      on one thread, so the other cores idle while the weights stream from memory. Viewed as a batch of blocks
      of weight rows, one per thread, the same product is a ``bmm``, whose batch ATen spreads over the threads:
      a batch-1 decode step on 2 cores ran 1.4x faster (README, "Performance").
    - :meth:`pack`: a copy of the weight in oneDNN's blocked layout, multiplied by oneDNN instead of MKL. On this
      2-core AMD EPYC it ran whole batch-64 generations 1.09-1.10x faster and batch 4 1.27x, but batch 1 slower
      (the split wins there). oneDNN's linear is a private ATen op (inductor's CPU path), so it is only used
      where :func:`packing_available` finds it. It also applies a ReLU or adds a residual as it writes the
      product (``forward``'s ``relu`` and ``residual``), saving a pass over the output each: the MLP's ReLU and
      both residual adds of every block took batch-64 generations from 1,401 to 1,454 tokens/s (medians of three
      alternated ``vs_seed.py --what batch`` runs).

    The parameters and checkpoints are nn.Linear's. A product that needs a gradient always takes F.linear.
    """

    # The decode state: views and copies of the weight, None when not in use.
    blocks: tuple[torch.Tensor, torch.Tensor | None] | None
    packed: torch.Tensor | None
    kept_column_major: torch.Tensor | None
    DECODE_STATE = ("blocks", "packed", "kept_column_major")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._drop_decode_state()

    def _drop_decode_state(self) -> None:
        # Always in the instance's dict: a compiled model guards on them, and would recompile when they appeared.
        self.__dict__.update(dict.fromkeys(self.DECODE_STATE))

    def _apply(self, fn, recurse: bool = True):
        # .to(), .half(), .cuda() give the weight new storage: the views and copies of the old one would go stale.
        self._drop_decode_state()
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        # Not pickled nor deep-copied (torch.save(model), Lightning's weight averaging): views and copies, remade.
        return {**self.__dict__, **dict.fromkeys(self.DECODE_STATE)}

    def split(self, n: int, column_major: bool = False) -> None:
        """Compute products of at most SPLIT_MAX_ROWS rows as ``n`` blocks of weight rows (1 and not column-major:
        plain F.linear).

        The blocks are views of the weight as it is now (call again after replacing its storage; in-place updates
        are seen), or with ``column_major`` of :meth:`column_major_weight` (a copy: in-place updates are not seen
        until the next call).
        """
        n = math.gcd(self.out_features, n)
        if n == 1 and not column_major:
            self.blocks = None
            return
        weight = self.column_major_weight() if column_major else self.weight
        bias = None if self.bias is None else self.bias.view(n, 1, -1)
        self.blocks = (weight.view(n, -1, self.in_features).transpose(1, 2), bias)

    def column_major_weight(self) -> torch.Tensor:
        """A column-major copy of the weight: the layout in which MKL streams a widening weight (more outputs than
        inputs) ~2x faster in a matrix-vector product, where training is faster row-major. Kept between calls
        (memory for the weight twice) and made again only when it no longer equals the weight: comparing the two
        took 11 ms for the seed shape's widening weights, copying them 26 ms."""
        weight, copy = self.weight.detach(), self.kept_column_major
        kind = (weight.shape, weight.dtype, weight.device)
        if copy is None or (copy.shape, copy.dtype, copy.device) != kind or not torch.equal(copy, weight):
            copy = self.kept_column_major = weight.t().contiguous().t()
        return copy

    def pack(self, rows: int | None) -> None:
        """Compute the products without a gradient of inputs of the weight's dtype, outside autocast, with a oneDNN
        copy of the weight laid out for about ``rows`` rows (None: drop it). A copy: pack again after changing the
        weight."""
        self.packed = None if rows is None else torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), rows)

    def forward(self, x: torch.Tensor, relu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The product, its ReLU with ``relu``, plus ``residual`` if given."""
        packed = None if torch.is_grad_enabled() else self.packed
        if packed is not None and x.dtype == packed.dtype and not torch.is_autocast_enabled(x.device.type):
            fusable = residual is not None and residual.dtype == x.dtype and not relu
            if fusable and residual.shape == (*x.shape[:-1], self.out_features):
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, self.bias, "add")
            y = torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "relu" if relu else "none", [], "")
        else:
            y = self._product(x)
            if relu:
                y = F.relu(y)
        return y if residual is None else residual + y

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # blocks or a copy made under inference_mode would pass no gradient back
            return F.linear(x, self.weight, self.bias)
        blocks = self.blocks
        if blocks is None or x.numel() > SPLIT_MAX_ROWS * self.in_features:
            return F.linear(x, self.weight, self.bias)
        w, b = blocks
        rows = x.reshape(1, -1, self.in_features).expand(w.size(0), -1, -1)
        y = torch.bmm(rows, w) if b is None else torch.baddbmm(b, rows, w)
        return y.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)


def packing_available() -> bool:
    """Whether this torch build has the oneDNN ops :meth:`Linear.pack` uses, and they are not turned off
    (``torch.backends.mkldnn.flags(enabled=False)``)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T + bias`` against ``targets``, a few rows at a time.

    The plain way writes the (N, V) logits, a log-softmax of them and its gradient: three passes over N*V
    floats (100 MB at the seed shape) that make the output head memory-bound on a CPU. Here each chunk's
    logits turn into their own gradient in place and are used for the input, weight and bias gradients at once
    (computed in forward: the loss is a scalar, so backward only scales them).
    """

    # Rows per chunk: 1024 x 6208 floats is 25 MB. 256 to 2048 rows took 0.93-1.02 s for the head's loss and
    # gradients at the seed shape on the 2-core EPYC (8 MB of L3), within this VM's noise of each other.
    CHUNK = 1024

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, grads: bool):
        """``grads``: whether the caller records gradients. Grad mode is always off in here, and
        ``ctx.needs_input_grad`` follows ``requires_grad`` alone, so under no_grad (validation) it is still True:
        without the flag an evaluation also ran the two gradient products (a forward at configs/cpu.yaml's shape
        took 187 ms, 99 ms with it, on a 2-core EPYC)."""
        n = h.size(0)
        grads = grads and any(ctx.needs_input_grad[:3])
        if grads:
            grad_h, grad_w, grad_b = torch.empty_like(h), torch.zeros_like(weight), torch.zeros_like(bias)
        total = h.new_zeros(())
        # One buffer for every chunk's logits, worked on in place: a fresh 25 MB block per chunk (and
        # logsumexp's temporaries) cost page faults that took as long as the passes over it: the head's loss and
        # gradients went from 0.965 to 0.924 s at the seed shape, where its three products alone take ~0.84 s.
        # (torch.empty: Dynamo cannot trace h.new_empty here, and warned of it as every compiled CPU run started.)
        buffer = torch.empty(min(n, ChunkedCrossEntropy.CHUNK), weight.size(0), dtype=h.dtype, device=h.device)
        for start in range(0, n, ChunkedCrossEntropy.CHUNK):
            rows = slice(start, start + ChunkedCrossEntropy.CHUNK)
            hc, yc = h[rows], targets[rows]
            logits = torch.addmm(bias, hc, weight.t(), out=buffer[: hc.size(0)])
            picked = logits.gather(1, yc[:, None])
            top = logits.amax(dim=-1, keepdim=True)
            exp = logits.sub_(top).exp_()
            sums = exp.sum(dim=-1, keepdim=True)
            total += (sums.log() + top - picked).sum()
            if grads:  # d(mean CE)/d(logits) = (softmax - one_hot) / n, built in place
                probs = exp.div_(sums * n)
                probs[torch.arange(len(yc), device=yc.device), yc] -= 1.0 / n
                torch.mm(probs, weight, out=grad_h[rows])
                grad_w.addmm_(probs.t(), hc)
                grad_b += probs.sum(0)
        if grads:
            ctx.save_for_backward(grad_h, grad_w, grad_b)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, grad_b * grad_out, None, None


class KVCache:
    """Keys and values of every layer, preallocated for ``capacity`` positions and written in place.

    ``kv[layer]`` has shape (2, B, n_head, capacity, head_dim): keys then values, so one copy writes both.
    The model writes positions ``pos .. pos+T-1`` and attends to slots ``0 .. pos+T-1``; the caller tracks ``pos``.
    ``capacity`` (default ``block_size``) can be the few slots a short generation needs, to take less memory
    (no faster: at batch 64 x 108 tokens on a 2-core CPU, 1.00x over 10 interleaved pairs).
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
        capacity: int | None = None,
    ) -> None:
        capacity = config.block_size if capacity is None else capacity
        if not 0 < capacity <= config.block_size:
            raise ValueError(f"KVCache capacity must be in 1..block_size ({config.block_size}), got {capacity}")
        shape = (2, batch_size, config.n_head, capacity, config.head_dim)
        # empty, not zeros: a slot is always written before it is read (at batch 64 zeroing is 300 MB a call).
        self.kv = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]

    @property
    def capacity(self) -> int:
        return self.kv[0].size(3)


def _attend_one(q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row (B, H, 1, D) over a whole cache ``kv`` (2, B, H, slots, D) under ``mask``.

    Written out rather than SDPA: with a mask in fp32 SDPA takes its memory-efficient kernel, which spent 30 us
    per layer on a decode step on an H100 (half the step; one 64-query tile per head for a single query), where
    these four small kernels take a few microseconds each.
    """
    k, v = kv
    scale = q.size(-1) ** -0.5
    # Scores and softmax in fp32, as SDPA keeps them: from a bf16 cache, bf16 scores had 1.6x its error.
    with torch.autocast(q.device.type, enabled=False):
        scores = q.float() @ k.float().transpose(-2, -1)
        if mask.dtype == torch.bool:
            scores = (scores * scale).masked_fill(~mask, float("-inf"))
        else:
            scores = torch.add(mask, scores, alpha=scale)  # additive: 0 or -inf, scaled scores in one kernel
        return F.softmax(scores, dim=-1).to(v.dtype) @ v


def _add_projection(residual: torch.Tensor, proj: Linear, h: torch.Tensor, dropout: Dropout) -> torch.Tensor:
    """``residual + dropout(proj(h))``. Where the dropout is the identity the add goes into the product, which a
    oneDNN copy of the weight does as it writes its output (:class:`Linear`)."""
    if dropout.training and dropout.p > 0:
        return residual + dropout(proj(h))
    return proj(h, residual=residual)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = Linear(config.n_embed, 3 * config.n_embed, bias=False)
        self.proj = Linear(config.n_embed, config.n_embed)
        self.attn_dropout = config.dropout if config.attn_dropout is None else config.attn_dropout
        self.resid_dropout = Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor,
        layer: int = 0,
        cache: KVCache | None = None,
        pos: int | torch.Tensor = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``residual`` plus the attention of ``x`` (the residual stream after the block's first LayerNorm)."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if isinstance(pos, torch.Tensor):
            # A step with fixed shapes (for a CUDA graph): write slot `pos`, attend every slot that `mask` allows.
            cache.kv[layer][:, :, :, pos] = qkv[1:].to(cache.kv[layer].dtype)
            y = _attend_one(qkv[0], cache.kv[layer], mask)
        else:
            y = self._attend(qkv, layer, cache, pos, mask)
        return _add_projection(residual, self.proj, y.transpose(1, 2).reshape(B, T, C), self.resid_dropout)

    def _attend(
        self, qkv: torch.Tensor, layer: int, cache: KVCache | None, pos: int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        # unbind, not q = qkv[0] and kv = qkv[1:]: its backward writes the three gradients into one tensor, where
        # each slice's backward zero-fills a tensor of qkv's size (the QKV product and SDPA, forward and backward
        # at the seed shape on a 2-core CPU: 299 -> 284 ms).
        q, k, v = qkv.unbind(0)
        T = q.size(2)
        if cache is not None:
            cache.kv[layer][:, :, :, pos : pos + T] = qkv[1:]
            k, v = cache.kv[layer][:, :, :, : pos + T]
        # Causal by default; a single query at the end of the cache sees every key; else an explicit mask.
        is_causal = mask is None and T > 1 and pos == 0
        if mask is None and T > 1 and pos > 0:
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=q.device).tril(diagonal=pos)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.attn_dropout if self.training else 0.0
        )


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = Linear(config.n_embed, 4 * config.n_embed)
        self.proj = Linear(4 * config.n_embed, config.n_embed)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual`` plus the MLP of ``x`` (the residual stream after the block's second LayerNorm)."""
        return _add_projection(residual, self.proj, self.fc(x, relu=True), self.dropout)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embed)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embed)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        x = self.attn(self.ln1(x), x, **attn_kwargs)
        return self.mlp(self.ln2(x), x)


class BabyGPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.padded_vocab_size, config.n_embed)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embed)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embed)
        self.head = Linear(config.n_embed, config.padded_vocab_size)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by depth so the residual stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        # A bias, not a slice of the logits: a slice costs a copy forward and a zero-filled copy backward of the
        # B*T*V logits, and a gradient of exactly 0 leaves these entries where they are.
        with torch.no_grad():
            self.head.bias[config.vocab_size :] = PAD_LOGIT

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's N(0, 0.02) init: logits start near zero, so the initial loss is ln(vocab_size).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        pos: int = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Without targets, (logits (B, T, vocab_size), None); with targets, (None, the mean cross-entropy):
        training needs only the loss, and on a CPU the logits are never materialised.

        For generation: ``cache`` holds the keys/values of positions ``0 .. pos-1`` and ``idx`` sits at
        positions ``pos .. pos+T-1`` of it. ``positions`` (B, T) overrides the position ids (rows of a
        left-padded batch start at different places) and ``mask`` (B, 1, T, pos+T), True where a query may
        attend a key, overrides the causal mask. ``last_only`` returns the logits of the last position alone
        (B, 1, vocab_size): a prefill samples from no other, and the head is a quarter of the model's products.
        """
        B, T = idx.shape
        if pos and cache is None:
            raise ValueError("pos > 0 needs the KV cache that holds positions 0..pos-1")
        if pos + T > self.config.block_size:
            raise ValueError(f"positions {pos}..{pos + T - 1} exceed block_size {self.config.block_size}")
        if positions is None:
            positions = torch.arange(pos, pos + T, device=idx.device)
        x = self._hidden(idx, positions, cache=cache, pos=pos, mask=mask)
        if targets is None:
            return self.head(x[:, -1:] if last_only else x)[..., : self.config.vocab_size], None
        # Training needs only the loss: the logits are not returned, so the CPU path never materialises them.
        h, y = x.reshape(B * T, -1), targets.reshape(B * T)
        if x.device.type == "cpu" and not torch.is_autocast_enabled(x.device.type):
            return None, ChunkedCrossEntropy.apply(h, self.head.weight, self.head.bias, y, torch.is_grad_enabled())
        return None, F.cross_entropy(self.head(h), y)

    def _hidden(self, idx: torch.Tensor, positions: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for layer, block in enumerate(self.blocks):
            x = block(x, layer=layer, **attn_kwargs)
        return self.ln_f(x)

    def decode_step(
        self, idx: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """Logits (B, 1, vocab_size) of one token per row, written to cache slot ``slot`` (a 1-element tensor).

        ``idx`` and ``positions`` are (B, 1); ``mask`` (B, 1, 1, capacity) is True (or 0.0, as an additive
        float mask) on the cache slots each row may attend, its own slot included. Every shape is fixed and
        nothing is read back to the host, so a CUDA graph can capture this step once and replay it per token.
        """
        x = self._hidden(idx, positions, cache=cache, pos=slot, mask=mask)
        return self.head(x)[..., : self.config.vocab_size]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward + backward FLOPs per token (6N for the matmuls plus attention), as in nanoGPT/PaLM."""
        c = self.config
        t = seq_len or c.block_size
        n = self.num_parameters() - self.pos_emb.weight.numel()
        if not c.tie_weights:
            n -= self.tok_emb.weight.numel()  # a lookup, not a matmul
        return 6 * n + 12 * c.n_layer * c.n_embed * t
