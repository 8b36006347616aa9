"""Refusals and warnings of a run's settings, made before anything starts: a setting Lightning would take
without a word (or only fail on after the training before it) that cannot do what was meant."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.pytorch.accelerators import AcceleratorRegistry

from babygpt_pl.checkpoint import LAST_FILE, LatestCheckpoint
from babygpt_pl.data import read_text, text_sha256
from babygpt_pl.errors import UserError, warn
from babygpt_pl.files import check_folder_writable, same_file
from babygpt_pl.generation import encode_prompts
from babygpt_pl.loggers import logger_settings
from babygpt_pl.module import FIT_METRICS, BabyGPTModule
from babygpt_pl.tokenizer import CharTokenizer


def check_accelerator(trainer: Namespace) -> None:
    """A device asked for that this machine lacks: Lightning's "No supported gpu backend found!" names no fix, and
    for a TPU it suggests installing torch_xla. And fp16 AMP on a CPU, which Lightning swaps for bf16 silently."""
    accelerator = str(trainer.accelerator)
    gpu = torch.cuda.is_available() or (accelerator == "gpu" and torch.backends.mps.is_available())
    if accelerator in ("gpu", "cuda") and not gpu:
        raise UserError(
            f"trainer.accelerator is {accelerator} but this machine has no CUDA GPU: pass --trainer.accelerator cpu "
            "(DDP then runs over gloo)"
        )
    if accelerator in AcceleratorRegistry and not AcceleratorRegistry[accelerator]["accelerator"].is_available():
        raise UserError(f"trainer.accelerator is {accelerator}, not on this machine: use --trainer.accelerator cpu")
    on_cpu = accelerator == "cpu" or (
        accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )
    if on_cpu and str(trainer.precision) in ("16", "16-mixed"):
        raise UserError(
            f"trainer.precision {trainer.precision} (fp16 mixed precision) does not run on a CPU: pass "
            "--trainer.precision bf16-mixed, or 32-true"
        )


def check_trainer_settings(trainer: Namespace, subcommand: str) -> None:
    """Settings Lightning would take without a word (or with a traceback) that cannot do what was meant."""
    fitting = subcommand == "fit"
    if fitting and str(trainer.precision) == "16-true":
        # AdamW keeps its mean of squared gradients in the weights' dtype: in fp16 a gradient of 1e-4 squares to 0,
        # and the update (mean gradient over the root of that) is infinite at the first step, whatever the rate.
        raise UserError(
            "trainer.precision 16-true trains fp16 weights, in which AdamW's mean of squared gradients underflows to "
            "0 and the first update is infinite: pass --trainer.precision bf16-mixed (or 16-mixed on a GPU), or 32-true"
        )
    every = trainer.val_check_interval
    if fitting and (isinstance(every, bool) or not isinstance(every, int) or every <= 0):
        # 0: Lightning would divide by it mid-epoch. A fraction of an epoch (null is 1.0) never comes in one endless
        # epoch: no validation, no best checkpoint, not a word. A time ("00:00:30:00") could fall inside an
        # optimizer step, and its checkpoint would lose the gradient accumulated so far.
        raise UserError(
            f"trainer.val_check_interval must be a positive number of steps (batches) between validations, got "
            f"{every!r}: the training windows are an endless stream, whose epoch never ends; for no validation "
            "pass --trainer.limit_val_batches 0"
        )
    accumulate, clip = trainer.accumulate_grad_batches, trainer.gradient_clip_val
    if accumulate is not None and accumulate < 1:  # Lightning: a ZeroDivisionError at the first step
        raise UserError(f"trainer.accumulate_grad_batches must be >= 1 (1: no accumulation), got {accumulate}")
    if fitting and accumulate and every % accumulate:
        # Lightning counts val_check_interval in batches: validation, and the checkpoints saved after it, would fall
        # inside an optimizer step, without the gradient accumulated so far; a run resumed from them would differ.
        lower, higher = every // accumulate * accumulate, (every // accumulate + 1) * accumulate
        raise UserError(
            f"trainer.val_check_interval ({every} batches) must be a multiple of trainer.accumulate_grad_batches "
            f"({accumulate}): its checkpoints would fall inside an optimizer step; use {lower or higher}"
            + (f" or {higher}" if lower else "")
        )
    if clip is not None and clip < 0:  # a negative norm limit flips the gradients: the loss would climb
        raise UserError(f"trainer.gradient_clip_val must be >= 0 (0 or null: no clipping), got {clip}")
    if str(trainer.devices) == "0":  # Lightning's error names no fix
        raise UserError("trainer.devices must be a count of devices, a list of ids, -1 (all) or auto, got 0")
    if fitting and trainer.limit_train_batches == 0:  # Lightning would end the run at once, silently
        raise UserError("trainer.limit_train_batches is 0: this run would train nothing; drop it")
    if fitting and trainer.enable_checkpointing is False:  # Lightning's error names no fix
        raise UserError(
            "trainer.enable_checkpointing false: babygpt always adds its checkpoint callback; to save no checkpoint "
            "pass --checkpoint.save_top_k 0 --checkpoint.save_last false instead"
        )
    if fitting and trainer.max_epochs not in (None, -1):  # Lightning would train on, and stop only at max_steps
        raise UserError(
            f"trainer.max_epochs {trainer.max_epochs}: the training windows are an endless stream, so an epoch never "
            "ends; give the length as --trainer.max_steps (or --trainer.max_time)"
        )
    if fitting and trainer.max_steps == 0:
        raise UserError("trainer.max_steps is 0: this run would train nothing; give the steps to train (-1: no limit)")
    limit = {"validate": "limit_val_batches", "test": "limit_test_batches"}.get(subcommand)
    if limit and trainer[limit] == 0:  # Lightning would report nothing and exit 0
        raise UserError(f"trainer.{limit} is 0: this {subcommand} would evaluate nothing; drop it")


def check_output_folders(config: Namespace, checkpoints: bool) -> None:
    """The folders of the loggers (and of the checkpoints, when ``checkpoints``) must take files before the run
    starts: else the first save, after all the training before it, would end the run in a traceback."""
    for logger in logger_settings(config.trainer.logger):
        for key in ("save_dir", "dir"):  # (dir: WandbLogger's other name for it)
            if folder := getattr(logger, "init_args", {}).get(key):
                check_folder_writable(folder, f"--trainer.logger.init_args.{key}")
    if config.trainer.default_root_dir:  # the default logger's, and the checkpoints' without a dirpath
        check_folder_writable(config.trainer.default_root_dir, "--trainer.default_root_dir")
    if checkpoints and config.checkpoint.dirpath:  # (None: Lightning's folder under the logger's, checked above)
        check_folder_writable(config.checkpoint.dirpath, "--checkpoint.dirpath")


def check_checkpoint_options(checkpoint: Namespace) -> None:
    """A misspelt metric in --checkpoint.monitor would end the run at its first validation, after all the training
    before it (and one in --checkpoint.filename would silently be written as 0). A filename that leaves the
    checkpoint folder (``../best``, ``/tmp/best``) would write over a file there without a word, ``last`` would
    write the best and the newest checkpoint to one file, and ``save_last: link`` would lose the steps after the
    best checkpoint from last.ckpt."""
    if checkpoint.save_last == "link":
        raise UserError(
            "checkpoint.save_last link makes last.ckpt a link to the best checkpoint, without the steps after it: "
            "use true (last.ckpt holds the newest weights) or false"
        )
    # Training is one endless epoch, checkpointed after each validation (trainer.val_check_interval).
    at_validations = "checkpoints are saved after each validation (set trainer.val_check_interval)"
    if checkpoint.save_on_train_epoch_end:
        raise UserError(
            "checkpoint.save_on_train_epoch_end true would save nothing until training ends, as its one epoch "
            f"never ends: drop it; {at_validations}"
        )
    if (checkpoint.every_n_epochs or 0) > 1:
        raise UserError(
            f"checkpoint.every_n_epochs {checkpoint.every_n_epochs} would never save a best checkpoint, as "
            f"training's one epoch never ends: drop it; {at_validations}"
        )
    for option in ("every_n_train_steps", "train_time_interval"):
        if checkpoint[option]:
            # Lightning saves these at a training batch's end, before that step's validation, under the previous
            # validation's score: a "best" file of later weights than its loss (also in the name, monitor or not).
            raise UserError(
                f"checkpoint.{option} {checkpoint[option]} ranks and names a checkpoint by the validation before "
                f"its weights, not theirs: drop it; {at_validations}, and --checkpoint.save_top_k -1 keeps them all"
            )
    name = checkpoint.filename or ""
    if os.path.isabs(name) or ".." in re.split(r"[/\\]", name):
        raise UserError(
            f"checkpoint.filename {name} leaves the checkpoint folder: give a file name, e.g. best-{{step}}, and "
            "the folder with --checkpoint.dirpath"
        )
    if name.endswith(".ckpt"):  # Lightning adds it: best.ckpt.ckpt
        raise UserError(f"checkpoint.filename {name}: leave out the .ckpt, which is added")
    if name == LatestCheckpoint.CHECKPOINT_NAME_LAST:  # the best checkpoint and the newest would share one file
        raise UserError(f"checkpoint.filename {name} is the name of the newest checkpoint: choose another, e.g. best")
    names = ", ".join(FIT_METRICS)
    if checkpoint.monitor is not None and checkpoint.monitor not in FIT_METRICS:
        raise UserError(f"checkpoint.monitor {checkpoint.monitor} is not a metric babygpt logs: use one of {names}")
    for metric in re.findall(r"\{([^{}:]+)", name):
        if metric not in (*FIT_METRICS, "epoch", "step"):
            raise UserError(
                f"checkpoint.filename {name} names {{{metric}}}, which babygpt does not log: use "
                f"{{epoch}}, {{step}} or one of {names}"
            )


def warn_of_a_short_run(trainer: Namespace, warmup_steps: int, saves_last: bool) -> None:
    """Warnings, not errors: a short smoke run of a long config is a normal thing to do."""
    every, steps = trainer.val_check_interval, trainer.max_steps
    batches = steps * (trainer.accumulate_grad_batches or 1)  # val_check_interval counts batches, max_steps steps
    if isinstance(every, int) and 0 < batches < every and trainer.limit_val_batches != 0:
        saved = "last.ckpt is still saved at the end" if saves_last else "with checkpoint.save_last off, nothing saved"
        warn(
            f"trainer.val_check_interval ({every}) is more than trainer.max_steps ({steps}): this run will not "
            f"validate (no val loss, no best checkpoint; {saved})"
        )
    if 0 <= steps < warmup_steps:
        warn(
            f"model.warmup_steps ({warmup_steps}) is more than trainer.max_steps ({steps}): the learning rate "
            "never reaches model.lr"
        )


def unused_model_settings(model: Namespace) -> dict[str, str]:
    """The rates and decay that the model's other settings leave unused, each with why."""
    unused = {
        "min_lr": model.lr_schedule != "cosine" and "it is the floor of --model.lr_schedule cosine",
        "muon_lr": model.optimizer != "muon" and "it is the rate of --model.optimizer muon",
        "weight_decay": model.optimizer == "muon"
        and model.tie_weights
        and "Muon does not decay its matrices, and the rest (embeddings with the tied head, biases, LayerNorms) is "
        "never decayed",
    }
    return {key: why for key, why in unused.items() if why}


