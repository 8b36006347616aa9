"""The ``babygpt`` command: LightningCLI over BabyGPTModule and CiDataModule.

babygpt fit --config configs/cpu.yaml
babygpt fit --config configs/cpu.yaml --ckpt_path checkpoints/last.ckpt     # resume
babygpt validate --config configs/cpu.yaml --ckpt_path checkpoints/last.ckpt
babygpt predict --ckpt_path checkpoints/last.ckpt                            # no corpus needed
babygpt chat --ckpt_path checkpoints/last.ckpt                               # interactive, streaming
"""

from __future__ import annotations

import errno
import glob
import inspect
import itertools
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException

from babygpt_pl.callbacks import GracefulStop, PredictionPrinter, ProgressBar, SampleTable, TokenThroughput
from babygpt_pl.chat import chat_loop, load_weights
from babygpt_pl.checkpoint import LAST_FILE, AtomicCheckpointIO, LatestCheckpoint, check_checkpoint
from babygpt_pl.corpus import DEFAULT_NAME
from babygpt_pl.data import DEFAULT_PROMPTS, CiDataModule, as_prompt_list, read_prompts, read_text, text_sha256
from babygpt_pl.errors import Terminated, UserError, debugging, one_line, terminate_on_sigterm, warn
from babygpt_pl.files import check_folder_writable, check_writable
from babygpt_pl.generation import GenerationConfig, encode_prompts
from babygpt_pl.module import FIT_METRICS, BabyGPTModule
from babygpt_pl.tokenizer import CharTokenizer

# The model settings that decide the shapes of the weights.
_WEIGHTS = ("block_size", "n_embed", "n_head", "n_layer", "tie_weights", "pad_vocab_to")
# On resume, also the optimizer, whose state is shaped by them: Lightning would load an AdamW state into Muon's
# groups (or the reverse) and carry on with the wrong one.
_SHAPE = (*_WEIGHTS, "optimizer")
# Settings a resumed run takes from the checkpoint, whatever the config says: the rates from its optimizer state (its
# param groups and the scheduler's base rates), the rest from its hyper-parameters, which replace the config's.
# A change to them would be silently ignored.
_RESUMED = (
    "lr",
    "muon_lr",
    "betas",
    "weight_decay",
    "lr_schedule",
    "warmup_steps",
    "min_lr",
    "dropout",
    "attn_dropout",
)
# Settings of how a run executes, not of what it trains: a resumed run takes this run's.
_RUNTIME = ("compile", "compile_mode")
# What checkpoints from before a hyper-parameter existed were trained with.
_BEFORE = {"optimizer": "adamw"}
# ckpt_path values Lightning resolves itself during fit (a SLURM requeue's checkpoint, a model registry's).
_FIT_ONLY_CKPT = ("hpc", "registry")
# The sections of a config file: each is a mapping of settings.
_SECTIONS = ("trainer", "model", "data", "generation", "checkpoint")


DEFAULT_LOGGER_DIR = "outputs"


def trainer_defaults() -> dict:
    """Trainer settings the configs may override; fresh callback objects for each CLI run."""
    return {
        "max_steps": 5000,
        "val_check_interval": 50,
        "check_val_every_n_epoch": None,
        "log_every_n_steps": 10,
        # Where config.yaml goes without a logger (with one, its save_dir): not the working folder, where it would
        # replace the user's own config.yaml, even the one this run reads.
        "default_root_dir": DEFAULT_LOGGER_DIR,
        "logger": {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            # Offline: never waits on the network. `wandb sync outputs/wandb/offline-run-*` uploads later;
            # --trainer.logger.init_args.offline false logs online.
            "init_args": {"project": "babygpt", "offline": True, "save_dir": DEFAULT_LOGGER_DIR},
        },
        "callbacks": [LearningRateMonitor(logging_interval="step"), TokenThroughput(), GracefulStop(), SampleTable()],
    }


CHECKPOINT_DEFAULTS = {
    "checkpoint.dirpath": "checkpoints",
    "checkpoint.filename": "best-{step}-{val_loss:.3f}",
    "checkpoint.monitor": "val_loss",
    "checkpoint.save_top_k": 1,
    "checkpoint.save_last": True,
    # Always overwrite last.ckpt (never last-v1.ckpt), so `--ckpt_path checkpoints/last.ckpt` is the newest run.
    "checkpoint.enable_version_counter": False,
}


class Trainer(L.Trainer):
    """Lightning's Trainer plus ``chat``: LightningCLI's subcommands must be Trainer methods."""

    def chat(self, model: BabyGPTModule, datamodule: L.LightningDataModule | None = None, ckpt_path: str | None = None):
        """Generate interactively: type a prompt and the continuation streams out; an empty line exits.

        ``ckpt_path``: the checkpoint whose weights to load first; None chats with the model's weights as they are
        (`babygpt chat` has loaded its --ckpt_path by then, from the one read that also checked the file)."""
        if ckpt_path is not None:
            load_weights(model, ckpt_path)
        # The device --trainer.accelerator/devices chose, as predict runs on (a GPU's presence alone does not).
        refused = chat_loop(model.model.to(self.strategy.root_device), model.tokenizer, model.generation)
        if refused and not sys.stdin.isatty():  # a script's input: its exit status must tell that prompts failed
            raise UserError(f"{refused} prompt(s) of the input were refused (see the errors above); fix them")


