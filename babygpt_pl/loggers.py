"""The trainer's logger settings as the CLI reads and adjusts them, and wandb's set-up for a Lightning run."""

from __future__ import annotations

import os

from lightning.pytorch.loggers import WandbLogger


def spare_wandb_warnings(logger: WandbLogger) -> None:
    """Two warnings wandb prints for Lightning's WandbLogger that the user can do nothing about."""
    # Lightning hands wandb.init `anonymous` even when unset, which wandb >= 0.23 warns of (wandb#10909).
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    # wandb looks for a git repository from its folder, and warns "git root outputs does not exist" before
    # creating it: the first run in a fresh clone.
    if logger.save_dir:
        os.makedirs(logger.save_dir, exist_ok=True)


def set_init_args(args, values: dict) -> None:
    """Set each of ``values`` in a logger's init_args, a jsonargparse Namespace or a plain dict alike."""
    for key, value in values.items():
        args[key] = value


def logger_settings(logger) -> list:
    """The trainer's logger settings as a list (one logger, a list of them, or none: true, false or null)."""
    return logger if isinstance(logger, list) else [logger]


def wandb_loggers(logger) -> list:
    """The WandbLogger settings among the trainer's logger settings."""
    return [lg for lg in logger_settings(logger) if str(getattr(lg, "class_path", "")).endswith("WandbLogger")]