def warn_of_unused_model_settings(model: Namespace, given: Callable[[str], bool]) -> None:
    """One of those set (``given("model.min_lr")``) to other than its default is most likely a slip, e.g. min_lr
    with the constant schedule. Said, not refused: a config may keep one for a switch of schedule or optimizer.
    (A full config, as --print_config writes, gives every setting: one at its default is no one's choice.)"""
    defaults = inspect.signature(BabyGPTModule).parameters
    for key, why in unused_model_settings(model).items():
        if given(f"model.{key}") and model[key] != defaults[key].default:
            warn(f"model.{key} {model[key]} is not used in this run: {why}")


def warn_of_earlier_checkpoints(folder: str, saves_last: bool) -> None:
    """A new run writes its own last.ckpt over an earlier run's (unless ``saves_last`` is off), and its best
    checkpoint beside the earlier best (ModelCheckpoint knows only the files it wrote): say so before, while that run
    can still be resumed."""
    earlier = sorted(p.name for p in Path(folder).glob("*.ckpt"))
    if LAST_FILE in earlier and saves_last:
        warn(
            f"{folder} holds {', '.join(earlier)} from an earlier run: this new run overwrites last.ckpt and keeps "
            "its own best checkpoint beside the others (to continue that run instead, pass --ckpt_path last)"
        )
    elif earlier:
        warn(f"{folder} holds {', '.join(earlier)} from an earlier run: this new run keeps its checkpoints beside them")


