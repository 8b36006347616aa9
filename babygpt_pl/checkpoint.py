"""Checkpoint files: read only tensors and plain values, and write atomically."""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from babygpt_pl.errors import UserError
from babygpt_pl.files import atomic_writer, same_file
from babygpt_pl.model import BabyGPT
from babygpt_pl.module import gpt_config

_USE_ANOTHER = "use another checkpoint (e.g. a best-*.ckpt beside it), or train again"


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (tensors and plain types only) or explain in one line why it can't be used."""
    file = Path(path)
    try:
        if file.is_dir():
            raise UserError(
                f"checkpoint {path} is a directory: pass --ckpt_path to a file in it, e.g. {file}/last.ckpt"
            )
        if not file.exists():
            raise UserError(f"checkpoint {path} not found: pass --ckpt_path to a file written by `babygpt fit`")
        if not file.is_file():
            raise UserError(
                f"checkpoint {path} is not a regular file: pass --ckpt_path to a file written by `babygpt fit`"
            )
        file.open("rb").close()  # else torch.load's refusal would read as a damaged file
    except OSError as err:  # a folder on the way, or the file, that this user may not read
        raise UserError(f"checkpoint {path} cannot be read ({err.strerror}): check its permissions") from None
    if bad := _failed_checksum(file):
        raise UserError(
            f"checkpoint {path} is damaged: its {bad} does not match the checksum written with it; {_USE_ANOTHER}"
        )
    try:
        # Read whole, not memory-mapped: a mapped load reads the tensors only when they are used, so a damaged
        # file would pass here and fail later with a traceback.
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files; all of them mean "unusable"
        # Only a class or function named in the file means pickled code; any other refusal of the safe reader
        # ("Unsupported operand") is bytes that are no pickle at all: random data, a text file.
        if "global" in str(err).lower():
            raise UserError(
                f"checkpoint {path} holds pickled Python objects, which could run code: refusing to load it "
                "(babygpt checkpoints hold only tensors and plain values)"
            ) from None
        raise UserError(
            f"checkpoint {path} is truncated, damaged or not a PyTorch checkpoint ({type(err).__name__}): "
            + _USE_ANOTHER
        ) from None
    if not isinstance(ckpt, dict) or "vocab" not in ckpt.get("hyper_parameters", {}):
        raise UserError(
            f"checkpoint {path} is not a babygpt checkpoint (no vocabulary in its hyper-parameters): pass one "
            "`babygpt fit` wrote"
        )
    if not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"checkpoint {path} holds no weights (no state_dict): it is damaged; use one babygpt fit wrote")
    _check_weights(path, ckpt["state_dict"], ckpt["hyper_parameters"])
    return ckpt


def _failed_checksum(file: Path) -> str | None:
    """The first record of a checkpoint (a zip) whose bytes fail their CRC-32: torch.load does not check them, so
    flipped bits in the weights would load silently. About 0.1 s per 100 MB."""
    try:
        with zipfile.ZipFile(file) as archive:
            return archive.testzip()
    except Exception:  # not a zip (an old format), or a zip too damaged to check: torch.load tells which
        return None


