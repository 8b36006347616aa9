"""The LightningModule: BabyGPT's training, validation and prediction steps and its optimiser."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from babygpt_pl.errors import UserError
from babygpt_pl.generation import GenerationConfig, complete
from babygpt_pl.model import BabyGPT, GPTConfig
from babygpt_pl.optim import MuonAdamW
from babygpt_pl.tokenizer import CharTokenizer

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
# The metrics fit logs (training_step, and _log_eval for "val"): what a ModelCheckpoint may monitor or name.
FIT_METRICS = ("val_loss", "val_ppl", "train_loss")


def first_wandb(loggers: list) -> WandbLogger | None:
    """The run's wandb logger (the first, in a list of loggers): the samples' and the resumed run's."""
    return next((logger for logger in loggers if isinstance(logger, WandbLogger)), None)


def _scaler(trainer: Any) -> Any:
    """fp16 mixed precision's gradient scaler, or None (bf16 and fp32 have none)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)


def gpt_config(hparams: Mapping[str, Any]) -> GPTConfig:
    """The model's GPTConfig from BabyGPTModule's hyper-parameters (a checkpoint's too): the vocabulary's size and
    the fields of the same names."""
    fields = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
    return GPTConfig(vocab_size=len(hparams["vocab"]), **{k: v for k, v in hparams.items() if k in fields})


class BabyGPTModule(L.LightningModule):
    """Trains a :class:`BabyGPT` and generates from it.

    Args:
        vocab: the characters of the vocabulary in id order, as one string. The CLI fills it from the corpus
            (``fit``) or from the checkpoint (``predict``); it is saved in the checkpoint so generation needs no
            corpus. One string, not a list: jsonargparse takes minutes to validate a 6,000-item list.
        block_size, n_embed, n_head, n_layer, dropout, attn_dropout, tie_weights, pad_vocab_to: see GPTConfig.
        lr: peak learning rate of AdamW.
        betas: AdamW's betas.
        weight_decay: applied to the matmul weights only (not biases, LayerNorms or embeddings); with Muon, to
            an untied head only (Muon's matrices are not decayed).
        optimizer: "adamw", or "muon": Muon for the blocks' weight matrices and AdamW for the rest
            (:class:`~babygpt_pl.optim.MuonAdamW`).
        muon_lr: peak learning rate of the Muon matrices (the same schedule as lr).
        lr_schedule: "constant" (the tutorial) or "cosine" (decays to min_lr at trainer.max_steps).
        warmup_steps: linear warm-up to lr over this many steps, from lr/warmup_steps at the first (either
            schedule).
        min_lr: the floor of the cosine schedule.
        compile: torch.compile the model's forward for training (keeps the checkpoint's parameter names).
        compile_mode: torch.compile's mode: "default", or "reduce-overhead" (CUDA graphs: the step no longer
            waits on Python to launch its kernels), "max-autotune", "max-autotune-no-cudagraphs".
    """

    def __init__(
        self,
        vocab: str | None = None,
        block_size: int = 256,
        n_embed: int = 384,
        n_head: int = 6,
        n_layer: int = 6,
        dropout: float = 0.2,
        attn_dropout: float | None = None,
        tie_weights: bool = False,
        pad_vocab_to: int = 64,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.01,
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        min_lr: float = 0.0,
        optimizer: str = "adamw",
        muon_lr: float = 0.02,
        compile: bool = False,
        compile_mode: str = "default",
    ) -> None:
        super().__init__()
        self.checkpoint_step = 0
        if vocab is None:
            raise UserError("model.vocab is not set: train with `babygpt fit` or pass --ckpt_path to a checkpoint")
        if lr_schedule not in ("constant", "cosine"):
            raise UserError(f"model.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if optimizer not in ("adamw", "muon"):
            raise UserError(f"model.optimizer must be 'adamw' or 'muon', got {optimizer!r}")
        if compile_mode not in COMPILE_MODES:
            raise UserError(f"model.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        positive = {"lr": lr, "muon_lr": muon_lr}
        non_negative = {"min_lr": min_lr, "weight_decay": weight_decay, "warmup_steps": warmup_steps}
        bad = [f"model.{k} must be > 0, got {v}" for k, v in positive.items() if not v > 0]
        bad += [f"model.{k} must be >= 0, got {v}" for k, v in non_negative.items() if not v >= 0]
        if not all(0 <= b < 1 for b in betas):
            bad.append(f"model.betas must be in [0, 1), got {list(betas)}")
        if bad:
            raise UserError("; ".join(bad))
        self.save_hyperparameters()
        self.tokenizer = CharTokenizer(vocab)
        try:
            self.config = gpt_config(self.hparams)
        except UserError as err:  # name the option the user sets, not the dataclass field
            raise UserError(str(err).replace("GPTConfig.", "model.")) from None
        self.model = BabyGPT(self.config)
        # The CLI replaces this with the --generation.* options; it is not a hyper-parameter of the model.
        self.generation = GenerationConfig()
        # torchmetrics' Perplexity recomputes a log-softmax over all B*T*V logits; the token-weighted mean of the
        # cross-entropy we already have, exponentiated, is the same number for free. nan_strategy "disable": a NaN
        # loss makes the mean NaN, which is what to report; the default checks (and syncs) each batch to warn.
        self.val_loss = MeanMetric(nan_strategy="disable")
        self._saved = False  # whether this run saved a checkpoint (its checks in on_save_checkpoint passed)

    def configure_model(self) -> None:
        # For training only: generation decodes through its own step (CUDA-graphed on a GPU), and a compiled
        # forward would compile again for each new prompt length.
        fitting = self._trainer is None or self.trainer.state.fn == TrainerFn.FITTING
        if self.hparams.compile and fitting and not getattr(self, "_compiled", False):
            # In place: parameter names (and so checkpoints) stay those of the eager model.
            self.model.compile(mode=self.hparams.compile_mode)
            self._compiled = True

    def setup(self, stage: str) -> None:
        if self.trainer.strategy.root_device.type == "cuda":  # (the model itself moves there only after setup)
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for what runs in fp32 on Ampere and later
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "batch_size"):
            # For ThroughputMonitor's MFU: model FLOPs of one training batch (forward and backward).
            tokens = datamodule.batch_size * self.config.block_size
            self.flops_per_batch = self.model.flops_per_token() * tokens
        # Lightning's model summary counts the FLOPs of a forward of this input (one block_size sequence); without
        # one it printed "Total FLOPs: 0". Not for a compiled model (a second graph to compile for this shape) nor
        # FSDP's (the summary runs on rank 0 alone, and a sharded forward would wait for the other ranks).
        if not self.hparams.compile and not isinstance(self.trainer.strategy, FSDPStrategy):
            self.example_input_array = torch.zeros(1, self.config.block_size, dtype=torch.long)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, y)
        # A copy: under CUDA graphs (compile_mode "reduce-overhead") the next step overwrites the graph's output,
        # and Lightning reads the logged loss later.
        loss = loss.clone()
        self.log("train_loss", loss, prog_bar=True)
        # Remember the first step whose loss was not finite, on the device: no host sync in the hot loop. (Lightning's
        # EarlyStopping(check_finite=True) looks only at a monitored metric, at validation: up to val_check_interval
        # steps late.)
        step = torch.full((), self.global_step, device=loss.device)  # a fill kernel, not a host-to-device copy
        self._first_bad_step = torch.where(
            ~torch.isfinite(loss) & (self._first_bad_step < 0), step, self._first_bad_step
        )
        return loss

    def on_train_start(self) -> None:
        self._first_bad_step = torch.tensor(-1, device=self.device)
        # A resumed optimizer holds the rate its checkpoint's schedule gave this step; a run extended with a larger
        # trainer.max_steps has a longer cosine, so take this step's rate from it (else the first step of a finished
        # run's extension would train at min_lr).
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * self._lr_factor(scheduler.last_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.trainer.log_every_n_steps  # 0: Lightning never logs; checkpoints still check
        if every and self.global_step % every == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Stop (with the previous checkpoint kept) once the training loss has become NaN or infinite: on every
        rank at once, at the first bad step of any (a rank that went on alone would wait at its next collective)."""
        first_bad = getattr(self, "_first_bad_step", None)
        if first_bad is None:
            return
        distributed = self._trainer is not None and self.trainer.world_size > 1
        steps = (self.all_gather(first_bad) if distributed else first_bad).reshape(-1)
        found = steps[steps >= 0]  # (-1: none)
        if found.numel():
            self._refuse_non_finite("the training loss", int(found.min()))

    def _refuse_non_finite(self, what: str, step: int) -> None:
        # A checkpoint this run saved, or resumed from: else there is none to keep (a run that diverged at once).
        resumed = self._trainer is not None and self.trainer.ckpt_path
        kept = "the last good checkpoint is kept" if self._saved or resumed else "no checkpoint was written"
        raise UserError(
            f"{what} became NaN or infinite at step {step}; {kept}. Lower model.lr, add warmup (model.warmup_steps) "
            "or gradient clipping (trainer.gradient_clip_val)"
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The steps of the weights loaded: outside a fit, global_step stays 0 (the samples table's step column).
        self.checkpoint_step = checkpoint.get("global_step", 0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Never let weights that saw a NaN loss, or are NaN themselves, overwrite last.ckpt. The weights too: an
        # optimizer step that blows them up just before a validation shows in no training loss before the save.
        self.check_finite()
        finite = bool(torch.stack([p.isfinite().all() for p in self.parameters()]).all())
        if self._trainer is not None:  # (FSDP: each rank holds a shard)
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self._refuse_non_finite("the weights", self.global_step)
        # Not ModelCheckpoint's paths: it sets them before the save whose checks are these.
        self._saved = True
        wandb = first_wandb(self.loggers)
        if wandb is not None and wandb._experiment is not None:
            checkpoint["wandb_run_id"] = wandb.version  # so a resumed run continues the same wandb run

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        # One value per token, not weight=y.numel(): torchmetrics' nan_strategy="disable" replaces the weight with
        # 1 (torchmetrics#3434), which made a short batch (a DDP rank's last) count as much as a full one.
        self.val_loss.update(loss.expand(y.numel()))

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    test_step = validation_step

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, prefix: str) -> None:
        # compute() reduces across ranks (torchmetrics), so every rank logs the same global mean.
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # Before the checkpoint saved after this validation, which would rank a NaN as the best. (The loss is
        # already global, so every rank stops together; a training loss gone bad first is the earlier news.)
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.check_finite()
            if not torch.isfinite(loss):
                self._refuse_non_finite("the validation loss", self.global_step)
        # Already global: sync_dist with max keeps it exactly and spares Lightning's warning to sync it under DDP.
        self.log(f"{prefix}_loss", loss, prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log(f"{prefix}_ppl", torch.exp(loss), sync_dist=True, reduce_fx="max")

    def predict_step(self, batch: list[str], batch_idx: int) -> list[dict]:
        completions = complete(self.model, self.tokenizer, batch, self.generation)
        return [vars(c) for c in completions]

    def check_trainer(self, trainer: L.Trainer | None) -> None:
        """The optimizer settings a trainer (or none) cannot run; the CLI asks before the run writes anything."""
        hp = self.hparams
        if hp.lr_schedule == "cosine" and hp.min_lr > hp.lr:  # the "decay" would climb, to min_lr / lr times the peak
            raise UserError(
                f"model.min_lr ({hp.min_lr}) must be <= model.lr ({hp.lr}), the cosine's floor under its peak"
            )
        max_steps = getattr(trainer, "max_steps", None)
        if hp.lr_schedule == "cosine" and (max_steps is None or max_steps < 0):
            raise UserError(
                "model.lr_schedule cosine needs trainer.max_steps, the length of the schedule: pass "
                "--trainer.max_steps N, or --model.lr_schedule constant"
            )
        if hp.optimizer == "muon" and isinstance(getattr(trainer, "strategy", None), FSDPStrategy):
            raise UserError(
                "model.optimizer muon orthogonalises whole weight matrices, and FSDP shards them: use "
                "--trainer.strategy ddp, or --model.optimizer adamw"
            )

    def configure_optimizers(self):
        hp = self.hparams
        self.check_trainer(self._trainer)
        # The fused kernel on a CPU too: cpu.yaml's optimizer step, Muon's included, took 53 against 60 ms a step.
        # Not where fp16's gradient scaler must clip: Lightning refuses to clip for a fused optimizer, which may
        # unscale inside its step (configure_gradient_clipping), and the first step would end in a traceback.
        scaled_clip = getattr(self._trainer, "gradient_clip_val", None) and _scaler(self._trainer) is not None
        fused = self.device.type in ("cuda", "cpu") and not scaled_clip
        kwargs = {"lr": hp.lr, "betas": tuple(hp.betas), "fused": fused}
        optimizer = (MuonAdamW if hp.optimizer == "muon" else torch.optim.AdamW)(self._param_groups(), **kwargs)
        if hp.lr_schedule == "constant" and hp.warmup_steps == 0:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _param_groups(self) -> list[dict]:
        hp = self.hparams
        # Decay only the matmul weights; a tied head weight is the embedding's, so it counts as an embedding.
        embeddings = {id(m.weight) for m in self.model.modules() if isinstance(m, torch.nn.Embedding)}
        matmuls = {id(m.weight) for m in self.model.modules() if isinstance(m, torch.nn.Linear)} - embeddings
        hidden = {id(m.weight) for m in self.model.blocks.modules() if isinstance(m, torch.nn.Linear)}
        muon = hidden if hp.optimizer == "muon" else set()
        params = list(self.model.parameters())
        groups = [
            {"params": [p for p in params if id(p) in muon], "muon": True, "lr": hp.muon_lr, "weight_decay": 0.0},
            {"params": [p for p in params if id(p) in matmuls - muon], "weight_decay": hp.weight_decay},
            {"params": [p for p in params if id(p) not in matmuls], "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for a fused AdamW, which may unscale fp16 gradients
        # inside its step. bf16 has no gradient scaler, so the gradients are already true: clip them here.
        if gradient_clip_val and _scaler(self.trainer) is None:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` as a fraction of the peak."""
        hp = self.hparams
        if step < hp.warmup_steps:
            return (step + 1) / hp.warmup_steps
        if hp.lr_schedule == "constant":
            return 1.0
        # Length from max_steps, not trainer.estimated_stepping_batches: reading that skips restoring the
        # loader's state on resume (Lightning #20550).
        total = self.trainer.max_steps
        progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
        floor = hp.min_lr / hp.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