def warn_of_unfinished_writes(folder: str) -> None:
    """A process killed (kill -9, a lost node) in the middle of a checkpoint save leaves its temp file behind:
    hidden, so without a word they would pile up over repeated preemptions. Not deleted here: another run writing
    in this folder may be in the middle of its own."""
    unfinished = sorted(Path(folder).glob(".*.ckpt.*.tmp"))
    if unfinished:
        size = sum(p.stat().st_size for p in unfinished if p.exists()) / 2**20  # (one may be renamed meanwhile)
        warn(
            f"{folder} holds {len(unfinished)} unfinished checkpoint write(s) of a killed run ({unfinished[0].name}"
            f"{', …' if len(unfinished) > 1 else ''}; {size:.0f} MiB): delete them unless a run is saving there now"
        )


def warn_of_a_replaced_last(folder: str, resumed: str) -> None:
    """A resumed run writes its last.ckpt over the one in its folder, which may be newer than the checkpoint it
    resumes (say, a best checkpoint): say so before, while that file can still be copied away."""
    last = os.path.join(folder, LAST_FILE)
    if os.path.isfile(last) and not same_file(last, resumed):
        warn(
            f"{last} is not the checkpoint this run resumes ({resumed}): this run overwrites it (to keep it, copy "
            "it away first or pass another --checkpoint.dirpath)"
        )