def _check_weights(path: str | Path, saved: dict[str, torch.Tensor], hparams: dict[str, Any]) -> None:
    """One line, not load_state_dict's traceback after a run has started, when the weights do not fit the model
    the checkpoint's own settings describe (a damaged or hand-edited file)."""
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            expected = {f"model.{k}": v for k, v in BabyGPT(gpt_config(hparams)).state_dict().items()}
    except (UserError, TypeError, ValueError) as err:
        raise UserError(
            f"checkpoint {path}'s model settings are invalid ({err}): the file is damaged or was edited; use one "
            "babygpt fit wrote"
        ) from None
    wrong = [f"{k} is missing" for k in expected if k not in saved]
    wrong += [f"{k} is unexpected" for k in saved if k not in expected]
    wrong += [
        f"{k} is {list(getattr(saved[k], 'shape', [type(saved[k]).__name__]))}, the settings make {list(v.shape)}"
        for k, v in expected.items()
        if k in saved and getattr(saved[k], "shape", None) != v.shape
    ]
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise UserError(
            f"checkpoint {path}'s weights do not fit its model settings: {wrong[0]}{more}; the file is damaged "
            "or was edited: use one babygpt fit wrote"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves like Lightning's TorchCheckpointIO, but through a synced temp file in the checkpoint's own folder.

    Lightning's save goes through fsspec, whose temp file is in the system temp dir: when that is another
    file system, the final move is a copy, and a kill during it leaves a truncated last.ckpt.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        try:
            with atomic_writer(path) as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as err:
            # torch's zip writer reports a write that failed (a full disk) as a RuntimeError: "[enforce fail at
            # inline_container.cc:…] . unexpected pos …" or "PytorchStreamWriter failed writing file …".
            if isinstance(err, RuntimeError) and not any(s in str(err) for s in ("inline_container", "StreamWriter")):
                raise
            full = isinstance(err, RuntimeError) or err.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = getattr(err, "strerror", None) or ("the write failed: is the disk full?" if full else str(err))
            fix = (
                "free some space, or pass another --checkpoint.dirpath" if full else "pass another --checkpoint.dirpath"
            )
            raise UserError(f"could not write checkpoint {path} ({reason}; no file was half-written): {fix}") from None


# The file a resume or predict takes by default: ModelCheckpoint's newest-weights checkpoint.
LAST_FILE = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION


class LatestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` holds the newest weights after every validation and at the end.

    Lightning 2.6 rewrites last.ckpt only at a step where it also saved a top-k checkpoint, so once the val loss
    stops improving last.ckpt stops moving: a resume would go back to the best step, and predict would use old
    weights (seen on a GPU: a 5000-step run whose last.ckpt was its step-2500 best).
    """

    _surplus: tuple[str, ...] = ()  # best checkpoints past a smaller save_top_k, deleted as training starts

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so that checkpoints written with it resume this callback's state too.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run writes beside its checkpoint (cli.py). Where that folder was copied or moved, Lightning
        # keeps none of the record of its best checkpoints (it compares absolute folders): the old best would never
        # be deleted, and the first validation would be the best whatever its loss. When every file of the record
        # is here, under its name, the record is this folder's.
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:

            def here(path: str) -> str:  # a path under the old folder, in this one
                return os.path.join(self.dirpath, os.path.relpath(path, old)) if path.startswith(old + os.sep) else path

            recorded = [*state_dict.get("best_k_models", {}), state_dict.get("last_model_path")]
            if all(os.path.isfile(here(p)) for p in recorded if p):
                paths = ("best_model_path", "kth_best_model_path", "last_model_path")
                state_dict = {
                    **state_dict,
                    **{key: here(state_dict.get(key, "")) for key in paths},
                    "dirpath": self.dirpath,
                    "best_k_models": {here(p): score for p, score in state_dict.get("best_k_models", {}).items()},
                }
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            state_dict = self._trimmed_to_top_k(state_dict)
        super().load_state_dict(state_dict)

    def _trimmed_to_top_k(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A run resumed with a smaller save_top_k keeps its best k. Lightning deletes a checkpoint only when the
        record holds exactly k: with more, it would never delete one again, and the files would pile up. The
        others are deleted as training starts (on_train_start), before any save writes the shorter record."""
        recorded, k = state_dict.get("best_k_models", {}), self.save_top_k
        if k < 1 or len(recorded) <= k:
            return state_dict
        ranked = sorted(recorded.items(), key=lambda item: float(item[1]), reverse=self.mode == "max")
        self._surplus = tuple(path for path, _ in ranked[k:])
        kth_path, kth_value = ranked[k - 1]
        return {
            **state_dict,
            "best_k_models": dict(ranked[:k]),
            "kth_best_model_path": kth_path,
            "kth_value": kth_value,
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        surplus, self._surplus = self._surplus, ()
        if trainer.fast_dev_run:  # a smoke run saves and deletes nothing (Lightning's rule)
            return
        for path in surplus:
            if not same_file(path, trainer.ckpt_path):  # the file resumed from stays, record or not
                self._remove_checkpoint(trainer, path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):  # validation at epoch end: top-k is saved here
            self._save_latest(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:  # Lightning's own save here ignores it: a smoke run replaced an earlier last.ckpt
            return
        # The steps after the last validation (max_steps not a multiple of val_check_interval) would otherwise
        # be lost from last.ckpt.
        super().on_train_end(trainer, pl_module)
        self._save_latest(trainer)

    def _get_metric_interpolated_filepath_name(self, monitor_candidates, trainer, del_filepath=None) -> str:
        # The version counter is off so that last.ckpt keeps its name; a best checkpoint still never takes the name
        # of a file already there (an earlier run's best at the same step), which it would replace and then delete.
        counter, self._enable_version_counter = self._enable_version_counter, True
        try:
            return super()._get_metric_interpolated_filepath_name(monitor_candidates, trainer, del_filepath)
        finally:
            self._enable_version_counter = counter

    def _save_latest(self, trainer: L.Trainer) -> None:
        # Skipped where the parent just saved at this step (its last.ckpt included), and outside fitting.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
