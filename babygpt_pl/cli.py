"""The ``babygpt`` command: LightningCLI over BabyGPTModule and CiDataModule.

babygpt fit --config configs/cpu.yaml
babygpt fit --config configs/cpu.yaml --ckpt_path checkpoints/last.ckpt     # resume
babygpt validate --config configs/cpu.yaml --ckpt_path checkpoints/last.ckpt
babygpt predict --ckpt_path checkpoints/last.ckpt                            # no corpus needed
babygpt chat --ckpt_path checkpoints/last.ckpt                               # interactive, streaming
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import itertools
import logging
import os
import signal
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, Timer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException

from babygpt_pl.callbacks import (
    GracefulStop,
    PredictionPrinter,
    ProgressBar,
    SampleTable,
    StepLearningRateMonitor,
    StepTimer,
    TokenThroughput,
)
from babygpt_pl.chat import chat_loop, check_num_samples, load_weights
from babygpt_pl.checkpoint import LAST_FILE, AtomicCheckpointIO, LatestCheckpoint, check_checkpoint
from babygpt_pl.checks import (
    check_accelerator,
    check_checkpoint_options,
    check_not_an_input,
    check_not_the_trained_text,
    check_output_folders,
    check_prompts,
    check_trainer_settings,
    unused_model_settings,
    warn_of_a_replaced_last,
    warn_of_a_short_run,
    warn_of_earlier_checkpoints,
    warn_of_unfinished_writes,
    warn_of_unmatchable_stops,
    warn_of_unused_model_settings,
)
from babygpt_pl.corpus import DEFAULT_NAME
from babygpt_pl.data import DEFAULT_PROMPTS, CiDataModule, read_prompts
from babygpt_pl.errors import (
    Terminated,
    UserError,
    debugging,
    exit_on_signal,
    first_process,
    one_line,
    refuse_unquoted_items,
    terminate_on_sigterm,
    warn,
)
from babygpt_pl.files import check_writable, same_file
from babygpt_pl.generation import GenerationConfig
from babygpt_pl.loggers import set_init_args, spare_wandb_warnings, wandb_loggers
from babygpt_pl.module import BabyGPTModule
from babygpt_pl.parser import (
    OneLineErrorParser,
    check_config_files,
    construction_error,
    holds_key,
    program_name,
    raised_in,
)
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


DEFAULT_LOGGER_DIR = "outputs"
# Offline: never waits on the network. `wandb sync outputs/wandb/offline-run-*` uploads later;
# --trainer.logger.init_args.offline false logs online.
WANDB_DEFAULTS = {"project": "babygpt", "offline": True, "save_dir": DEFAULT_LOGGER_DIR}


def _names(settings: object, key: str) -> bool:
    """Whether ``key`` is a key anywhere in nested dicts and lists of ``settings``."""
    if isinstance(settings, dict):
        return key in settings or any(_names(value, key) for value in settings.values())
    return isinstance(settings, list) and any(_names(item, key) for item in settings)


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
            "init_args": dict(WANDB_DEFAULTS),
        },
        "callbacks": [
            StepLearningRateMonitor(logging_interval="step"),
            TokenThroughput(),
            GracefulStop(),
            SampleTable(),
        ],
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


CKPT_PATH_HELP = {
    "fit": "The checkpoint to resume from: a file, last (the checkpoint folder's last.ckpt, if there is one "
    "yet) or hpc (the newest checkpoint of a SLURM requeue). Leave it out for a new run (under SLURM, a requeued "
    "run resumes its hpc checkpoint).",
    "other": "The checkpoint to load: a file, e.g. checkpoints/last.ckpt, last (the checkpoint folder's) or hpc.",
}
DESCRIPTION = "babygpt: train a character-level GPT on Chinese ci poetry (or any text) and generate from it."
# What each command does, for --help: Lightning's texts, its Trainer methods' docstrings, speak of "the test set"
# (the corpus has none) and "your data".
COMMANDS = {
    "fit": "Train a model from a config: a new run, or one resumed with --ckpt_path.",
    "validate": "The loss of a checkpoint (--ckpt_path) on the held-out text, the last 1 - data.train_ratio of it.",
    "test": "As validate, logged as test_loss: the corpus has no separate test split.",
    "predict": "Generate from the prompts with a checkpoint: the text to stdout, JSON lines to --generation.output.",
    "chat": "Generate interactively: type a prompt and the continuation streams out; an empty line exits.",
}


class Trainer(L.Trainer):
    """Lightning's Trainer settings"""  # (the title of their --help section)

    # LightningCLI's subcommands must be Trainer methods: this class adds chat.

    def chat(self, model: BabyGPTModule, datamodule: L.LightningDataModule | None = None, ckpt_path: str | None = None):
        """The chat command (COMMANDS says what it does), on the device and precision the trainer settings chose.

        Args:
            ckpt_path: the checkpoint's file (its --help line is CKPT_PATH_HELP's).
        """
        # None: the model's weights as they are (`babygpt chat` has loaded them, from the read that checked the file).
        if ckpt_path is not None:
            load_weights(model, ckpt_path)
        # The device and precision the trainer settings chose, as predict runs with (a GPU's presence alone does not).
        precision, device = self.precision_plugin, self.strategy.root_device
        gpt = precision.convert_module(model.model).to(device)
        # The chosen GPU as the current one too (as Lightning's predict sets it): CUDA graphs' streams are made there.
        on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with on_device, precision.predict_step_context():
            refused = chat_loop(gpt, model.tokenizer, model.generation)
        if refused and not sys.stdin.isatty():  # a script's input: its exit status must tell that prompts failed
            raise UserError(f"{refused} prompt(s) of the input were refused (see the errors above); fix them")


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


class KeepInputConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback that also logs the run's settings to every logger (Lightning logs only the
    model's hyper-parameters), and refuses to write the run's config over a --config file it was given
    (``--trainer.default_root_dir .`` without a logger would: the user's comments and layout lost)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The model's settings reach the loggers as its hyper-parameters; the run's others too (data, trainer,
        # checkpoint, generation, seed), so that runs of other batch sizes or lengths can be told apart in wandb.
        # (Through the YAML that config.yaml holds: plain values, where the namespace holds objects such as paths.)
        settings = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for key in ("model", "optimizer", "lr_scheduler"):  # (LightningCLI's own optimizer options, refused if set:
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


HPC_PREFIX = "hpc_ckpt_"  # Lightning's name for the checkpoint of a SLURM requeue


def _is_requeue_checkpoint(path: str) -> bool:
    return Path(path).name.startswith(HPC_PREFIX)


def _hpc_checkpoint(folder: str) -> str | None:
    """The newest of the hpc_ckpt_N.ckpt files Lightning saves in ``folder`` when SLURM requeues a run, if any."""
    try:
        numbers = [p.stem.removeprefix(HPC_PREFIX) for p in Path(folder).glob(f"{HPC_PREFIX}*.ckpt")]
    except OSError as err:  # e.g. a name too long for the file system
        raise UserError(f"--trainer.default_root_dir {folder}: {err.strerror or err}; choose another folder") from None
    saved = [int(n) for n in numbers if n.isdecimal()]
    return os.path.join(folder, f"{HPC_PREFIX}{max(saved)}.ckpt") if saved else None


class BabyGPTCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.argv = sys.argv[1:] if args is None else list(args)  # what was given, for _given
        # Per command, not per process: a CLI made after another in one process (tests) read its config files.
        OneLineErrorParser.config_files = check_config_files(self.argv)
        super().__init__(
            BabyGPTModule,
            CiDataModule,
            parser_class=OneLineErrorParser,
            parser_kwargs={"prog": program_name(), "description": DESCRIPTION},
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

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        kwargs = {name: {"description": text, **kwargs.get(name, {})} for name, text in COMMANDS.items()}
        super()._add_subcommands(parser, **kwargs)
        for choice in parser._subcommands_action._choices_actions:  # the list in `babygpt --help`
            choice.help = COMMANDS[choice.dest]
        for name, subcommand in self._subcommand_parsers.items():
            for group in subcommand._action_groups:
                for action in group._group_actions:
                    if action.dest == "ckpt_path":  # Lightning's text offers "best", "hpc", "registry": refused here
                        action.help = CKPT_PATH_HELP["fit" if name == "fit" else "other"]
                        group.title = f"{name}'s own options"  # (it was the Trainer method's docstring)

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
        checkpoint = check_checkpoint(path) if path and path != "last" else {}
        # Only what is read below, not the weights and optimizer state for the whole run (Lightning loads its own);
        # chat's weights, which nothing else loads.
        kept = ("hyper_parameters", "wandb_run_id", "global_step", CiDataModule.__qualname__, "callbacks")
        kept += ("state_dict",) if subcommand == "chat" else ()
        self.checkpoint = {k: checkpoint[k] for k in kept if k in checkpoint}
        if subcommand != "fit" and self.checkpoint:
            self._check_model_options(path)
            self._default_to_trained_data()
        if subcommand in ("fit", "validate", "test") and self.checkpoint:
            self._default_to_trained_prompts()
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
            used = [k for k in _RESUMED if k not in unused_model_settings(model)]
            if wrong := ", ".join(_differences(saved, model, used)):
                raise UserError(
                    f"checkpoint {path} was trained with {wrong}: a resumed run continues the checkpoint's optimizer, "
                    "learning-rate schedule and dropout, so these would be ignored; resume with the checkpoint's "
                    "values, or drop --ckpt_path to start a new run"
                )
            done, max_steps = self.checkpoint.get("global_step", 0), self.config.fit.trainer.max_steps
            fast = self.config.fit.trainer.fast_dev_run
            fast_steps = 1 if fast is True else int(fast or 0)  # Lightning's max_steps then, from step 0
            if fast_steps and fast_steps <= done:
                raise UserError(
                    f"--trainer.fast_dev_run runs {fast_steps} step(s) from step 0, and "
                    f"checkpoint {path} has already trained {done}: nothing would train; drop --ckpt_path for a "
                    "smoke run"
                )
            if not fast_steps and max_steps is not None and 0 <= max_steps <= done:  # (fast_dev_run replaces it)
                raise UserError(
                    f"checkpoint {path} has already trained {done} steps and trainer.max_steps is {max_steps}: "
                    "nothing is left to train; raise --trainer.max_steps to train on"
                )
            warn_of_unused_model_settings(model, self._given)  # here: the checkpoint's values replace them next
            # The resumed run's own folder, not another run's; not that of a SLURM requeue's hpc_ckpt_N.ckpt, which
            # Lightning saves in trainer.default_root_dir, away from the run's checkpoints.
            if not self._given("checkpoint.dirpath") and not _is_requeue_checkpoint(path):
                # A link's target's: the best-checkpoint record and last.ckpt are there (a link's folder would
                # drop the record without a word, and keep a worse checkpoint as the best).
                real = os.path.realpath(path) if os.path.islink(path) else path
                self.config.fit.checkpoint.dirpath = os.path.dirname(real) or "."
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
        if path in ("best", "registry"):  # (Lightning's model registry: a download, with an account)
            raise UserError(
                f"--ckpt_path {path} is not a file this command can load; pass a checkpoint file, "
                "e.g. --ckpt_path checkpoints/last.ckpt"
            )
        if path == "hpc" or (path is None and subcommand == "fit" and SLURMEnvironment.detect()):
            return self._resolve_hpc(config, subcommand, given=path is not None)
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

    def _resolve_hpc(self, config: Namespace, subcommand: str, given: bool) -> str | None:
        """The newest checkpoint of a SLURM requeue, to resume checked like any other file: Lightning would load it
        unchecked, for ``--ckpt_path hpc`` and, under SLURM, for a fit given no checkpoint. None: a new run."""
        folder = config.trainer.default_root_dir or "."
        config.ckpt_path = found = _hpc_checkpoint(folder)
        if found is not None:
            if not given:  # (it may be an earlier job's: the way out is said here)
                warn(
                    f"resuming {found}, as Lightning does under SLURM for a requeued job (to start anew, delete it or "
                    "pass another --trainer.default_root_dir)"
                )
            return found
        if given:
            missing = f"--ckpt_path hpc: {folder} holds no {HPC_PREFIX}N.ckpt (saved there when SLURM requeues a run)"
            if subcommand != "fit":
                raise UserError(f"{missing}; pass a checkpoint file")
            warn(f"{missing}, so this is a new run")
        return None

    def _default_to_trained_prompts(self) -> None:
        """The samples logged at each validation continue training's prompts where none are given (its prompts
        file where it is still there)."""
        data = self.config[self.config.subcommand].data
        saved = self._saved_data().get("samples")
        if not saved or self._given("data.prompts") or self._given("data.prompts_file"):
            return
        if data.prompts is not None or data.prompts_file is not None:
            return
        if saved["prompts_file"] is None:
            data.prompts = saved["prompts"]
        elif os.path.isfile(saved["prompts_file"]):
            data.prompts_file = saved["prompts_file"]
        else:
            warn(
                f"the samples of this checkpoint's training came from {saved['prompts_file']}, which is not there: "
                "these use data.prompts (pass --data.prompts_file or --data.prompts to choose)"
            )

    def _default_to_trained_data(self) -> None:
        """validate/test draw the validation windows that training did (the same loss for the same weights):
        data settings left out take the checkpoint's values (one given, even at its default, is used)."""
        data = self.config[self.config.subcommand].data
        defaults = inspect.signature(CiDataModule).parameters
        trained_on = self._trained_on()
        left_out = self._default_data_path(data.path)
        if self.config.subcommand in ("validate", "test") and trained_on and left_out and os.path.exists(trained_on):
            data.path = trained_on  # (one that is gone: _take_vocab says so)
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
        return on_the_line or any(holds_key(c, dotted) for c in OneLineErrorParser.config_files.values())

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        settings = self._get(self.config_init, "trainer", {})
        if not settings.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        try:
            trainer = super().instantiate_trainer(**kwargs)
        # TypeError: e.g. --trainer.devices x on a CPU
        except (ValueError, TypeError, ImportError, MisconfigurationException) as err:
            if not raised_in(err, "accelerator_connector"):
                raise
            # Lightning refusing the accelerator, strategy, devices or precision asked for: a setting to fix.
            raise UserError(f"the trainer settings were refused: {one_line(err)}") from err
        if settings.get("max_time") is not None:  # Lightning made a Timer of it: one that stops between steps
            step_timer = StepTimer(duration=settings["max_time"], interval="step")
            trainer.callbacks = [step_timer if type(c) is Timer else c for c in trainer.callbacks]
        if self.subcommand == "fit":
            self._check_time_left(settings.get("max_time"))
        return trainer

    def _check_time_left(self, max_time: str | timedelta | dict | None) -> None:
        """Lightning stops a --trainer.max_time already spent (0, or a resumed run's) after the first step, having
        trained nothing, and exits 0; a resume without one drops the checkpoint's limit, which Lightning says as
        "Please add the following callbacks: ['Timer']"."""
        spent = self.checkpoint.get("callbacks", {}).get(Timer.__qualname__)
        path = self.config.fit.ckpt_path
        if max_time is None:
            if spent is not None:
                warn(f"checkpoint {path} was trained with a --trainer.max_time; this resumed run has no time limit")
            return
        timer = Timer(duration=max_time)  # (parses max_time as the trainer did)
        if spent is not None:
            timer.load_state_dict(spent)
        if timer.time_remaining() > 0:
            return
        if spent is None:
            raise UserError(f"trainer.max_time is {max_time}: this run would train nothing; give a longer time or none")
        trained = timedelta(seconds=round(timer.time_elapsed()))
        raise UserError(
            f"checkpoint {path} has already trained for {trained} and trainer.max_time is {max_time}: nothing is "
            "left to train; raise --trainer.max_time to train on"
        )

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
        if isinstance(config.generation.stop, str):  # one stop string: a list of one (the Python API refuses a str)
            refuse_unquoted_items(config.generation.stop, "generation.stop")
            config.generation.stop = [config.generation.stop]
        if self.subcommand != "fit" and not self.checkpoint:
            raise UserError(f"{self.subcommand} needs a trained model: pass --ckpt_path checkpoints/last.ckpt")
        # LightningCLI's own options, kept (as null) so that configs saved with them load: set, they would replace
        # the model's optimizer, rates and schedule, with one line of Lightning's to say so.
        if given := [f"--{key}" for key in ("optimizer", "lr_scheduler") if config.get(key) is not None]:
            raise UserError(
                f"{' and '.join(given)} (LightningCLI's) would replace babygpt's optimizer, rates and schedule: use "
                "--model.optimizer (adamw or muon), --model.lr and --model.lr_schedule instead"
            )
        if config.get("weights_only") is False:  # Lightning's option; babygpt's loads never take pickled code
            raise UserError(
                "--weights_only false would let a checkpoint run pickled code: babygpt reads checkpoints as tensors "
                "and plain values only; drop it"
            )
        check_accelerator(config.trainer)
        if self.subcommand in ("predict", "chat"):
            self._prepare_generation(config)
            return
        self._prepare_run(config)
        tokenizer = self._take_vocab(config)
        # Validation logs samples (SampleTable, to wandb); test does not. fit checks them without a logger too: they
        # are saved with the model, and its validations and resumes with one would refuse them later.
        if self.subcommand == "fit" or (self.subcommand == "validate" and wandb_loggers(config.trainer.logger)):
            data = config.data
            option = "--data.prompts_file" if data.prompts_file else "--data.prompts"
            prompts = read_prompts(data.prompts, data.prompts_file, reread=True)  # again at each validation
            # Else the first validation would stop the run.
            context = f"{option}, the prompts of the samples logged at each validation, against {data.path}"
            check_prompts(tokenizer, prompts, config.generation.oov, config.model.block_size, context)
            warn_of_unmatchable_stops(config.generation.stop, tokenizer)

    def _prepare_generation(self, config) -> None:
        """predict and chat: the output file, the prompts and the settings checked, Lightning's extras off."""
        if sys.stdout is None or (self.subcommand == "chat" and sys.stdin is None):  # e.g. `babygpt chat <&-`
            raise UserError(
                f"{self.subcommand} needs its standard {'output' if sys.stdout is None else 'input'}, which is "
                "closed: run it in a terminal, or redirect it to or from a file"
            )
        if self.subcommand == "chat":  # before Lightning's set-up lines
            check_num_samples(config.generation.num_samples)
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
        elif config.data.prompts not in (None, DEFAULT_PROMPTS) or config.data.prompts_file is not None:
            warn(
                "chat reads its prompts as you type them (or from a pipe: babygpt chat … < prompts.txt); "
                "--data.prompts and --data.prompts_file are not used"
            )
        config.trainer.logger = False
        config.trainer.enable_model_summary = False
        self.save_config_callback = None  # nothing to record: predict and chat train nothing

    def _prepare_run(self, config) -> None:
        """fit, validate and test: their trainer, checkpoint and logger settings checked, the callbacks settled."""
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

    def _take_vocab(self, config) -> CharTokenizer:
        """The model's vocabulary is the corpus's: read here, so that it is saved with the model's
        hyper-parameters, and held to the checkpoint's (and a resume to its data settings)."""
        data = config.data
        if data.source and os.path.exists(data.path):
            warn(f"data.source {data.source} is not used: {data.path} exists (delete it to build it from the source)")
        trained_on = self._trained_on()
        self._check_trained_text(trained_on, data.path, config.ckpt_path)
        settings = ("batch_size", "block_size", "train_ratio", "val_batches", "seed", "source")
        probe = CiDataModule(data.path, **{k: data[k] for k in settings})
        tokenizer = probe.build_tokenizer()
        vocab = "".join(tokenizer.vocab)
        if config.model.vocab is None:
            config.model.vocab = vocab
        elif config.model.vocab != vocab and self.checkpoint:
            missing = len(set(config.model.vocab) - set(vocab))
            fix = (
                f"pass --data.path {trained_on}"
                if trained_on and os.path.exists(trained_on)
                else f"pass --data.path to the text it was trained on{f' ({trained_on})' if trained_on else ''}"
            )
            raise UserError(
                f"the checkpoint's vocabulary ({len(config.model.vocab)} characters) is not that of {data.path} "
                f"({len(vocab)} characters; {missing} of the checkpoint's are not in it): {fix}"
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
        return tokenizer

    def _default_data_path(self, path: str) -> bool:
        """Whether data.path was left out: not given, and at its default (a --data file's path is not seen as
        given)."""
        default = inspect.signature(CiDataModule).parameters["path"].default
        return not self._given("data.path") and _plain(path) == _plain(default)

    def _check_trained_text(self, trained_on: str | None, path: str, ckpt_path: str) -> None:
        """A model of another text than the published corpus (which is built anew wherever it is asked for) is
        told which text it needs before data/ci.txt is built (an 85 MB fetch) only to be refused as another
        text, or evaluated in the place of one that is gone."""
        if not trained_on or Path(trained_on).name == DEFAULT_NAME:
            return
        gone = not os.path.exists(trained_on)
        if not os.path.exists(path):
            there = ", which is not there either" if gone else ""
            fix = "pass --data.path to that text" if gone else f"pass --data.path {trained_on}"
            raise UserError(
                f"checkpoint {ckpt_path} was trained on {trained_on}{there}, and this run's data.path {path} does "
                f"not exist: {fix}"
            )
        # validate/test with data.path left out take the trained text (_default_to_trained_data): not the default.
        if gone and self.subcommand in ("validate", "test") and self._default_data_path(path):
            raise UserError(
                f"checkpoint {ckpt_path} was trained on {trained_on}, which is not there: pass --data.path to that text"
            )

    def _check_prompts_encode(self, config, tokenizer: CharTokenizer) -> None:
        """predict's prompts, checked before any of Lightning's set-up."""
        path = config.data.prompts_file
        if path and os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
            return  # a pipe (--data.prompts_file /dev/stdin) can be read once only: by the generation
        prompts = read_prompts(config.data.prompts, config.data.prompts_file)
        typed = config.data.prompts_file or self._given("data.prompts")
        # The user typed no prompt: say which ones these are, and how to give others.
        context = "" if typed else f"the default prompts ({', '.join(prompts)}; give your own with --data.prompts)"
        check_prompts(
            tokenizer, prompts, config.generation.oov, self.checkpoint["hyper_parameters"]["block_size"], context
        )

    def _adjust_wandb_loggers(self, config, fitting: bool) -> list[tuple[dict, dict]]:
        """Set this run's wandb loggers (alone or in a list) up, and return what they were given, to restore in
        after_instantiate_classes: the saved config.yaml keeps the settings as given (a new run started from it
        gets a new wandb run)."""
        given = []
        for index, logger in enumerate(wandb_loggers(config.trainer.logger)):
            args, changed = logger.init_args, {}
            # A WandbLogger made anew (after `logger: false` in a config, say) gets WandbLogger's defaults, where
            # offline is false: babygpt's apply to what the user did not set, kept in the saved config.yaml too.
            set_init_args(args, {k: v for k, v in WANDB_DEFAULTS.items() if self._unset_wandb_arg(args, k)})
            run_id = self.checkpoint.get("wandb_run_id") if fitting and index == 0 else None  # (validate: its own)
            if run_id and not args.get("id"):
                # Resuming from a checkpoint of a wandb run (the first wandb logger's): log into that same run.
                changed.update(id=run_id, resume="allow")
            # Lightning's folder for a run's files, which a logger's own save_dir (outputs, the default's) overrides;
            # "outputs" itself is no choice of the user's: every saved or printed config holds it.
            own_folder = any(args.get(key) not in (None, DEFAULT_LOGGER_DIR) for key in ("save_dir", "dir"))
            if self._given("trainer.default_root_dir") and not own_folder:
                changed["save_dir"] = config.trainer.default_root_dir
            if os.environ.get("WANDB_MODE") == "online" and args.get("offline"):  # wandb's banner says it would
                warn(
                    "WANDB_MODE=online does not take this run online: Lightning's offline WandbLogger sets it to "
                    "offline; pass --trainer.logger.init_args.offline false"
                )
            if os.environ.get("WANDB_MODE") == "disabled":
                # Lightning's offline logger sets WANDB_MODE=dryrun over the user's "disabled"; wandb.init's mode wins.
                changed["mode"] = "disabled"
            given.append((args, {k: args.get(k) for k in changed}))
            set_init_args(args, changed)
        return given

    def _unset_wandb_arg(self, args, key: str) -> bool:
        """Whether a WandbLogger's init arg ``key`` holds WandbLogger's own default and no logger setting of the
        user's names it: on the command line in any spelling (``--trainer.logger.offline``, a JSON value), or in a
        config file's ``trainer.logger``, one logger or a list."""
        if args.get(key) != inspect.signature(WandbLogger).parameters[key].default:
            return False
        after_flag = [value for flag, value in itertools.pairwise(self.argv) if flag == "--trainer.logger"]
        on_the_line = [arg for arg in self.argv if arg.startswith("--trainer.logger")] + after_flag
        in_files = [
            c["trainer"]["logger"] for c in OneLineErrorParser.config_files.values() if holds_key(c, "trainer.logger")
        ]
        return not any(key in arg for arg in on_the_line) and not any(_names(setting, key) for setting in in_files)

    def _trained_on(self) -> str | None:
        """The text's path as training was given it (none in a checkpoint from before it was saved)."""
        return self._saved_data().get("path")

    def _saved_data_settings(self) -> dict:
        """The data settings the checkpoint was trained with (none in one from before they were saved)."""
        return self._saved_data().get("settings", {})

    def _saved_data(self) -> dict:
        """What the data module saved in the checkpoint (CiDataModule.state_dict)."""
        return self.checkpoint.get(CiDataModule.__qualname__, {})

    def _warn_of_other_batches(self) -> None:
        """A resume may change the processes or the accumulation (a run moved to other GPUs), but then the batches
        of each step, and the windows each rank draws, are not those of the run it continues."""
        trainer = self.trainer
        now = {"accumulate_grad_batches": trainer.accumulate_grad_batches, "world_size": trainer.world_size}
        saved = self._saved_data().get("trainer", {})
        if other := _differences(saved, now, list(saved), prefix="trainer."):
            warn(
                f"checkpoint {self.config.fit.ckpt_path} was trained with {', '.join(other)}: each step now "
                "averages other batches than the uninterrupted run's (and the first step may average fewer)"
            )

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
            self._end_other_ranks()
            self._stop_spawned_ranks()
            raise Terminated from None
        except SystemExit as err:
            if err.code == 1 and isinstance(err.__context__, KeyboardInterrupt):
                # Lightning's answer to Ctrl-C in a run (exit 1, as for a crash): the command's "interrupted", 130.
                raise KeyboardInterrupt from None
            raise
        except Exception as err:  # e.g. a checkpoint that this rank alone writes, to a full disk
            self._end_other_ranks()
            if not type(err).__module__.startswith("wandb.errors"):
                raise
            # wandb's own errors (no API key for an online run, a refused key, a bad run id) say what to do.
            online = any(isinstance(lg, WandbLogger) and not lg._offline for lg in self.trainer.loggers)
            online &= os.environ.get("WANDB_MODE") not in ("offline", "dryrun", "disabled")
            hint = " (or log offline: drop --trainer.logger.init_args.offline false)" if online else ""
            raise UserError(f"wandb: {err}{hint}") from err

    def _end_other_ranks(self) -> None:
        """Lightning ends the processes it started on a KeyboardInterrupt only: on another error of this one, the
        other ranks would wait at their next collective, then end in a traceback once this one is gone."""
        launcher = self.trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(getattr(signal, "SIGKILL", signal.SIGTERM))

    def _stop_spawned_ranks(self) -> None:
        """Under ddp_spawn a SIGTERM (kill, docker stop) reaches this process alone, which trains nothing and waits
        for its ranks: pass it on, so they stop at their step's end and save, as under ddp (Ctrl-C reaches all).
        This process then ends at once (exit 143; Python waits for the ranks): Lightning does not take rank 0's
        results back, and the file they come in stays in the temp folder. (Waiting for them instead hung where a
        rank stopped outside training sends none.)"""
        launcher = self.trainer.strategy.launcher
        if isinstance(launcher, _MultiProcessingLauncher):
            launcher.kill(signal.SIGTERM)

    def after_instantiate_classes(self) -> None:
        for args, saved in getattr(self, "_given_logger_args", []):
            set_init_args(args, saved)
        if self.subcommand == "fit":
            # Before the run writes its config and starts its wandb run; the warnings after every refusal.
            for callback in self.trainer.callbacks:
                if isinstance(callback, KeepInputConfig):
                    callback.check_target(self.trainer)
            self.model.check_trainer(self.trainer)
            config = self.config.fit
            if config.checkpoint.dirpath and os.path.isdir(config.checkpoint.dirpath):
                warn_of_unfinished_writes(config.checkpoint.dirpath)
            smoke = bool(config.trainer.fast_dev_run)  # which saves nothing
            saves_last = bool(config.checkpoint.save_last) and not smoke
            saves = saves_last or (config.checkpoint.save_top_k != 0 and not smoke)
            if not self.checkpoint:
                warn_of_a_short_run(config.trainer, config.model.warmup_steps, saves_last)
                warn_of_unused_model_settings(config.model, self._given)  # (a resume's: in _parse_ckpt_path)
                if config.checkpoint.dirpath and saves:
                    warn_of_earlier_checkpoints(config.checkpoint.dirpath, saves_last)
            else:
                self._warn_of_other_batches()
                # (not for a requeue's hpc checkpoint, which Lightning saves in default_root_dir: a last.ckpt newer
                # than it, saved on the SIGTERM after the requeue, is replaced without a word, a known gap)
                if config.checkpoint.dirpath and saves_last and not _is_requeue_checkpoint(config.ckpt_path):
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
    # A resume without the --trainer.max_time it was trained with: said by _check_time_left in one line.
    warnings.filterwarnings("ignore", message=r".*Please add the following callbacks: \['Timer'\]")
    # "Seed set to N" would precede every one-line error; the seed is in the saved config anyway.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)  # (added once: the same object)
    try:
        cli = BabyGPTCLI(args=args)
    except (UserError, MisconfigurationException) as err:  # Lightning's own "bad settings" error is one line too
        if debug:
            raise
        if first_process():  # (the other ranks of a DDP run meet the same error, or are ended by this one)
            print("error:", one_line(err), file=sys.stderr)  # one line, whatever a library's message holds
        sys.exit(2)
    # Ctrl-C while the command starts up, SIGTERM outside training (during it GracefulStop saves and stops).
    except (KeyboardInterrupt, Terminated) as err:
        if debug:
            raise
        exit_on_signal(err)
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
