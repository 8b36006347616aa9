"""Tests for babygpt_pl.module.BabyGPTModule, mostly without a real training run."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.model_summary import summarize
from torch import nn

from babygpt_pl.errors import UserError
from babygpt_pl.generation import GenerationConfig
from babygpt_pl.module import BabyGPTModule
from babygpt_pl.optim import MuonAdamW

VOCAB = list("abcdefghijklmnopqrstuvwxyz春江花月夜")
TINY = {"block_size": 16, "n_embed": 32, "n_head": 4, "n_layer": 2, "dropout": 0.0}


def make(**kwargs) -> BabyGPTModule:
    torch.manual_seed(0)
    return BabyGPTModule(vocab="".join(VOCAB), **{**TINY, **kwargs})


def attach(module: BabyGPTModule, max_steps: int = 100, **extra) -> BabyGPTModule:
    """A stand-in for the Trainer: the module reads only these attributes of it here."""
    module.trainer = SimpleNamespace(max_steps=max_steps, **extra)
    return module


def test_vocab_required() -> None:
    with pytest.raises(UserError, match="vocab"):
        BabyGPTModule(vocab=None, **TINY)


def test_bad_lr_schedule() -> None:
    with pytest.raises(UserError, match="lr_schedule"):
        make(lr_schedule="linear")


def test_bad_model_size_is_a_user_error() -> None:
    with pytest.raises(UserError, match="divisible"):
        make(n_head=5)


def test_hparams_and_model_config() -> None:
    module = make(tie_weights=True, pad_vocab_to=8)
    assert module.hparams.vocab == "".join(VOCAB)
    assert type(module.hparams.vocab) is str
    assert module.hparams.block_size == 16
    assert module.config.vocab_size == len(VOCAB)
    assert module.config.padded_vocab_size == 32
    assert module.model.head.weight is module.model.tok_emb.weight
    assert module.tokenizer.vocab == VOCAB


def test_forward_returns_logits_and_loss() -> None:
    module = make()
    idx = torch.randint(len(VOCAB), (2, 16))
    logits, _ = module(idx)
    _, loss = module(idx, idx)
    assert logits.shape == (2, 16, len(VOCAB))
    assert abs(loss.item() - math.log(len(VOCAB))) < 0.1


def optimizer_of(module: BabyGPTModule) -> torch.optim.Optimizer:
    result = module.configure_optimizers()
    return result if isinstance(result, torch.optim.Optimizer) else result["optimizer"]


def param_groups(module: BabyGPTModule):
    optimizer = optimizer_of(module)
    decay, no_decay = optimizer.param_groups
    return optimizer, decay, no_decay


def test_a_nan_validation_loss_is_reported_as_nan_without_a_warning() -> None:
    module = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchmetrics' default strategy warns (two extra lines before our error)
        module.val_loss.update(torch.tensor(2.0), weight=10)
        module.val_loss.update(torch.tensor(float("nan")), weight=10)
    assert torch.isnan(module.val_loss.compute())  # not dropped: the mean of the other batches would hide it


def test_val_loss_is_the_mean_over_tokens_when_batches_differ_in_size() -> None:
    """A DDP rank's last validation batch can be short: each batch weighs by its tokens, not 1."""
    module = make().eval()  # no dropout
    torch.manual_seed(1)
    x = torch.randint(len(VOCAB), (6, 16))
    y = torch.randint(len(VOCAB), (6, 16))
    module.validation_step((x[:4], y[:4]), 0)
    module.validation_step((x[4:], y[4:]), 1)
    assert module.val_loss.compute().item() == pytest.approx(module(x, y)[1].item(), rel=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_weight_decay_groups(tie: bool) -> None:
    module = make(tie_weights=tie, weight_decay=0.1)
    optimizer, decay, no_decay = param_groups(module)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"]  # the fused kernel on a CPU too
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decay_ids = [id(p) for p in decay["params"]]
    no_decay_ids = [id(p) for p in no_decay["params"]]
    # Every parameter exactly once.
    assert len(set(decay_ids)) == len(decay_ids) and len(set(no_decay_ids)) == len(no_decay_ids)
    assert not set(decay_ids) & set(no_decay_ids)
    assert set(decay_ids) | set(no_decay_ids) == {id(p) for p in module.parameters()}
    assert len(decay_ids) + len(no_decay_ids) == len(list(module.parameters()))

    model = module.model
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if id(m.weight) in embeddings:
                assert tie and m is model.head
                assert id(m.weight) in no_decay_ids
            else:
                assert id(m.weight) in decay_ids
            if m.bias is not None:
                assert id(m.bias) in no_decay_ids
        if isinstance(m, (nn.LayerNorm, nn.Embedding)):
            assert all(id(p) in no_decay_ids for p in m.parameters())
    assert (id(model.head.weight) in no_decay_ids) == tie
    # 2 layers x (qkv, proj, fc, proj) + the untied head.
    assert len(decay_ids) == 8 + (0 if tie else 1)


@pytest.mark.parametrize("tie", [False, True])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tie: bool) -> None:
    module = make(optimizer="muon", muon_lr=0.05, tie_weights=tie, weight_decay=0.1)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, MuonAdamW)
    muon, *adamw = optimizer.param_groups
    assert muon["muon"] and muon["lr"] == 0.05 and muon["weight_decay"] == 0.0
    blocks = {id(m.weight) for m in module.model.blocks.modules() if isinstance(m, nn.Linear)}
    assert [id(p) for p in muon["params"]] == [id(p) for p in module.model.parameters() if id(p) in blocks]
    rest = [id(p) for group in adamw for p in group["params"]]
    assert sorted(rest) == sorted(id(p) for p in module.parameters() if id(p) not in blocks)
    assert not any(group.get("muon") for group in adamw)
    decayed = [id(p) for group in adamw if group["weight_decay"] for p in group["params"]]
    assert decayed == ([] if tie else [id(module.model.head.weight)])  # an untied head keeps AdamW's decay