def check_accelerator(trainer) -> None:
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


def check_trainer_settings(trainer, subcommand: str) -> None:
    """Settings Lightning would take without a word (or with a traceback) that cannot do what was meant."""
    fitting = subcommand == "fit"
    every = trainer.val_check_interval
    if every is not None and every <= 0:  # Lightning would divide by it in the middle of the first epoch
        raise UserError(f"trainer.val_check_interval must be a positive number of steps, got {every}")
    accumulate, clip = trainer.accumulate_grad_batches, trainer.gradient_clip_val
    if accumulate is not None and accumulate < 1:  # Lightning: a ZeroDivisionError at the first step
        raise UserError(f"trainer.accumulate_grad_batches must be >= 1 (1: no accumulation), got {accumulate}")
    if fitting and isinstance(every, int) and accumulate and every % accumulate:
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


def check_output_folders(config, checkpoints: bool) -> None:
    """The folders of the loggers (and of the checkpoints, when ``checkpoints``) must take files before the run
    starts: else the first save, after all the training before it, would end the run in a traceback."""
    for logger in _logger_settings(config.trainer.logger):
        for key in ("save_dir", "dir"):  # (dir: WandbLogger's other name for it)
            if folder := getattr(logger, "init_args", {}).get(key):
                check_folder_writable(folder, f"--trainer.logger.init_args.{key}")
    if config.trainer.default_root_dir:  # the default logger's, and the checkpoints' without a dirpath
        check_folder_writable(config.trainer.default_root_dir, "--trainer.default_root_dir")
    if checkpoints and config.checkpoint.dirpath:  # (None: Lightning's folder under the logger's, checked above)
        check_folder_writable(config.checkpoint.dirpath, "--checkpoint.dirpath")


def check_checkpoint_options(checkpoint) -> None:
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


def warn_of_a_short_run(trainer, warmup_steps: int) -> None:
    """Warnings, not errors: a short smoke run of a long config is a normal thing to do."""
    every, steps = trainer.val_check_interval, trainer.max_steps
    batches = steps * (trainer.accumulate_grad_batches or 1)  # val_check_interval counts batches, max_steps steps
    if isinstance(every, int) and 0 < batches < every and trainer.limit_val_batches != 0:
        warn(
            f"trainer.val_check_interval ({every}) is more than trainer.max_steps ({steps}): this run will not "
            "validate (no val loss, no best checkpoint; last.ckpt is still saved at the end)"
        )
    if 0 <= steps < warmup_steps:
        warn(
            f"model.warmup_steps ({warmup_steps}) is more than trainer.max_steps ({steps}): the learning rate "
            "never reaches model.lr"
        )


def warn_of_earlier_checkpoints(folder: str) -> None:
    """A new run writes its own last.ckpt over an earlier run's, and its best checkpoint beside the earlier
    best (ModelCheckpoint knows only the files it wrote): say so before, while that run can still be resumed."""
    earlier = sorted(p.name for p in Path(folder).glob("*.ckpt"))
    if LAST_FILE in earlier:
        warn(
            f"{folder} holds {', '.join(earlier)} from an earlier run: this new run overwrites last.ckpt and keeps "
            "its own best checkpoint beside the others (to continue that run instead, pass --ckpt_path last)"
        )
    elif earlier:
        warn(f"{folder} holds {', '.join(earlier)} from an earlier run: this new run keeps its checkpoints beside them")


def warn_of_a_replaced_last(folder: str, resumed: str) -> None:
    """A resumed run writes its last.ckpt over the one in its folder, which may be newer than the checkpoint it
    resumes (say, a best checkpoint): say so before, while that file can still be copied away."""
    last = os.path.join(folder, LAST_FILE)
    if os.path.isfile(last) and not same_file(last, resumed):
        warn(
            f"{last} is not the checkpoint this run resumes ({resumed}): this run overwrites it (to keep it, copy "
            "it away first or pass another --checkpoint.dirpath)"
        )


def same_file(a: str | None, b: str | None) -> bool:
    """Whether two paths name one regular file. Regular files only: in a terminal /dev/stdin and /dev/stdout are
    one device, and rightly so."""
    return bool(a and b) and os.path.isfile(a) and os.path.isfile(b) and os.path.samefile(a, b)


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


def spare_wandb_warnings(logger: WandbLogger) -> None:
    """Two warnings wandb prints for Lightning's WandbLogger that the user can do nothing about."""
    # Lightning hands wandb.init `anonymous` even when unset, which wandb >= 0.23 warns of (wandb#10909).
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    # wandb looks for a git repository from its folder, and warns "git root outputs does not exist" before
    # creating it: the first run in a fresh clone.
    if logger.save_dir:
        os.makedirs(logger.save_dir, exist_ok=True)


def _set(args, values: dict) -> None:
    """Set each of ``values`` in a logger's init_args, a jsonargparse Namespace or a plain dict alike."""
    for key, value in values.items():
        args[key] = value


def _logger_settings(logger) -> list:
    """The trainer's logger settings as a list (one logger, a list of them, or none: true, false or null)."""
    return logger if isinstance(logger, list) else [logger]


def _wandb_loggers(logger) -> list:
    """The WandbLogger settings among the trainer's logger settings."""
    return [lg for lg in _logger_settings(logger) if str(getattr(lg, "class_path", "")).endswith("WandbLogger")]