def check_not_an_input(output: str, *inputs: str | None) -> None:
    """--generation.output must not replace a file the run was given (the checkpoint: the model would be lost)."""
    for path in inputs:
        if same_file(output, path):
            raise UserError(
                f"--generation.output {output} is {path}, an input of this run (the checkpoint, a config, the prompts "
                "file or the corpus): choose another file"
            )


def check_not_the_trained_text(output: str, sha256: str | None) -> None:
    """--generation.output must not replace the text the model was trained on, wherever it is: predict and chat
    take no corpus, so --data.path need not name it."""
    if not sha256 or not os.path.isfile(output):
        return
    try:
        text = read_text(output)
    except UserError:  # empty or not UTF-8: not the corpus
        return
    if text_sha256(text) == sha256:
        raise UserError(f"--generation.output {output} holds the text this model was trained on: choose another file")


def check_prompts(tokenizer: CharTokenizer, prompts: list[str], oov: str, window: int, context: str = "") -> None:
    """Prompts encoded as generation will encode them, so that a bad one is one line before the run starts (the
    crop warning is left to generation). ``context`` says whose prompts they are, where the user may not know."""
    try:
        encode_prompts(tokenizer, prompts, window, oov, warn=lambda _: None)
    except UserError as err:
        raise UserError(f"{context}: {err}" if context else str(err)) from None


def warn_of_unmatchable_stops(stop: list[str] | str, tokenizer: CharTokenizer) -> None:
    """A stop string with a character the model never writes can never end a sample: most likely a slip (a
    Chinese stop string for an English model)."""
    if isinstance(stop, str):  # refused by GenerationConfig, with an example: no word on its characters first
        return
    if never := [s for s in stop if tokenizer.unknown(s)]:
        warn(f"generation.stop {never} holds characters outside the model's vocabulary: it can never match")