def test_muon_refuses_fsdp() -> None:
    module = attach(make(optimizer="muon"), strategy=FSDPStrategy())
    with pytest.raises(UserError, match="FSDP shards them"):
        module.configure_optimizers()


def test_bad_optimizer() -> None:
    with pytest.raises(UserError, match="model.optimizer must be 'adamw' or 'muon'"):
        make(optimizer="sgd")


def test_a_cosine_floor_above_its_peak_is_refused() -> None:
    """It would climb from lr to min_lr instead of decaying (500x the peak with min_lr 0.5, lr 1e-3). Refused for
    training alone: a model trained so still predicts (its checkpoint decides min_lr there)."""
    climbing = make(lr=1e-3, min_lr=0.5, lr_schedule="cosine")
    with pytest.raises(UserError, match=r"model.min_lr \(0.5\) must be <= model.lr \(0.001\)"):
        attach(climbing).configure_optimizers()
    attach(make(lr=1e-3, min_lr=1e-3, lr_schedule="cosine")).configure_optimizers()  # a flat cosine: allowed


@pytest.mark.parametrize(("clip", "fused"), [(1.0, False), (None, True)])
def test_fp16s_gradient_scaler_clips_with_the_unfused_adamw(clip, fused: bool) -> None:
    """Lightning's AMP plugin refuses to clip for a fused optimizer: fp16 with clipping died at its first step."""
    fp16 = SimpleNamespace(scaler=torch.amp.GradScaler("cpu"))
    optimizer = attach(make(lr=1e-3), gradient_clip_val=clip, precision_plugin=fp16).configure_optimizers()
    assert optimizer.defaults["fused"] is fused


def test_constant_schedule_has_no_scheduler_and_needs_no_trainer() -> None:
    result = make(lr=1e-3).configure_optimizers()
    assert isinstance(result, torch.optim.AdamW)
    assert result.param_groups[0]["lr"] == 1e-3