def check_prompts(
    tokenizer: CharTokenizer, prompts: list[str], oov: str, window: int, corpus: str, option: str
) -> None:
    """Before training: the prompts of the samples logged at each validation (set by ``option``) must encode as
    generation will encode them, or the first validation would stop the run."""
    try:
        encode_prompts(tokenizer, prompts, window, oov, warn=lambda _: None)
    except UserError as err:
        context = f"{option}, the prompts of the samples logged at each validation, against {corpus}"
        raise UserError(f"{context}: {err}") from None


def warn_of_unmatchable_stops(stop: list[str] | str, tokenizer: CharTokenizer) -> None:
    """A stop string with a character the model never writes can never end a sample: most likely a slip (a
    Chinese stop string for an English model)."""
    if isinstance(stop, str):  # refused by GenerationConfig, with an example: no word on its characters first
        return
    if never := [s for s in stop if tokenizer.unknown(s)]:
        warn(f"generation.stop {never} holds characters outside the model's vocabulary: it can never match")


def _raised_in(err: BaseException, module: str) -> bool:
    """Whether ``err`` went through a frame of a file named ``module``."""
    tb = err.__traceback__
    while tb is not None:
        if module in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def construction_error(err: ValueError) -> str | None:
    """What went wrong where jsonargparse could make no class a setting names (a logger, a callback): the class
    and its own error, in one line. Its message is the union's types and the whole namespace, with the cause
    (a missing package, a refused combination of arguments) chained below; None for any other error."""
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    paths = [m[1] for e in chain if (m := re.search(r"class_path[ =]'([^']+)'", str(e)))]
    if not paths or len(chain) == 1:
        return None
    return f"{paths[0]} could not be made: {one_line(chain[-1]).rstrip('.')}; fix or drop its settings"


def _differences(saved: dict, now, keys, prefix: str = "") -> list[str]:
    """``{prefix}{key}=saved (this run: now)`` for each of ``keys`` that ``saved`` holds with another value."""
    return [
        f"{prefix}{k}={_plain(saved[k])!r} (this run: {_plain(now[k])!r})"
        for k in keys
        if k in saved and _plain(saved[k]) != _plain(now[k])
    ]


def _plain(value):
    """A setting as compared and shown: YAML gives lists where the defaults are tuples."""
    return list(value) if isinstance(value, (list, tuple)) else value


_UNION_ERROR = re.compile(
    r'^Parser key "(?P<key>[^"]+)": Does not validate against any of the Union subtypes Subtypes: \[(?P<types>.*)\] '
    r"Errors: .* Given value: (?P<value>.*)$"
)
_PLAIN_TYPE = re.compile(r"typing\.Literal\[(?P<values>[^\]]*)\]|<class '(?P<cls>int|float|str|bool|NoneType)'>")
_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "NoneType": "null"}


