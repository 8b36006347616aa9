"""End to end through the `babygpt` console script: fit, predict from the checkpoint alone, resume, validate."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from cli_helper import TINY, babygpt

from babygpt_pl.cli import CKPT_PATH_HELP, COMMANDS, main

pytestmark = pytest.mark.slow

NO_MODEL = "predict needs a trained model: pass --ckpt_path checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    """A folder where `babygpt fit` ran 20 steps on a small corpus."""
    run = tmp_path_factory.mktemp("run")
    (run / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    babygpt(run, "fit", "--data.path=corpus.txt", "--trainer.max_steps=20", *TINY)
    return run


def test_fit_writes_best_and_last_checkpoints(trained: Path) -> None:
    names = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert "last.ckpt" in names
    assert any(n.startswith("best-") for n in names)
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 20
    assert isinstance(ckpt["hyper_parameters"]["vocab"], str)
    assert "春" in ckpt["hyper_parameters"]["vocab"]


def test_predict_needs_only_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    shutil.copy(trained / "checkpoints" / "last.ckpt", tmp_path / "model.ckpt")
    # (data settings other than the checkpoint's are no concern of predict: no word of a validation loss)
    args = ["--ckpt_path=model.ckpt", "--generation.max_new_tokens=12", "--data.val_batches=40"]
    result = babygpt(tmp_path, "predict", *args)
    for prompt in ("春江", "往事"):
        assert f"--- {prompt}\n{prompt}" in result.stdout
    assert "warning" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # no corpus, no config, no logs


def test_resume_continues_from_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    shutil.copytree(trained, tmp_path / "run")
    run = tmp_path / "run"
    babygpt(run, "fit", "--data.path=corpus.txt", "--trainer.max_steps=30", "--ckpt_path=checkpoints/last.ckpt", *TINY)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 30


def test_fit_twice_in_the_same_folder(trained: Path, tmp_path: Path) -> None:
    shutil.copytree(trained, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "outputs" / "config.yaml").is_file()
    babygpt(run, "fit", "--data.path=corpus.txt", "--trainer.max_steps=10", *TINY)


def test_the_loggers_get_the_runs_settings_besides_the_models(tmp_path: Path, corpus: Path) -> None:
    """So that runs of other batch sizes or lengths can be told apart (in wandb, as its run config)."""
    csv = ["--trainer.logger=CSVLogger", "--trainer.logger.init_args.save_dir=csv"]
    babygpt(tmp_path, "fit", "--data.path=corpus.txt", "--trainer.max_steps=2", *TINY, *csv, "--model.optimizer=muon")
    logged = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert logged["data"]["batch_size"] == 8 and logged["trainer"]["max_steps"] == 2
    assert logged["n_layer"] == 2 and logged["optimizer"] == "muon"  # the model's, not LightningCLI's unused one


def test_validate_reports_val_loss(trained: Path) -> None:
    result = babygpt(trained, "validate", "--data.path=corpus.txt", "--ckpt_path=checkpoints/last.ckpt", *TINY[4:])
    assert "val_loss" in result.stdout


def test_validate_without_the_data_options_sees_what_training_saw(trained: Path) -> None:
    best = next((trained / "checkpoints").glob("best-*.ckpt"))
    logged = float(re.search(r"val_loss=([\d.]+)\.ckpt", best.name)[1])
    result = babygpt(trained, "validate", f"--ckpt_path={best}")  # the text, batch size etc. unset
    assert float(re.search(r"val_loss\s*│\s*([\d.]+)", result.stdout)[1]) == pytest.approx(logged, abs=1e-3)
    assert "warning" not in result.stderr
    # Other validation windows are allowed, with a word that the loss will not be the logged one; a setting given
    # at its default (64) is given all the same.
    result = babygpt(trained, "validate", "--data.path=corpus.txt", f"--ckpt_path={best}", "--data.batch_size=64")
    assert "warning: the checkpoint was trained with data.batch_size=8 (this run: 64)" in result.stderr


def test_predict_without_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    result = babygpt(tmp_path, "predict", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {NO_MODEL}"]


def test_compiled_run_round_trips_through_its_checkpoint(tmp_path: Path, corpus: Path) -> None:
    """A fit with model.compile (inductor, on the CPU here) saves the eager parameter names; predict loads it
    without compiling, and fit resumes it compiled."""
    fit = ("fit", "--data.path=corpus.txt", "--model.compile=true", *TINY, "--trainer.num_sanity_val_steps=0")
    babygpt(tmp_path, *fit, "--trainer.max_steps=3")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["compile"] is True
    assert not any("_orig_mod" in key for key in ckpt["state_dict"])
    result = babygpt(tmp_path, "predict", "--ckpt_path=checkpoints/last.ckpt", "--generation.max_new_tokens=5")
    assert "--- 春江" in result.stdout
    babygpt(tmp_path, *fit, "--trainer.max_steps=5", "--ckpt_path=checkpoints/last.ckpt")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 5


@pytest.mark.parametrize("command", [[], ["test"], ["fit"]])
def test_help_says_what_each_command_does_here(capsys, command: list[str]) -> None:
    """Not Lightning's own texts, which speak of a test set that the corpus does not have."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # (argparse wraps the lines)
    assert "test set" not in text
    assert COMMANDS[command[0] if command else "test"] in text and "Lightning Trainer command line tool" not in text
    if not command:
        assert all(f"{name} {help}" in text for name, help in COMMANDS.items())
    else:  # --ckpt_path: a file, last or hpc (Lightning's offers "best" and "registry" too, which are refused)
        assert CKPT_PATH_HELP["fit" if command == ["fit"] else "other"] in text and '"best"' not in text