def test_constant_schedule_with_warmup() -> None:
    module = make(lr=1e-3, warmup_steps=4)
    result = module.configure_optimizers()
    assert result["lr_scheduler"]["interval"] == "step"
    assert [module._lr_factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    scheduler = result["lr_scheduler"]["scheduler"]
    assert math.isclose(result["optimizer"].param_groups[0]["lr"], 0.25e-3)
    result["optimizer"].step()
    scheduler.step()
    assert math.isclose(result["optimizer"].param_groups[0]["lr"], 0.5e-3)


def test_cosine_schedule() -> None:
    module = attach(make(lr=1e-3, min_lr=1e-4, lr_schedule="cosine", warmup_steps=10), max_steps=110)
    result = module.configure_optimizers()
    assert "lr_scheduler" in result
    f = module._lr_factor
    warmup = [f(s) for s in range(10)]
    assert warmup == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the mean of peak and floor
    decay = [f(s) for s in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert f(110) == pytest.approx(0.1)  # min_lr / lr at max_steps
    assert f(500) == pytest.approx(0.1)  # and it stays there


def test_cosine_schedule_without_warmup_drives_the_optimizer() -> None:
    module = attach(make(lr=1e-3, lr_schedule="cosine"), max_steps=4)
    result = module.configure_optimizers()
    optimizer, scheduler = result["optimizer"], result["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3, 1e-3 * (1 + math.cos(math.pi / 4)) / 2, 0.5e-3, 1e-3 * 0.1464466, 0.0], abs=1e-8)
    assert optimizer.param_groups[1]["lr"] == optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("max_steps", [-1, None])
def test_cosine_needs_max_steps(max_steps) -> None:
    module = attach(make(lr_schedule="cosine"), max_steps=max_steps)
    with pytest.raises(UserError, match="max_steps"):
        module.configure_optimizers()


def test_setup_computes_flops_per_batch() -> None:
    cpu = SimpleNamespace(root_device=torch.device("cpu"))
    module = attach(make(), datamodule=SimpleNamespace(batch_size=3), strategy=cpu)
    module.setup("fit")
    assert module.flops_per_batch == module.model.flops_per_token() * 3 * 16
    assert module.flops_per_batch > 0


@pytest.mark.parametrize("compile, sharded", [(False, False), (True, False), (False, True)])
def test_the_model_summary_counts_a_forwards_flops_unless_compiled_or_sharded(compile: bool, sharded: bool) -> None:
    cpu = torch.device("cpu")
    strategy = FSDPStrategy(parallel_devices=[cpu]) if sharded else SimpleNamespace(root_device=cpu)
    module = attach(make(compile=compile), strategy=strategy)
    module.setup("fit")
    module.trainer = None  # the stand-in lacks what the summary's batch hooks read; it runs without a trainer
    flops = summarize(module).total_flops
    if compile or sharded:
        assert module.example_input_array is None and flops == 0
    else:
        assert module.example_input_array.shape == (1, TINY["block_size"])
        # Lightning's counter sees the matmuls of one sequence's forward: 2 FLOPs per weight and position.
        weights = sum(m.weight.numel() for m in module.model.modules() if isinstance(m, nn.Linear))
        assert flops == 2 * weights * TINY["block_size"]


def test_predict_step() -> None:
    module = make().eval()
    module.generation = GenerationConfig(max_new_tokens=4, temperature=0)
    out = module.predict_step(["春江", "ab"], 0)
    assert len(out) == 2
    for item, prompt in zip(out, ["春江", "ab"], strict=True):
        assert {"prompt", "text", "tokens", "seconds", "tokens_per_s"} <= item.keys()
        assert item["prompt"] == prompt
        assert len(item["text"]) == 4 and item["tokens"] == 4
        assert set(item["text"]) <= set(VOCAB)


def test_predict_step_num_samples() -> None:
    module = make().eval()
    module.generation = GenerationConfig(max_new_tokens=3, num_samples=2, seed=0)
    out = module.predict_step(["春江"], 0)
    assert [item["sample"] for item in out] == [0, 1]


def test_compiled_checkpoints_keep_the_eager_parameter_names() -> None:
    compiled = make(compile=True)
    compiled.configure_model()
    eager = make()
    assert compiled.model._compiled_call_impl is not None  # nn.Module.compile() in place: no wrapper module
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    eager.load_state_dict(compiled.state_dict())  # a compiled run's checkpoint loads uncompiled...
    compiled.load_state_dict(eager.state_dict())  # ...and back


def test_compile_mode_reaches_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    module = make(compile=True, compile_mode="reduce-overhead")
    modes: list[str] = []
    monkeypatch.setattr(module.model, "compile", lambda mode: modes.append(mode))
    module.configure_model()
    assert modes == ["reduce-overhead"]


def test_bad_compile_mode() -> None:
    with pytest.raises(UserError, match="model.compile_mode must be one of default, reduce-overhead"):
        make(compile=True, compile_mode="fast")


def test_gradients_are_clipped_with_a_fused_adamw_in_bf16(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """bf16-mixed + gradient_clip_val + fused AdamW (the GPU setup): Lightning's plugin alone refuses to clip."""
    import lightning as L

    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: adamw(*a, **{**k, "fused": True}))
    norms: list[tuple[float, float]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        norms.append((float(clip(parameters, max_norm, *args, **kwargs)), max_norm))
        return norms[-1][0]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    x = torch.randint(len(VOCAB), (16, 16))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x), batch_size=4)
    trainer = L.Trainer(
        max_steps=2,
        precision="bf16-mixed",
        gradient_clip_val=1e-3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    module = make()
    trainer.fit(module, loader)
    assert isinstance(trainer.optimizers[0], adamw) and trainer.optimizers[0].defaults["fused"]
    assert len(norms) == 2 and all(norm > limit for norm, limit in norms)  # both steps really were clipped


def test_an_extended_cosine_run_starts_at_its_new_schedules_rate(tmp_path) -> None:
    """Resumed with a larger max_steps, the first step takes its rate from the longer cosine, not the checkpoint's
    (which, for a finished run, is min_lr: a step wasted at rate 0)."""
    module = make(lr_schedule="cosine", lr=1e-3)
    tokens = torch.randint(len(VOCAB), (4, 16))
    loader = torch.utils.data.DataLoader([(tokens, tokens)] * 100, batch_size=None)
    rates = []

    class FirstRate(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def fit(max_steps: int, ckpt_path=None) -> None:
        rates.clear()
        kwargs = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
        trainer = L.Trainer(max_steps=max_steps, callbacks=[FirstRate()], limit_val_batches=0, **kwargs)
        trainer.fit(module, loader, ckpt_path=ckpt_path)

    fit(4)
    module.trainer.save_checkpoint(tmp_path / "four.ckpt")
    fit(8, tmp_path / "four.ckpt")
    assert rates[0] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))  # step 4 of 8


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_betas_reach_the_optimizer(optimizer: str) -> None:
    """The shipped recipes set betas [0.9, 0.95]: AdamW's default 0.999 would train silently otherwise."""
    torch_optimizer = optimizer_of(make(optimizer=optimizer, betas=(0.8, 0.95)))
    assert {tuple(group["betas"]) for group in torch_optimizer.param_groups} == {(0.8, 0.95)}


def test_val_ppl_is_the_exponential_of_val_loss() -> None:
    module = make().eval()
    logged = {}
    module.log = lambda name, value, **kwargs: logged.update({name: value})
    module.trainer = SimpleNamespace(state=SimpleNamespace(fn="validate"))
    x = torch.randint(len(VOCAB), (2, 16))
    module.validation_step((x, x), 0)
    module.on_validation_epoch_end()
    assert logged["val_ppl"].item() == pytest.approx(math.exp(logged["val_loss"].item()))