def short_union_error(message: str) -> str:
    """jsonargparse's error for a value that no type of a union takes, as the key, the value and what it may be.

    Its own lists every type and one error per type: 600 characters for ``--trainer.precision bf17``. Only unions
    of literal values and plain types are shortened; any other message is returned as it is.
    """
    match = _UNION_ERROR.match(message)
    if match is None:
        return message
    accepted: list[str] = []
    rest = match["types"]
    for part in _PLAIN_TYPE.finditer(match["types"]):
        rest = rest.replace(part[0], "", 1)
        if part["values"] is not None:
            accepted += [v.strip().strip("'\"") for v in part["values"].split(",")]
        else:
            accepted.append(_TYPE_NAMES[part["cls"]])
    if rest.replace(",", "").strip():
        return message  # a type this cannot name briefly (a class path, a list): keep everything
    *most, last = dict.fromkeys(accepted)
    choices = f"{', '.join(most)} or {last}" if most else last
    return f"{match['key']}: {match['value']} is not accepted; give {choices}"


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad option or config file in one line (the project's rule for errors), not after a ~100-line
    usage dump; JSONARGPARSE_DEBUG or --debug (``verbose``, set by main) still shows everything."""

    verbose = False
    config_files: dict[str, dict] = {}  # the --config files' settings (set by main), to name the file of a bad key

    def error(self, message: str, ex: Exception | None = None):
        # exit_on_error=False: an inner parser jsonargparse made to try one type of a union, expecting a raise.
        if not self.exit_on_error or self.verbose or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        command = self.prog.replace(" [options]", "")
        message = short_union_error(one_line(message))
        if unknown := re.search(r"Subcommand '(\w+)' does not accept option '([^']+)'", message):
            command = f"{command} {unknown[1]}"  # (the top parser's message: its --help lists no options)
            if files := [path for path, content in self.config_files.items() if _holds_key(content, unknown[2])]:
                message = f"config file {files[0]} sets {unknown[2]}, which is not an option: check its spelling"
        print(f"error: {message} (see {command} --help)", file=sys.stderr)
        sys.exit(2)


class KeepInputConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback, refusing to write the run's config over a --config file it was given
    (``--trainer.default_root_dir .`` without a logger would: the user's comments and layout lost)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The model's settings reach the loggers as its hyper-parameters; the run's others too (data, trainer,
        # checkpoint, generation, seed), so that runs of other batch sizes or lengths can be told apart in wandb.
        # (Through the YAML that config.yaml holds: plain values, where the namespace holds objects such as paths.)
        settings = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for key in ("model", "optimizer", "lr_scheduler"):  # (LightningCLI's own optimizer options, unused here:
            settings.pop(key, None)  # their null would meet the model's optimizer in one flat wandb config)
        for logger in trainer.loggers:
            logger.log_hyperparams(settings)

    def check_target(self, trainer: L.Trainer) -> None:
        """Called by the CLI once the trainer exists, before anything is written or a logger starts its run."""
        if not self.save_to_log_dir or trainer.log_dir is None:
            return
        target = os.path.join(trainer.log_dir, self.config_filename)
        fix = (
            "give the logger another folder (--trainer.logger.init_args.save_dir DIR)"
            if trainer.loggers
            else "give --trainer.default_root_dir another folder"
        )
        for given in OneLineErrorParser.config_files:
            if same_file(target, given):
                raise UserError(f"this run would save its settings as {target}, over --config {given}: {fix}")


class BabyGPTCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.argv = sys.argv[1:] if args is None else list(args)  # what was given, for _given
        # Per command, not per process: a CLI made after another in one process (tests) read its config files.
        OneLineErrorParser.config_files = check_config_files(self.argv)
        super().__init__(
            BabyGPTModule,
            CiDataModule,
            parser_class=OneLineErrorParser,
            # Each run in the same folder rewrites outputs/config.yaml instead of refusing (Lightning #17168).
            save_config_callback=KeepInputConfig,
            save_config_kwargs={"overwrite": True},
            trainer_class=Trainer,
            trainer_defaults=trainer_defaults(),
            seed_everything_default=1337,
            args=args,
            run=run,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "chat": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.block_size", "data.block_size")
        parser.add_class_arguments(GenerationConfig, "generation")
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)

    def _set_seed(self) -> None:
        try:
            super()._set_seed()
        except ValueError as err:  # Lightning's: "-5 is not in bounds, numpy accepts from 0 to 4294967295"
            raise UserError(f"seed_everything: {err}; or true (a random seed) or false (none)") from None

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyper-parameters here; check the file first so a missing, truncated
        # or unsafe file gets one clear line instead of a traceback.
        subcommand = self.config.get("subcommand")
        path = self._resolve_ckpt_path(subcommand) if subcommand else None
        checkpoint = check_checkpoint(path) if path and path not in ("last", *_FIT_ONLY_CKPT) else {}
        # Only what is read below, not the weights and optimizer state for the whole run (Lightning loads its own);
        # chat's weights, which nothing else loads.
        kept = ("hyper_parameters", "wandb_run_id", "global_step", CiDataModule.__qualname__)
        kept += ("state_dict",) if subcommand == "chat" else ()
        self.checkpoint = {k: checkpoint[k] for k in kept if k in checkpoint}
        if subcommand != "fit" and self.checkpoint:
            self._check_model_options(path)
            self._default_to_trained_data()
        if subcommand == "fit" and self.checkpoint:
            if "optimizer_states" not in checkpoint:
                raise UserError(
                    f"checkpoint {path} holds the weights alone (checkpoint.save_weights_only): it cannot resume a "
                    "run; use it with predict, validate or test, or drop --ckpt_path to start a new run"
                )
            # Lightning would silently replace this run's model settings with the checkpoint's.
            saved, model = self.checkpoint["hyper_parameters"], self.config.fit.model
            saved = {**_BEFORE, **saved}
            if wrong := ", ".join(_differences(saved, model, _SHAPE)):
                raise UserError(
                    f"checkpoint {path} has a different model: {wrong}; resume with the config it was "
                    "trained with, or drop --ckpt_path to start a new run"
                )
            unused = {"muon_lr"} if model["optimizer"] != "muon" else set()
            unused |= {"min_lr"} if model["lr_schedule"] != "cosine" else set()
            used = [k for k in _RESUMED if k not in unused]
            if wrong := ", ".join(_differences(saved, model, used)):
                raise UserError(
                    f"checkpoint {path} was trained with {wrong}: a resumed run continues the checkpoint's optimizer, "
                    "learning-rate schedule and dropout, so these would be ignored; resume with the checkpoint's "
                    "values, or drop --ckpt_path to start a new run"
                )
            done, max_steps = self.checkpoint.get("global_step", 0), self.config.fit.trainer.max_steps
            if max_steps is not None and 0 <= max_steps <= done:
                raise UserError(
                    f"checkpoint {path} has already trained {done} steps and trainer.max_steps is {max_steps}: "
                    "nothing is left to train; raise --trainer.max_steps to train on"
                )
            if not self._given("checkpoint.dirpath"):  # the resumed run's own folder, not another run's
                self.config.fit.checkpoint.dirpath = os.path.dirname(path) or "."
        self._take_checkpoint_hparams()

    def _take_checkpoint_hparams(self) -> None:
        """Lightning's _parse_ckpt_path from the hyper-parameters read above (it would read the whole file again),
        keeping this run's runtime settings."""
        hparams = {k: v for k, v in self.checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
        if not hparams:
            return
        subcommand = self.config.subcommand
        model = self.config[subcommand].model
        runtime = {k: model[k] for k in _RUNTIME}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        for key, value in runtime.items():
            self.config[subcommand].model[key] = value

    def _resolve_ckpt_path(self, subcommand: str) -> str | None:
        """The checkpoint file to load; "last" becomes the checkpoint folder's last.ckpt, so that it is checked
        like any other file (Lightning would load it unchecked)."""
        config = self.config[subcommand]
        path = config.get("ckpt_path")
        if path is not None and not str(path).strip():  # e.g. --ckpt_path "$UNSET_VARIABLE"
            raise UserError(
                "--ckpt_path is empty: pass a checkpoint file (e.g. checkpoints/last.ckpt), or leave it out"
            )
        if path == "best" or (path in _FIT_ONLY_CKPT and subcommand != "fit"):
            raise UserError(
                f"--ckpt_path {path} is not a file this command can load; pass a checkpoint file, "
                "e.g. --ckpt_path checkpoints/last.ckpt"
            )
        if path != "last":
            return path
        last = os.path.join(config.checkpoint.dirpath or CHECKPOINT_DEFAULTS["checkpoint.dirpath"], LAST_FILE)
        if os.path.isfile(last):
            config.ckpt_path = last
            return last
        if subcommand != "fit":
            raise UserError(f"--ckpt_path last: there is no {last} yet; train first, or pass a checkpoint file")
        # fit starts a new run: resume-if-possible, as on a cluster (the saved config keeps "last", so a requeue
        # resumes). Said here in one line: Lightning's own warning advises save_last=True, which is already set.
        warn(f"--ckpt_path last: there is no {last} yet, so this is a new run")
        return path

    def _default_to_trained_data(self) -> None:
        """validate/test draw the validation windows that training did (the same loss for the same weights):
        data settings left out take the checkpoint's values (one given, even at its default, is used)."""
        data = self.config[self.config.subcommand].data
        defaults = inspect.signature(CiDataModule).parameters
        trained_on = self._trained_on()
        left_out = not self._given("data.path") and _plain(data.path) == _plain(defaults["path"].default)
        if self.config.subcommand in ("validate", "test") and trained_on and left_out:
            # Not the default data/ci.txt, which for a model trained on another text would be built (an 85 MB
            # fetch) only to be refused for its vocabulary. The published corpus, gone, is built where it was.
            if os.path.exists(trained_on):
                data.path = trained_on
            elif Path(trained_on).name != DEFAULT_NAME:
                raise UserError(
                    f"checkpoint {self.config[self.config.subcommand].ckpt_path} was trained on {trained_on}, "
                    "which is not there: pass --data.path to that text"
                )
        saved = {k: v for k, v in self._saved_data_settings().items() if k in defaults}
        for key, value in saved.items():
            if not self._given(f"data.{key}") and _plain(data[key]) == _plain(defaults[key].default):
                data[key] = value
        if self.config.subcommand in ("validate", "test") and (
            other := _differences(saved, data, list(saved), prefix="data.")
        ):
            # Allowed (another look at the model), but its loss is not the one training logged: say so.
            warn(
                f"the checkpoint was trained with {', '.join(other)}: this evaluates other windows than training "
                "validated on, so the loss differs from its logged val_loss (leave these out to take the checkpoint's)"
            )

    def _check_model_options(self, path: str) -> None:
        """Outside fit the checkpoint decides the model: a model setting this run asks for (given, or set to
        other than its default) that the checkpoint does not have would be silently replaced."""
        saved, model = self.checkpoint["hyper_parameters"], self.config[self.config.subcommand].model
        defaults = inspect.signature(BabyGPTModule).parameters
        asked = [k for k in _WEIGHTS if self._given(f"model.{k}") or _plain(model[k]) != _plain(defaults[k].default)]
        if wrong := ", ".join(_differences(saved, model, asked)):
            raise UserError(
                f"checkpoint {path} has {wrong}: the checkpoint decides the model here, so drop those "
                "--model options (or the config file that sets them)"
            )

    def _given(self, dotted: str) -> bool:
        """Whether the command line or a --config file sets ``dotted`` (e.g. "model.n_layer"), even to its default:
        the parsed config cannot tell such a value from one left out."""
        flag = f"--{dotted}"
        on_the_line = any(arg == flag or arg.startswith(f"{flag}=") for arg in self.argv)
        return on_the_line or any(_holds_key(c, dotted) for c in OneLineErrorParser.config_files.values())

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        if not self._get(self.config_init, "trainer", {}).get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        try:
            return super().instantiate_trainer(**kwargs)
        # TypeError: e.g. --trainer.devices x on a CPU
        except (ValueError, TypeError, ImportError, MisconfigurationException) as err:
            if not _raised_in(err, "accelerator_connector"):
                raise
            # Lightning refusing the accelerator, strategy, devices or precision asked for: a setting to fix.
            raise UserError(f"the trainer settings were refused: {one_line(err)}") from err

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            if (message := construction_error(err)) is None:
                raise
            raise UserError(message) from err
        if self.subcommand in ("fit", "validate", "test"):  # before the processes start: said once, not per rank
            self.datamodule.check_val_windows(self.trainer.world_size)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if self.subcommand != "fit" and not self.checkpoint:
            raise UserError(f"{self.subcommand} needs a trained model: pass --ckpt_path checkpoints/last.ckpt")
        check_accelerator(config.trainer)
        if self.subcommand in ("predict", "chat"):
            # stdout is the generated text only: a bar for one batch would end up in `babygpt predict > out.txt`.
            config.trainer.enable_progress_bar = False
            if config.generation.output:
                check_writable(config.generation.output, "--generation.output")
                # chat reads no prompts file, but one given is still the user's: never replace it either.
                reads = [config.ckpt_path, *OneLineErrorParser.config_files, config.data.prompts_file, config.data.path]
                check_not_an_input(config.generation.output, *reads)
                check_not_the_trained_text(config.generation.output, self._saved_data_settings().get("text_sha256"))
            tokenizer = CharTokenizer(self.checkpoint["hyper_parameters"]["vocab"])
            warn_of_unmatchable_stops(config.generation.stop, tokenizer)
            if self.subcommand == "predict":
                self._check_prompts_encode(config, tokenizer)
                if not self._given("trainer.devices"):  # (Lightning's auto: every GPU, each printing a share)
                    config.trainer.devices = 1
            elif as_prompt_list(config.data.prompts) != DEFAULT_PROMPTS or config.data.prompts_file is not None:
                warn(
                    "chat reads its prompts as you type them (or from a pipe: babygpt chat … < prompts.txt); "
                    "--data.prompts and --data.prompts_file are not used"
                )
            config.trainer.logger = False
            config.trainer.enable_model_summary = False
            self.save_config_callback = None  # nothing to record: predict trains nothing
            return
        if config.generation.output:
            warn(
                f"generation.output {config.generation.output} is not written: predict and chat write it; fit and "
                "validate log their samples to wandb (the samples table)"
            )
        if self.subcommand != "fit":
            self.save_config_callback = None  # outputs/config.yaml stays that of the training run
        if config.trainer.enable_progress_bar is not False:
            # Added here, not in the defaults, so that --trainer.enable_progress_bar false still works.
            self.trainer_defaults["callbacks"].append(ProgressBar())
        fitting = self.subcommand == "fit"
        check_trainer_settings(config.trainer, self.subcommand)
        check_output_folders(config, checkpoints=fitting)
        if fitting:
            check_checkpoint_options(config.checkpoint)
        if config.trainer.logger in (False, []):  # LearningRateMonitor refuses to run without a logger (None:
            callbacks = self.trainer_defaults["callbacks"]  # Lightning's default logger)
            callbacks[:] = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        self._given_logger_args = self._adjust_wandb_loggers(config, fitting)
        # The model's vocabulary is the corpus's: read it here, so it is saved with the model's hyper-parameters.
        data = config.data
        if data.source and os.path.exists(data.path):
            warn(f"data.source {data.source} is not used: {data.path} exists (delete it to build it from the source)")
        trained_on = self._trained_on() if fitting else None
        if trained_on and Path(trained_on).name != DEFAULT_NAME and not os.path.exists(data.path):
            # Before data/ci.txt would be built, only for the resume to be refused as another text (a model of the
            # published corpus resumes on it, built anew wherever it is asked for).
            fix = f"resume with --data.path {trained_on}" if os.path.exists(trained_on) else "pass --data.path to it"
            raise UserError(
                f"checkpoint {config.ckpt_path} was trained on {trained_on}, and this run's data.path {data.path} "
                f"does not exist: {fix}"
            )
        settings = ("batch_size", "block_size", "train_ratio", "val_batches", "seed", "source")
        probe = CiDataModule(data.path, **{k: data[k] for k in settings})
        tokenizer = probe.build_tokenizer()
        vocab = "".join(tokenizer.vocab)
        if config.model.vocab is None:
            config.model.vocab = vocab
        elif config.model.vocab != vocab and self.checkpoint:
            raise UserError(
                f"the checkpoint's vocabulary ({len(config.model.vocab)} characters) differs from that of "
                f"{data.path} ({len(vocab)} characters): use the corpus it was trained on"
            )
        elif config.model.vocab != vocab:
            raise UserError(
                f"model.vocab ({len(config.model.vocab)} characters, from the config) differs from the characters "
                f"of {data.path} ({len(vocab)}): drop model.vocab from the config (it is read from the corpus)"
            )
        if self.subcommand == "fit" and self.checkpoint:
            self._check_data_settings(probe.settings())
        trained_text = self._saved_data_settings().get("text_sha256", probe.text_sha256)
        if self.subcommand in ("validate", "test") and trained_text != probe.text_sha256:
            # Allowed, as other data settings are (same characters, another text): its loss is not the logged one.
            warn(
                f"{data.path} is not the text the checkpoint was trained on (same characters, other text): the loss "
                "differs from its logged val_loss"
            )
        # Validation logs samples (SampleTable, to wandb); test does not.
        if self.subcommand in ("fit", "validate") and _wandb_loggers(config.trainer.logger):
            option = "--data.prompts_file" if data.prompts_file else "--data.prompts"
            prompts = read_prompts(data.prompts, data.prompts_file, reread=True)  # again at each validation
            check_prompts(tokenizer, prompts, config.generation.oov, config.model.block_size, data.path, option)
            warn_of_unmatchable_stops(config.generation.stop, tokenizer)

    def _check_prompts_encode(self, config, tokenizer: CharTokenizer) -> None:
        """predict's prompts, read and encoded as generation will, so that a bad one is one line before any of
        Lightning's set-up (the crop warning is left to generation)."""
        path = config.data.prompts_file
        if path and os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
            return  # a pipe (--data.prompts_file /dev/stdin) can be read once only: by the generation
        prompts = read_prompts(config.data.prompts, config.data.prompts_file)
        window = self.checkpoint["hyper_parameters"]["block_size"]
        try:
            encode_prompts(tokenizer, prompts, window, config.generation.oov, warn=lambda _: None)
        except UserError as err:
            if config.data.prompts_file or self._given("data.prompts"):
                raise
            # The user typed no prompt: say which ones these are, and how to give others.
            raise UserError(f"the default prompts ({', '.join(prompts)}): {err}; or give --data.prompts") from None

    def _adjust_wandb_loggers(self, config, fitting: bool) -> list[tuple[dict, dict]]:
        """Set this run's wandb loggers (alone or in a list) up, and return what they were given, to restore in
        after_instantiate_classes: the saved config.yaml keeps the settings as given (a new run started from it
        gets a new wandb run)."""
        given = []
        for index, logger in enumerate(_wandb_loggers(config.trainer.logger)):
            args, changed = logger.init_args, {}
            run_id = self.checkpoint.get("wandb_run_id") if fitting and index == 0 else None  # (validate: its own)
            if run_id and not args.get("id"):
                # Resuming from a checkpoint of a wandb run (the first wandb logger's): log into that same run.
                changed.update(id=run_id, resume="allow")
            # Lightning's folder for a run's files, which a logger's own save_dir (outputs, the default's) overrides;
            # "outputs" itself is no choice of the user's: every saved or printed config holds it.
            own_folder = any(args.get(key) not in (None, DEFAULT_LOGGER_DIR) for key in ("save_dir", "dir"))
            if self._given("trainer.default_root_dir") and not own_folder:
                changed["save_dir"] = config.trainer.default_root_dir
            if os.environ.get("WANDB_MODE") == "disabled":
                # Lightning's offline logger sets WANDB_MODE=dryrun over the user's "disabled"; wandb.init's mode wins.
                changed["mode"] = "disabled"
            given.append((args, {k: args.get(k) for k in changed}))
            _set(args, changed)
        return given

    def _trained_on(self) -> str | None:
        """The text's path as training was given it (none in a checkpoint from before it was saved)."""
        return self._saved_data().get("path")

    def _saved_data_settings(self) -> dict:
        """The data settings the checkpoint was trained with (none in one from before they were saved)."""
        return self._saved_data().get("settings", {})

    def _saved_data(self) -> dict:
        """What the data module saved in the checkpoint (CiDataModule.state_dict)."""
        return self.checkpoint.get(CiDataModule.__qualname__, {})

    def _check_data_settings(self, now: dict) -> None:
        """A resumed run draws the windows the uninterrupted run would have, from the same text and settings."""
        saved = self._saved_data_settings()
        wrong = _differences(saved, now, [k for k in saved if k != "text_sha256"], prefix="data.")
        if saved.get("text_sha256", now["text_sha256"]) != now["text_sha256"]:
            wrong.append(f"another text (this run's {self.config.fit.data.path} differs)")
        if wrong:
            raise UserError(
                f"checkpoint {self.config.fit.ckpt_path} was trained with {', '.join(wrong)}; resume with the data "
                "it was trained on, or drop --ckpt_path to start a new run"
            )

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":  # still "last": there was no last.ckpt, so a new run (said above)
            # Lightning would resume from any other last*.ckpt it finds (last-backup.ckpt), none of it checked.
            kwargs["ckpt_path"] = None
        return kwargs

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (Terminated, SIGTERMException):  # (Lightning's answer to SIGTERM outside training: an exit of code 0)
            # Lightning ends the processes it started on a KeyboardInterrupt, not on these: the other ranks would
            # wait at their next collective, then end in a traceback once this one is gone.
            launcher = self.trainer.strategy.launcher
            if isinstance(launcher, _SubprocessScriptLauncher):
                launcher.kill(getattr(signal, "SIGKILL", signal.SIGTERM))
            raise Terminated from None
        except SystemExit as err:
            if err.code == 1 and isinstance(err.__context__, KeyboardInterrupt):
                # Lightning's answer to Ctrl-C in a run (exit 1, as for a crash): the command's "interrupted", 130.
                raise KeyboardInterrupt from None
            raise
        except Exception as err:
            # wandb's own errors (no API key for an online run, a refused key, a bad run id) say what to do.
            if not type(err).__module__.startswith("wandb.errors"):
                raise
            online = any(isinstance(lg, WandbLogger) and not lg._offline for lg in self.trainer.loggers)
            online &= os.environ.get("WANDB_MODE") not in ("offline", "dryrun", "disabled")
            hint = " (or log offline: drop --trainer.logger.init_args.offline false)" if online else ""
            raise UserError(f"wandb: {err}{hint}") from err

    def after_instantiate_classes(self) -> None:
        for args, saved in getattr(self, "_given_logger_args", []):
            _set(args, saved)
        if self.subcommand == "fit":
            # Before the run writes its config and starts its wandb run; the warnings after every refusal.
            for callback in self.trainer.callbacks:
                if isinstance(callback, KeepInputConfig):
                    callback.check_target(self.trainer)
            self.model.check_trainer(self.trainer)
            config = self.config.fit
            if not self.checkpoint:
                warn_of_a_short_run(config.trainer, config.model.warmup_steps)
                if config.checkpoint.dirpath and not config.trainer.fast_dev_run:  # (which saves nothing)
                    warn_of_earlier_checkpoints(config.checkpoint.dirpath)
            elif config.checkpoint.dirpath:
                warn_of_a_replaced_last(config.checkpoint.dirpath, config.ckpt_path)
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                spare_wandb_warnings(logger)
        self.model.generation = self._get(self.config_init, "generation")
        if self.subcommand == "chat":  # the weights read in _parse_ckpt_path: not a second read of the file
            self.model.load_state_dict(self.checkpoint.pop("state_dict"))
            self.config_init.chat.ckpt_path = None
        if self.subcommand == "predict":
            if self.trainer.world_size > 1:  # each process would print its share, and only the first one's be saved
                raise UserError(
                    f"predict runs in one process, not {self.trainer.world_size}: pass --trainer.devices 1 and "
                    "--trainer.num_nodes 1"
                )
            self.trainer.callbacks.insert(0, PredictionPrinter())


def _holds_key(settings: dict, dotted: str) -> bool:
    """Whether nested ``settings`` set ``dotted`` (e.g. "model.n_layer")."""
    for part in dotted.split("."):
        if not isinstance(settings, dict) or part not in settings:
            return False
        settings = settings[part]
    return True


def check_config_files(argv: list[str]) -> dict[str, dict]:
    """Name the file of a YAML syntax error (the parser would say only "<unicode string>", line N), and of a
    file or section that is not a mapping of settings (the parser would say "Unexpected config" or worse).
    Returns each file's settings."""
    settings = {}
    for flag, value in itertools.pairwise([*argv, ""]):
        path = value if flag in ("-c", "--config") else flag.removeprefix("--config=")
        if path == flag:
            continue  # not a --config option
        if not path:
            raise UserError("--config needs the path of a YAML file, e.g. --config configs/cpu.yaml")
        if not os.path.isfile(path):
            if set("{}:\n") & set(path) and not os.path.isdir(path):
                continue  # a YAML string given inline, which the parser reads itself
            shipped = ", ".join(sorted(glob.glob("configs/*.yaml"))) or "configs/*.yaml in the babygpt checkout"
            problem = "is a folder" if os.path.isdir(path) else "does not exist"
            raise UserError(f"config file {path} {problem}; pass a YAML file, e.g. one of {shipped}")
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
        except OSError as err:
            raise UserError(f"config file {path} cannot be read: {err.strerror}; check its permissions") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(err, "problem", None) or err
            raise UserError(f"config file {path} is not valid YAML{line}: {problem}; fix the file") from None
        if not isinstance(content, dict):
            raise UserError(
                f"config file {path} holds {'nothing' if content is None else repr(content)[:60]}, not settings: "
                "write sections such as `trainer:` and `model:` with `key: value` lines under them"
            )
        for section in _SECTIONS:
            if section in content and not isinstance(content[section], dict):
                raise UserError(
                    f"config file {path}: `{section}:` holds {content[section]!r}, not settings; give it "
                    f"`key: value` lines (e.g. see `babygpt fit --print_config`), or leave it out"
                )
        settings[path] = content
    return settings


def _no_tips(record: logging.LogRecord) -> bool:
    """Lightning's "💡 Tip: … try installing litlogger / litmodels" on every command: an advertisement, not news."""
    return not str(record.msg).startswith("💡")


def _drop_stdout() -> None:
    """Point stdout at /dev/null after a failed write to it, so that the exit's flush cannot fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(args: list[str] | None = None) -> None:
    with terminate_on_sigterm():
        _main(args)


def _main(args: list[str] | None) -> None:
    argv = sys.argv[1:] if args is None else args
    debug = debugging(argv)
    OneLineErrorParser.verbose = debug
    if args is None:
        sys.argv[1:] = [a for a in argv if a != "--debug"]  # LightningCLI reads sys.argv itself
    else:
        args = [a for a in args if a != "--debug"]
    # Our train loader yields placeholders (windows are drawn on the device), so workers would not help.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # raised inside Lightning itself
    # checkpoints/ ships with its .gitignore, and last.ckpt is meant to be overwritten.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message="The dirpath has changed from")  # predict from another run's folder
    # --ckpt_path last without a last.ckpt: said in one line by _resolve_ckpt_path.
    warnings.filterwarnings("ignore", message=r".*ckpt_path=\"last\"\) is set, but there is no last")
    # "Seed set to N" would precede every one-line error; the seed is in the saved config anyway.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)  # (added once: the same object)
    try:
        cli = BabyGPTCLI(args=args)
    except (UserError, MisconfigurationException) as err:  # Lightning's own "bad settings" error is one line too
        if debug:
            raise
        print("error:", one_line(err), file=sys.stderr)  # one line, whatever a library's message holds
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C while the command starts up (during training GracefulStop handles it)
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:  # SIGTERM outside training (during it GracefulStop saves and stops)
        if debug:
            raise
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except BrokenPipeError:  # stdout's reader has gone (`babygpt predict | head`): stop quietly, as `yes | head` does
        if debug:
            raise
        _drop_stdout()
        sys.exit(141)
    except OSError as err:  # a full disk under a write of no file of ours, e.g. stdout (`babygpt predict > /dev/full`)
        if debug or err.errno != errno.ENOSPC:
            raise
        print(f"error: a write failed: {err.strerror}; free some space, or send the output elsewhere", file=sys.stderr)
        _drop_stdout()
        sys.exit(1)
    stopped = [c.received for c in getattr(cli.trainer, "callbacks", []) if isinstance(c, GracefulStop) and c.received]
    if stopped:
        sys.exit(128 + stopped[0])  # the shell's convention for "ended by a signal", after a clean save


if __name__ == "__main__":
    main()
