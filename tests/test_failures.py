"""Every user mistake gets one clear line on stderr, a non-zero exit, and leaves nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_helper import TINY, babygpt, babygpt_cmd, babygpt_env, tiny_checkpoint
from lightning.pytorch.callbacks import LearningRateMonitor, Timer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException

from babygpt_pl import cli as cli_module
from babygpt_pl import data as data_module
from babygpt_pl.checkpoint import check_checkpoint
from babygpt_pl.cli import main
from babygpt_pl.data import CiDataModule
from babygpt_pl.errors import Terminated, UserError
from babygpt_pl.module import BabyGPTModule, first_wandb

SMALL = [a for a in TINY if not a.startswith("--trainer.enable_progress_bar")]
RESUME = ["--model.block_size=16", "--model.n_embed=16", "--model.n_head=2", "--model.n_layer=1"]
TRAINED_DATA = ["--data.batch_size=4", "--data.val_batches=1", "--trainer.max_steps=4"]  # as the fixture trained


def run_main(monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str) -> int:
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def set_up(monkeypatch: pytest.MonkeyPatch, *args: str) -> cli_module.BabyGPTCLI:
    """The CLI of ``args`` with every check run and every object made, but no training."""
    monkeypatch.setattr(cli_module.BabyGPTCLI, "_run_subcommand", lambda self, subcommand: None)
    return cli_module.BabyGPTCLI(args=list(args))


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("content", "extra", "expected"),
    [
        (None, [], "corpus file missing.txt not found"),
        (b"", [], "is empty"),
        ("春江花月".encode() + b"\xff\xfe" + "夜".encode(), [], "invalid byte 0xff at byte offset 12"),
        ("短".encode() * 20, [], "fewer than one window"),
        ("长".encode() * 400, ["--data.train_ratio=0.95"], "validation split"),
        ("长".encode() * 400, ["--data.train_ratio=1.5"], "train_ratio must be strictly between 0 and 1"),
        ("长".encode() * 400, ["--model.n_head=5"], "must be divisible by n_head"),
        ("长".encode() * 400, ["--model.n_layer=0"], "n_layer must be a positive integer"),
        ("长".encode() * 400, ["--data.batch_size=0"], "batch_size must be a positive integer"),
    ],
)
def test_bad_corpus_or_settings(tmp_path, monkeypatch, capsys, content, extra, expected) -> None:
    if content is not None:
        (tmp_path / "missing.txt").write_bytes(content)
    args = ["fit", "--data.path=missing.txt", "--data.prompts=长", *SMALL, *extra]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert expected in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["missing.txt"] if content is not None else [])


def test_unknown_config_key(tmp_path, monkeypatch, capsys, corpus) -> None:
    assert run_main(monkeypatch, tmp_path, "fit", f"--data.path={corpus}", "--model.n_layers=3") == 2
    assert "n_layers" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="not found"):
        main(["fit", "--data.path=missing.txt", "--debug"])


@pytest.fixture
def checkpoint(tmp_path: Path, corpus: Path) -> Path:
    """A real checkpoint of a tiny model trained for 2 steps on the small corpus."""
    return trained_checkpoint(tmp_path, corpus)


def trained_checkpoint(tmp_path: Path, corpus: Path, **settings) -> Path:
    """The ``checkpoint`` fixture's, with other model ``settings``."""
    data = CiDataModule(str(corpus), batch_size=4, block_size=16, val_batches=1)
    vocab = "".join(data.build_tokenizer().vocab)
    model = BabyGPTModule(vocab=vocab, block_size=16, n_embed=16, n_head=2, n_layer=1, **settings)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, data)
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def english_checkpoint(tmp_path: Path, **prompts) -> tuple[Path, Path]:
    """A tiny model of an English text, whose samples continued "the" and "once" (or ``prompts``): (checkpoint,
    text)."""
    text = tmp_path / "en.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. once upon a time.\n" * 40, encoding="utf-8")
    prompts = prompts or {"prompts": ["the", "once"]}
    data = CiDataModule(str(text), batch_size=4, block_size=16, val_batches=1, **prompts)
    model = BabyGPTModule(vocab="".join(data.build_tokenizer().vocab), block_size=16, n_embed=16, n_head=2, n_layer=1)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "en.ckpt")
    return tmp_path / "en.ckpt", text


def test_validate_and_a_resume_take_the_prompts_training_sampled(tmp_path, monkeypatch) -> None:
    """The default prompts (春江, 往事) are not in an English model's vocabulary: they were refused."""
    ckpt, text = english_checkpoint(tmp_path)
    data = [f"--data.path={text}", "--data.batch_size=4", "--data.val_batches=1"]
    cli = set_up(monkeypatch, "validate", f"--ckpt_path={ckpt}", *data)
    assert cli.config.validate.data.prompts == ["the", "once"]
    cli = set_up(monkeypatch, "fit", f"--ckpt_path={ckpt}", *data, *RESUME, "--trainer.max_steps=4")
    assert cli.config.fit.data.prompts == ["the", "once"]
    cli = set_up(monkeypatch, "validate", f"--ckpt_path={ckpt}", *data, "--data.prompts=[a]")
    assert cli.config.validate.data.prompts == ["a"]  # given: the user's


def test_validate_takes_the_prompts_file_training_sampled_and_says_when_it_is_gone(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the\nonce\n", encoding="utf-8")
    ckpt, text = english_checkpoint(tmp_path, prompts_file=prompts)  # a Path (the Python API): saved as a str
    args = ["validate", f"--ckpt_path={ckpt}", f"--data.path={text}", "--data.batch_size=4", "--data.val_batches=1"]
    assert set_up(monkeypatch, *args).config.validate.data.prompts_file == str(prompts)
    prompts.unlink()
    with pytest.raises(UserError, match="not in the model's vocabulary"):  # the default prompts, English model
        set_up(monkeypatch, *args)
    assert (
        f"warning: the samples of this checkpoint's training came from {prompts}, which is not there: these use "
        "data.prompts (pass --data.prompts_file or --data.prompts to choose)"
    ) in capsys.readouterr().err


def test_lightnings_own_optimizer_options_are_refused(tmp_path, monkeypatch, capsys, corpus) -> None:
    """--optimizer SGD replaced the model's optimizer, learning rate and schedule, exit 0. (Kept as options, null,
    so that config files saved with them load.)"""
    assert run_main(monkeypatch, tmp_path, "fit", f"--data.path={corpus}", *SMALL, "--optimizer=SGD") == 2
    assert one_error_line(capsys) == (
        "error: --optimizer (LightningCLI's) would replace babygpt's optimizer, rates and schedule: use "
        "--model.optimizer (adamw or muon), --model.lr and --model.lr_schedule instead"
    )
    (tmp_path / "saved.yaml").write_text("optimizer: null\nlr_scheduler: null\n", encoding="utf-8")
    set_up(monkeypatch, "fit", f"--data.path={corpus}", *SMALL, f"--config={tmp_path / 'saved.yaml'}")


def test_one_stop_string_on_the_command_line_is_a_list_of_one(tmp_path, monkeypatch, capsys, corpus) -> None:
    ckpt = tiny_checkpoint(tmp_path, corpus)
    assert set_up(
        monkeypatch, "predict", f"--ckpt_path={ckpt}", "--generation.stop=。"
    ).config.predict.generation.stop == ["。"]
    assert run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={ckpt}", "--generation.stop=[。, 1]") == 2
    assert "generation.stop [。, 1]: 1 is not read as a string" in one_error_line(capsys)


def test_a_checkpoint_this_user_may_not_read_is_said_so(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    """Not "truncated, damaged" nor a traceback (what a non-root user saw for a mode-000 file or folder)."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(UserError) as info:
        check_checkpoint(checkpoint)
    assert str(info.value) == f"checkpoint {checkpoint} cannot be read (Permission denied): check its permissions"


def test_validate_on_another_text_of_the_same_characters_warns(tmp_path, monkeypatch, capsys, checkpoint, corpus):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(corpus.read_text(encoding="utf-8").splitlines())), encoding="utf-8")
    args = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    for text, warned in ((corpus, False), (other, True)):
        monkeypatch.chdir(tmp_path)
        main(["validate", f"--ckpt_path={checkpoint}", f"--data.path={text}", *args])
        err = capsys.readouterr().err
        assert (f"warning: {text} is not the text the checkpoint was trained on" in err) is warned, err


def test_checkpoint_errors(tmp_path: Path, checkpoint: Path) -> None:
    assert check_checkpoint(checkpoint)["hyper_parameters"]["vocab"]
    with pytest.raises(UserError, match="nope.ckpt not found"):
        check_checkpoint(tmp_path / "nope.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"not a PyTorch checkpoint \(\w+\): use another checkpoint \(e.g. a best-"):
        check_checkpoint(truncated)
    # A central directory too damaged to check (an "encrypted" flag: zipfile raises RuntimeError) is torch.load's.
    flagged = bytearray(checkpoint.read_bytes())
    entry = flagged.find(b"PK\x01\x02")
    flagged[entry + 8] |= 1
    (tmp_path / "flagged.ckpt").write_bytes(flagged)
    with pytest.raises(UserError, match="truncated, damaged or not a PyTorch checkpoint"):
        check_checkpoint(tmp_path / "flagged.ckpt")
    damaged = tmp_path / "damaged.ckpt"  # a tensor record's header zeroed: a mapped load would not notice
    data = bytearray(checkpoint.read_bytes())
    header = data.find(b"PK\x03\x04", len(data) // 2)
    data[header : header + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"damaged.ckpt is damaged: its archive/data/\d+ does not match the checksum"):
        check_checkpoint(damaged)
    # Bytes that are no pickle at all are damaged, not "pickled Python objects" (which the safe reader also refuses).
    for name, content in (("random.ckpt", bytes(range(7, 256)) * 4), ("prompt.txt", "春江\n".encode())):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match="truncated, damaged or not a PyTorch checkpoint"):
            check_checkpoint(tmp_path / name)
    with pytest.raises(UserError, match="is a directory: pass --ckpt_path to a file in it"):
        check_checkpoint(tmp_path)
    with pytest.raises(UserError, match="/dev/null is not a regular file: pass --ckpt_path to a file"):
        check_checkpoint("/dev/null")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a babygpt checkpoint"):
        check_checkpoint(foreign)


def edited(checkpoint: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``checkpoint`` whose loaded dict ``edit`` changed in place."""
    ckpt = torch.load(checkpoint, weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.pop("state_dict"), "holds no weights (no state_dict): it is damaged"),
        (lambda c: c["state_dict"].pop("model.ln_f.weight"), "weights do not fit its model settings: model.ln_f"),
        (lambda c: c["state_dict"].update(x=torch.zeros(1)), "weights do not fit its model settings: x is unexpected"),
        (
            lambda c: c["state_dict"].update({"model.tok_emb.weight": torch.zeros(3)}),
            "model.tok_emb.weight is [3], the settings make [192, 16]",
        ),
        (lambda c: c["state_dict"].update({"model.ln_f.bias": 1.5}), "model.ln_f.bias is ['float'], the settings"),
        (lambda c: c["hyper_parameters"].update(n_head=3), "model settings are invalid (GPTConfig.n_embed (16) must"),
        (lambda c: c["hyper_parameters"].update(n_layer="x"), "model settings are invalid (GPTConfig.n_layer must"),
    ],
)
def test_a_damaged_babygpt_checkpoint_is_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, checkpoint, edit, expected
) -> None:
    path = edited(checkpoint, tmp_path, edit)
    for command in ("predict", "chat"):
        assert run_main(monkeypatch, tmp_path, command, f"--ckpt_path={path}") == 2
        assert expected in one_error_line(capsys)


def test_flipped_bits_in_the_weights_are_caught_by_the_checksum(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    """torch.load reads a zip's records without checking their CRC-32: the damaged weights would load silently."""
    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    header = data[record.header_offset : record.header_offset + 30]  # the local file header: then name, extra
    start = (
        record.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    )
    data[start + 8 : start + 12] = bytes(b ^ 0xFF for b in data[start + 8 : start + 12])
    damaged = tmp_path / "flipped.ckpt"
    damaged.write_bytes(data)
    torch.load(damaged, weights_only=True)  # (it does load)
    assert run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={damaged}") == 2
    assert one_error_line(capsys).startswith(
        f"error: checkpoint {damaged} is damaged: its {record.filename} does not match the checksum written with it"
    )


class Payload:
    """Unpickling this would create a marker file: the stand-in for code in a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"vocab": "ab"}, "x": Payload(marker)}, evil)
    result = babygpt(tmp_path, "predict", f"--ckpt_path={evil}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint {evil} holds pickled Python objects, which could run code: refusing to load it "
        "(babygpt checkpoints hold only tensors and plain values)"
    ]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        (["--data.prompts=[春江, 火星X]"], "not in the model's vocabulary: '火星X'"),
        (["--data.prompts=['']"], "prompt 1 of 1 is empty"),
        (["--data.prompts_file=nope.txt"], "prompts file nope.txt not found"),
        (["--generation.oov=drop", "--data.prompts=火星"], "prompt '火星' is empty (after the oov policy)"),
    ],
)
def test_predict_prompt_errors(tmp_path, monkeypatch, capsys, checkpoint, prompts, expected) -> None:
    """One line, before Lightning's set-up prints anything."""
    assert run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={checkpoint}", *prompts) == 2
    assert expected in one_error_line(capsys)


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        (
            "--data.prompts=火星X",
            "error: 3 character(s) not in the model's vocabulary: '火星X'; remove them from the prompt, or pass "
            "--generation.oov drop (or replace)",
        ),
        (
            "--data.prompts_file=nope.txt",
            "error: prompts file nope.txt not found: pass --data.prompts_file to an existing UTF-8 text file",
        ),
    ],
)
def test_a_predict_prompt_error_is_the_only_line_of_the_command(tmp_path, checkpoint, prompts, expected) -> None:
    """In a process of its own: Lightning's set-up lines ("GPU available: …") never reach capsys."""
    result = babygpt(tmp_path, "predict", f"--ckpt_path={checkpoint}", prompts, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [expected]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_on_stdout_is_one_line(tmp_path, checkpoint) -> None:
    with open("/dev/full", "w") as full:
        command = babygpt_cmd("predict", f"--ckpt_path={checkpoint}", "--generation.max_new_tokens=4")
        env = babygpt_env()
        result = subprocess.run(command, cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: a write failed: No space left on device; free some space, or send the output elsewhere"
    )
    assert "Traceback" not in result.stderr


def test_chat_says_that_it_does_not_use_the_prompt_options(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    monkeypatch.setattr(cli_module, "chat_loop", lambda *args: 0)  # no prompts to read here
    monkeypatch.chdir(tmp_path)
    main(["chat", f"--ckpt_path={checkpoint}", "--data.prompts_file=p.txt"])
    assert "warning: chat reads its prompts as you type them" in capsys.readouterr().err


def test_predict_output_over_the_checkpoint_is_refused(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    before = checkpoint.read_bytes()
    args = ["predict", f"--ckpt_path={checkpoint}", f"--generation.output={tmp_path}/./{checkpoint.name}"]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert "an input of this run (the checkpoint, a config, the prompts file or the corpus)" in one_error_line(capsys)
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("command", ["predict", "chat"])
@pytest.mark.parametrize("given", ["--data.path", "--data.prompts_file"])
def test_the_output_never_replaces_the_corpus_or_prompts(tmp_path, monkeypatch, capsys, checkpoint, command, given):
    """chat reads neither file, and predict no corpus: a file named on the command line is still the user's."""
    monkeypatch.setattr(cli_module, "chat_loop", lambda *args: 0)
    (tmp_path / "mine.txt").write_text("春江\n", encoding="utf-8")
    args = [command, f"--ckpt_path={checkpoint}", f"{given}=mine.txt", f"--generation.output={tmp_path}/mine.txt"]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert "--generation.output" in one_error_line(capsys)
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == "春江\n"


@pytest.mark.parametrize("command", ["predict", "chat"])
def test_the_output_never_replaces_the_trained_text(tmp_path, monkeypatch, capsys, checkpoint, corpus, command) -> None:
    """Under any name: predict and chat take no corpus, so --data.path need not name it."""
    monkeypatch.setattr(cli_module, "chat_loop", lambda *args: 0)
    copy = tmp_path / "poems.txt"
    copy.write_bytes(corpus.read_bytes())
    assert run_main(monkeypatch, tmp_path, command, f"--ckpt_path={checkpoint}", f"--generation.output={copy}") == 2
    assert "holds the text this model was trained on: choose another file" in one_error_line(capsys)
    assert copy.read_bytes() == corpus.read_bytes()


def test_a_weights_only_checkpoint_cannot_resume(tmp_path, monkeypatch, capsys, checkpoint, corpus) -> None:
    """Lightning's KeyError came after the run had rewritten outputs/config.yaml."""
    weights_only = torch.load(checkpoint, weights_only=True)
    del weights_only["optimizer_states"], weights_only["lr_schedulers"]
    torch.save(weights_only, tmp_path / "w.ckpt")
    args = ["fit", f"--data.path={corpus}", "--ckpt_path=w.ckpt", "--trainer.max_steps=5"]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert "checkpoint w.ckpt holds the weights alone (checkpoint.save_weights_only): it cannot resume" in (
        one_error_line(capsys)
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("command", "limit"), [("validate", "limit_val_batches"), ("test", "limit_test_batches")])
def test_an_evaluation_of_nothing_is_refused(tmp_path, monkeypatch, capsys, checkpoint, corpus, command, limit) -> None:
    """Lightning reported no metric and exited 0."""
    args = [command, f"--data.path={corpus}", f"--ckpt_path={checkpoint}", f"--trainer.{limit}=0"]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert f"trainer.{limit} is 0: this {command} would evaluate nothing; drop it" in one_error_line(capsys)


def test_the_default_prompts_are_named_where_the_model_cannot_take_them(tmp_path, monkeypatch, capsys) -> None:
    """The user typed no prompt: the error says which prompts these are and how to give others."""
    english = tmp_path / "en.txt"
    english.write_text("the quick brown fox jumps over the lazy dog\n" * 20, encoding="utf-8")
    ckpt = tiny_checkpoint(tmp_path, english)
    assert run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={ckpt}") == 2
    line = one_error_line(capsys)
    assert line == (
        "error: the default prompts (春江, 往事; give your own with --data.prompts): 4 character(s) not in the "
        "model's vocabulary: '春江往事'; remove them from the prompt, or pass --generation.oov drop (or replace)"
    )


def test_a_stop_string_the_model_never_writes_is_warned(tmp_path, monkeypatch, capsys) -> None:
    english = tmp_path / "en.txt"
    english.write_text("the quick brown fox jumps over the lazy dog\n" * 20, encoding="utf-8")
    ckpt = tiny_checkpoint(tmp_path, english)
    monkeypatch.chdir(tmp_path)
    stops = '--generation.stop=["春", "\\n\\n"]'
    main(["predict", f"--ckpt_path={ckpt}", "--data.prompts=the", "--generation.max_new_tokens=2", stops])
    err = capsys.readouterr().err
    assert "warning: generation.stop ['春'] holds characters outside the model's vocabulary: it can never match" in err


def test_one_stop_string_of_unknown_characters_is_warned_of_as_one(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    """Not a warning for each of its characters, one by one."""
    set_up(monkeypatch, "predict", f"--ckpt_path={checkpoint}", "--generation.stop=ZZ")
    assert capsys.readouterr().err.strip().splitlines() == [
        "warning: generation.stop ['ZZ'] holds characters outside the model's vocabulary: it can never match"
    ]


def test_one_stop_string_in_a_config_file_is_a_list_of_one(tmp_path, monkeypatch, checkpoint) -> None:
    (tmp_path / "g.yaml").write_text('generation:\n  stop: "\\n\\n"\n', encoding="utf-8")
    cli = set_up(monkeypatch, "predict", f"--ckpt_path={checkpoint}", f"--config={tmp_path / 'g.yaml'}")
    assert cli.config.predict.generation.stop == ["\n\n"]


def test_predict_in_several_processes_is_refused(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    """Each process would print its share of the samples, and --generation.output hold only the first one's."""
    args = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]
    assert run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={checkpoint}", *args) == 2
    assert "predict runs in one process, not 2: pass --trainer.devices 1" in one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_predict_on_a_gpu_that_is_not_there_names_the_fix(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    assert run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={checkpoint}", "--trainer.accelerator=gpu") == 2
    assert "no CUDA GPU: pass --trainer.accelerator cpu" in one_error_line(capsys)


def test_an_unwritable_output_is_refused_before_generating(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    (tmp_path / "out").mkdir()
    code = run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={checkpoint}", "--generation.output=out")
    assert code == 2
    assert "--generation.output out is a directory" in one_error_line(capsys)
    assert capsys.readouterr().out == ""  # nothing was generated


def test_resume_with_another_model_shape(tmp_path, monkeypatch, capsys, checkpoint, corpus) -> None:
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", "--model.block_size=16"]
    assert run_main(monkeypatch, tmp_path, *args, "--model.n_embed=16", "--model.n_head=2", "--model.n_layer=2") == 2
    assert "n_layer=1 (this run: 2)" in one_error_line(capsys)


def test_resume_with_another_optimizer(tmp_path, monkeypatch, capsys, checkpoint, corpus) -> None:
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", "--model.block_size=16"]
    shape = ["--model.n_embed=16", "--model.n_head=2", "--model.n_layer=1"]
    assert run_main(monkeypatch, tmp_path, *args, *shape, "--model.optimizer=muon") == 2
    assert "optimizer='adamw' (this run: 'muon')" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("option", "shown"),
    [
        ("--model.lr=0.1", "lr=0.0003 (this run: 0.1)"),
        ("--model.betas=[0.8, 0.9]", "betas=[0.9, 0.999] (this run: [0.8, 0.9])"),
        # Lightning would replace these with the checkpoint's hyper-parameters without a word.
        ("--model.dropout=0.3", "dropout=0.2 (this run: 0.3)"),
        ("--model.lr_schedule=cosine", "lr_schedule='constant' (this run: 'cosine')"),
        ("--model.warmup_steps=30", "warmup_steps=0 (this run: 30)"),
    ],
)
def test_resume_with_another_learning_rate_is_refused_not_ignored(
    tmp_path, monkeypatch, capsys, checkpoint, corpus, option, shown
) -> None:
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", "--model.block_size=16"]
    shape = ["--model.n_embed=16", "--model.n_head=2", "--model.n_layer=1"]
    assert run_main(monkeypatch, tmp_path, *args, *shape, option) == 2
    line = one_error_line(capsys)
    assert shown in line and "would be ignored" in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model.lr=-0.01"], "model.lr must be > 0, got -0.01"),
        (["--model.muon_lr=0"], "model.muon_lr must be > 0, got 0.0"),
        (["--model.weight_decay=-1"], "model.weight_decay must be >= 0"),
        (["--trainer.max_steps=-5"], "`max_steps` must be a non-negative integer"),
        (["--trainer.accelerator=gpu"], "no CUDA GPU: pass --trainer.accelerator cpu"),
        (["--trainer.strategy=bogus"], "the trainer settings were refused: "),
        (["--trainer.devices=x"], "the trainer settings were refused: `devices` selected with `CPUAccelerator` should"),
        (
            ["--trainer.val_check_interval=0"],
            "trainer.val_check_interval must be a positive number of steps (batches) between validations, got 0: the "
            "training windows are an endless stream, whose epoch never ends; for no validation pass "
            "--trainer.limit_val_batches 0",
        ),
        (["--trainer.val_check_interval=null"], "between validations, got None: the training windows"),
        (["--trainer.val_check_interval=1.0"], "between validations, got 1.0: the training windows"),
        (["--trainer.val_check_interval=00:00:00:01"], "between validations, got '00:00:00:01': the training"),
        (["--trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be >= 1 (1: no accumulation)"),
        (
            ["--trainer.accumulate_grad_batches=2", "--trainer.val_check_interval=5"],
            "trainer.val_check_interval (5 batches) must be a multiple of trainer.accumulate_grad_batches (2): its "
            "checkpoints would fall inside an optimizer step; use 4 or 6",
        ),
        (["--trainer.accumulate_grad_batches=4", "--trainer.val_check_interval=3"], "step; use 4"),
        (
            ["--trainer.strategy=ddp", "--trainer.devices=3", "--trainer.accelerator=cpu"],
            "error: data.val_batches x data.batch_size (16 validation windows) must divide evenly among the 3 "
            "processes, else some windows count twice in val_loss: use --data.val_batches 3",
        ),
        (["--trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be >= 0 (0 or null: no clipping), got"),
        (["--trainer.limit_train_batches=0"], "trainer.limit_train_batches is 0: this run would train nothing"),
        (["--trainer.max_steps=0"], "trainer.max_steps is 0: this run would train nothing"),
        (["--trainer.devices=0"], "trainer.devices must be a count of devices, a list of ids, -1 (all) or auto"),
        (["--trainer.accelerator=tpu"], "trainer.accelerator is tpu, not on this machine: use --trainer.accelerator"),
        (["--trainer.accelerator=cpu", "--trainer.precision=16-mixed"], "does not run on a CPU: pass --trainer.prec"),
        (["--trainer.precision=16-true"], "trainer.precision 16-true trains fp16 weights, in which AdamW's mean of"),
        (["--trainer.max_time=00:00:00:00"], "trainer.max_time is 00:00:00:00: this run would train nothing; give a"),
        (["--checkpoint.monitor=val_los"], "checkpoint.monitor val_los is not a metric babygpt logs: use one of val"),
        (["--checkpoint.filename=best-{stp}"], "checkpoint.filename best-{stp} names {stp}, which babygpt does not"),
        (["--data.seed=99999999999999999999999"], "data.seed must be an integer from 0 to 2**63 - 1, got 9999"),
        (["--seed_everything=-5"], "seed_everything: -5 is not in bounds, numpy accepts from 0 to 4294967295; or"),
        (
            ["--trainer.logger.init_args.log_model=true"],
            "error: lightning.pytorch.loggers.WandbLogger could not be made: Providing log_model=True and offline=True",
        ),
        (["--trainer.enable_checkpointing=false"], "babygpt always adds its checkpoint callback; to save no"),
        (["--checkpoint.filename=last"], "checkpoint.filename last is the name of the newest checkpoint: choose"),
        (["--checkpoint.filename=best.ckpt"], "checkpoint.filename best.ckpt: leave out the .ckpt, which is added"),
        (["--checkpoint.save_last=link"], "checkpoint.save_last link makes last.ckpt a link to the best checkpoint"),
        (["--checkpoint.save_on_train_epoch_end=true"], "checkpoint.save_on_train_epoch_end true would save nothing"),
        (["--checkpoint.every_n_epochs=2"], "checkpoint.every_n_epochs 2 would never save a best checkpoint"),
        (["--checkpoint.every_n_train_steps=3"], "checkpoint.every_n_train_steps 3 ranks and names a checkpoint by"),
        (["--checkpoint.filename=../best"], "checkpoint.filename ../best leaves the checkpoint folder: give a file"),
        (["--checkpoint.filename=/tmp/best"], "checkpoint.filename /tmp/best leaves the checkpoint folder: give a"),
        (
            ["--model.lr_schedule=cosine", "--trainer.max_steps=-1", "--trainer.max_time=00:00:01:00"],
            "model.lr_schedule cosine needs trainer.max_steps, the length of the schedule: pass --trainer.max_steps N",
        ),
        (
            ["--trainer.max_steps=-1", "--trainer.max_epochs=1"],
            "trainer.max_epochs 1: the training windows are an endless stream, so an epoch never ends; give the",
        ),
        (["--trainer.max_stpes=5"], "unrecognized arguments: --trainer.max_stpes=5 (see babygpt fit --help)"),
        (["--model.lr=abc"], "model.lr must be a number, got abc"),
        (["--model.lr=inf"], "model.lr must be a finite number, got inf"),
        (["--model.attn_dropout=abc"], "error: model.attn_dropout: abc is not accepted; give a number or null (see"),
        (["--trainer.precision=bf17"], "bf17 is not accepted; give 64, 32, 16, transformer-engine, transformer-engine"),
    ],
)
def test_bad_training_settings_are_one_line(tmp_path, monkeypatch, capsys, corpus, extra, expected) -> None:
    if extra[0].startswith("--trainer.accelerator") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(sys, "argv", ["babygpt"])  # the parser names the command after argv[0]
    assert run_main(monkeypatch, tmp_path, "fit", f"--data.path={corpus}", *SMALL, *extra) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "outputs").exists()  # no saved config, no wandb run


def test_a_run_shorter_than_its_validation_interval_is_warned(tmp_path, monkeypatch, capsys, corpus) -> None:
    monkeypatch.chdir(tmp_path)
    # No logger: wandb in this process would leave a service that the resume tests' subprocesses then share.
    args = ["--trainer.max_steps=3", "--trainer.val_check_interval=10", "--trainer.logger=false"]
    main(["fit", f"--data.path={corpus}", *SMALL, *args])
    assert "warning: trainer.val_check_interval (10) is more than trainer.max_steps (3)" in capsys.readouterr().err
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_a_fast_dev_run_keeps_an_earlier_last_checkpoint(tmp_path, monkeypatch, capsys, corpus, checkpoint) -> None:
    """Lightning says a fast_dev_run suppresses checkpointing, yet its end-of-training save replaced last.ckpt."""
    monkeypatch.chdir(tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(checkpoint.read_bytes())
    main(["fit", f"--data.path={corpus}", *SMALL, "--trainer.fast_dev_run=true", "--trainer.logger=false"])
    assert last.read_bytes() == checkpoint.read_bytes()
    assert list(last.parent.iterdir()) == [last]
    assert "overwrites" not in capsys.readouterr().err  # nor the warning that it would


def test_a_new_run_never_replaces_an_earlier_runs_best_checkpoint(tmp_path, monkeypatch, corpus, checkpoint) -> None:
    """The same name (same step) in the same folder: the new run's best once replaced the file, then deleted it."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    earlier = {name: checkpoint.read_bytes() + name.encode() for name in ("best-step=2.ckpt", "best-step=4.ckpt")}
    for name, content in earlier.items():
        (folder / name).write_bytes(content)
    args = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--checkpoint.filename=best-{step}"]
    main(["fit", f"--data.path={corpus}", *SMALL, *args, "--trainer.logger=false"])
    for name, content in earlier.items():
        assert (folder / name).read_bytes() == content
    assert {p.name for p in folder.iterdir()} - set(earlier) in (
        {"last.ckpt", "best-step=2-v1.ckpt"},
        {"last.ckpt", "best-step=4-v1.ckpt"},
    )


def test_a_resumed_run_keeps_to_its_own_folder(tmp_path, monkeypatch, capsys, corpus) -> None:
    """Resuming run_y/last.ckpt wrote into ./checkpoints, over another run's last.ckpt; and a resume from an older
    checkpoint replaces its folder's newer last.ckpt, which is now said first."""
    monkeypatch.chdir(tmp_path)
    fit = ["fit", f"--data.path={corpus}", *SMALL, "--trainer.logger=false"]
    main([*fit, "--trainer.max_steps=2", "--checkpoint.dirpath=run_y"])
    older = tmp_path / "run_y" / "older.ckpt"
    older.write_bytes((tmp_path / "run_y" / "last.ckpt").read_bytes())
    main([*fit, "--trainer.max_steps=4", "--ckpt_path=run_y/last.ckpt"])
    assert not (tmp_path / "checkpoints").exists()
    assert torch.load(tmp_path / "run_y" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert "is not the checkpoint this run resumes" not in capsys.readouterr().err
    main([*fit, "--trainer.max_steps=3", "--ckpt_path=run_y/older.ckpt"])
    assert (
        "warning: run_y/last.ckpt is not the checkpoint this run resumes (run_y/older.ckpt): this run overwrites it"
        in capsys.readouterr().err
    )


def test_ckpt_path_hpc_resumes_the_newest_requeue_checkpoint_checked(tmp_path, monkeypatch, capsys, corpus) -> None:
    """Lightning loaded it unchecked, also by itself under SLURM with no --ckpt_path (a traceback where there was
    none); "registry", its model registry, too."""
    monkeypatch.chdir(tmp_path)
    fit = ["fit", f"--data.path={corpus}", *SMALL, "--trainer.logger=false"]
    assert run_main(monkeypatch, tmp_path, *fit, "--ckpt_path=registry") == 2
    assert "error: --ckpt_path registry is not a file this command can load" in one_error_line(capsys)
    main([*fit, "--trainer.max_steps=2", "--ckpt_path=hpc"])  # none yet: a new run, as with last
    assert (
        "warning: --ckpt_path hpc: outputs holds no hpc_ckpt_N.ckpt (saved there when SLURM requeues a run), so "
        in (capsys.readouterr().err)
    )
    hpc = tmp_path / "outputs"
    (hpc / "hpc_ckpt_10.ckpt").write_bytes((tmp_path / "checkpoints" / "last.ckpt").read_bytes())
    (hpc / "hpc_ckpt_9.ckpt").write_bytes(b"not the newest")  # 10 is, though "10" < "9"
    main([*fit, "--trainer.max_steps=4", "--ckpt_path=hpc"])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert "is not the checkpoint this run resumes" not in capsys.readouterr().err  # it is newer than last.ckpt
    # A requeued job runs its command again, with no --ckpt_path.
    (hpc / "hpc_ckpt_11.ckpt").write_bytes((tmp_path / "checkpoints" / "last.ckpt").read_bytes())
    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "train",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "7",
    }.items():
        monkeypatch.setenv(key, value)
    main([*fit, "--trainer.max_steps=6"])
    assert "warning: resuming outputs/hpc_ckpt_11.ckpt, as Lightning does under SLURM for a requeued job (to start" in (
        capsys.readouterr().err
    )
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    (hpc / "hpc_ckpt_12.ckpt").write_bytes(b"cut short")
    assert run_main(monkeypatch, tmp_path, *fit, "--trainer.max_steps=8") == 2
    assert "\nerror: checkpoint outputs/hpc_ckpt_12.ckpt " in capsys.readouterr().err  # checked, as any file


def test_a_resume_with_its_time_limit_spent_is_refused(tmp_path, monkeypatch, capsys, corpus) -> None:
    """Lightning stopped it after one step that trained nothing, and exited 0; without a limit, it asked for a
    Timer callback."""
    monkeypatch.chdir(tmp_path)
    fit = ["fit", f"--data.path={corpus}", *SMALL, "--trainer.logger=false"]
    main([*fit, "--trainer.max_steps=2", "--trainer.max_time=00:00:10:00"])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    saved["callbacks"]["Timer"]["time_elapsed"]["train"] = 100.4  # as if it had trained that long
    torch.save(saved, tmp_path / "spent.ckpt")
    capsys.readouterr()
    resume = [*fit, "--trainer.max_steps=4", "--ckpt_path=spent.ckpt"]
    assert run_main(monkeypatch, tmp_path, *resume, "--trainer.max_time=00:00:01:40") == 2
    assert one_error_line(capsys) == (
        "error: checkpoint spent.ckpt has already trained for 0:01:40 and trainer.max_time is 00:00:01:40: nothing "
        "is left to train; raise --trainer.max_time to train on"
    )
    main([*resume, "--checkpoint.dirpath=more", "--trainer.max_time=00:00:01:50"])
    assert torch.load(tmp_path / "more" / "last.ckpt", weights_only=True)["global_step"] == 4
    capsys.readouterr()
    main([*resume, "--checkpoint.dirpath=unlimited"])
    err = capsys.readouterr().err
    assert "warning: checkpoint spent.ckpt was trained with a --trainer.max_time; this resumed run has no time" in err
    assert "Please add the following callbacks" not in err


def test_a_warmup_longer_than_the_run_is_warned(tmp_path, monkeypatch, capsys, corpus) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.max_steps=2", "--trainer.logger=false", "--model.warmup_steps=10"]
    main(["fit", f"--data.path={corpus}", *SMALL, *args])
    assert "warning: model.warmup_steps (10) is more than trainer.max_steps (2)" in capsys.readouterr().err


def test_a_run_without_a_logger_keeps_the_config_it_reads(tmp_path, monkeypatch, capsys, corpus) -> None:
    """Without a logger Lightning saves the run's config.yaml in trainer.default_root_dir: outputs/, as with one."""
    monkeypatch.chdir(tmp_path)
    mine = "# my notes\ntrainer:\n  max_steps: 2\n"
    (tmp_path / "config.yaml").write_text(mine, encoding="utf-8")
    main(["fit", "--config=config.yaml", f"--data.path={corpus}", *SMALL, "--trainer.logger=false"])
    assert (tmp_path / "config.yaml").read_text(encoding="utf-8") == mine
    assert "max_steps: 2" in (tmp_path / "outputs" / "config.yaml").read_text(encoding="utf-8")
    capsys.readouterr()
    # Saved in the working folder on request: refused where that is the config the run reads.
    args = ["fit", "--config=config.yaml", f"--data.path={corpus}", *SMALL, "--trainer.logger=false"]
    assert run_main(monkeypatch, tmp_path, *args, "--trainer.default_root_dir=.") == 2
    assert one_error_line(capsys) == (  # before the warnings of a run over an earlier one's checkpoints
        "error: this run would save its settings as ./config.yaml, over --config config.yaml: give "
        "--trainer.default_root_dir another folder"
    )
    assert (tmp_path / "config.yaml").read_text(encoding="utf-8") == mine


def test_a_run_from_the_config_a_logged_run_saved_is_refused_before_its_logger_starts(
    tmp_path, monkeypatch, capsys, corpus
) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", f"--data.path={corpus}", *SMALL, "--trainer.max_steps=2"])  # the wandb logger, offline
    runs = sorted((tmp_path / "outputs" / "wandb").iterdir())
    capsys.readouterr()
    assert run_main(monkeypatch, tmp_path, "fit", "--config=outputs/config.yaml") == 2
    assert one_error_line(capsys) == (
        "error: this run would save its settings as outputs/config.yaml, over --config outputs/config.yaml: give "
        "the logger another folder (--trainer.logger.init_args.save_dir DIR)"
    )
    assert sorted((tmp_path / "outputs" / "wandb").iterdir()) == runs  # no wandb run was started


def test_a_new_run_over_an_earlier_runs_checkpoints_is_warned(tmp_path, monkeypatch, capsys, corpus) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["fit", f"--data.path={corpus}", *SMALL, "--trainer.max_steps=2", "--trainer.logger=false"]
    main(args)
    assert "earlier run" not in capsys.readouterr().err
    # A run refused for its model settings says only that: no warning of what it would have overwritten.
    assert run_main(monkeypatch, tmp_path, *args, "--model.betas=[0.9, 1.5]") == 2
    assert "model.betas must be in [0, 1)" in one_error_line(capsys)
    main(args)
    assert "warning: checkpoints holds last.ckpt from an earlier run: this new run overwrites last.ckpt" in (
        capsys.readouterr().err
    )
    # Without a checkpoint folder Lightning picks one under the logger's: nothing to say of checkpoints/.
    main([*args, "--checkpoint.dirpath=null"])
    assert "earlier run" not in capsys.readouterr().err
    # A run that saves no last.ckpt leaves the earlier one as it is, and says only what it does.
    last = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    main([*args, "--checkpoint.save_last=false"])
    assert (
        "warning: checkpoints holds last.ckpt from an earlier run: this new run keeps its checkpoints beside them"
        in (capsys.readouterr().err)
    )
    main([*args, "--checkpoint.save_last=false", "--checkpoint.save_top_k=0"])
    assert "earlier run" not in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == last


def test_a_misspelt_key_in_a_config_file_names_the_file(tmp_path, monkeypatch, capsys, corpus) -> None:
    (tmp_path / "good.yaml").write_text("model:\n  n_layer: 3\n", encoding="utf-8")
    (tmp_path / "typo.yaml").write_text("model:\n  n_layr: 3\n", encoding="utf-8")
    args = ["fit", "--config", "good.yaml", "--config", "typo.yaml", f"--data.path={corpus}"]
    monkeypatch.setattr(sys, "argv", ["babygpt"])  # the parser names the command after argv[0]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert one_error_line(capsys) == (
        "error: config file typo.yaml sets model.n_layr, which is not an option: check its spelling "
        "(see babygpt fit --help)"
    )


def test_a_config_file_that_sets_the_linked_data_block_size_is_refused(tmp_path, monkeypatch, capsys, corpus) -> None:
    """The parser took model.block_size's value silently: another model than the file asked for trained."""
    (tmp_path / "window.yaml").write_text("data:\n  block_size: 32\n", encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "fit", "--config", "window.yaml", f"--data.path={corpus}") == 2
    assert one_error_line(capsys) == (
        "error: config file window.yaml sets data.block_size, which follows model.block_size (the model's window is "
        "its data's): set model.block_size instead"
    )
    assert not (tmp_path / "checkpoints").exists()


def test_a_config_file_before_the_command_is_put_after_it(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "short.yaml").write_text("trainer:\n  max_steps: 2\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["babygpt"])  # the parser names the command after argv[0]
    assert run_main(monkeypatch, tmp_path, "-c", "short.yaml", "fit") == 2
    assert one_error_line(capsys) == (
        "error: config file short.yaml sets trainer.max_steps before the command: put --config after it, e.g. "
        "babygpt fit --config short.yaml (see babygpt --help)"
    )


@pytest.mark.parametrize("command", [["fit"], ["predict", "--ckpt_path={checkpoint}"]])
def test_weights_only_false_is_refused(tmp_path, monkeypatch, capsys, corpus, checkpoint, command: list) -> None:
    args = [arg.format(checkpoint=checkpoint) for arg in command]
    assert run_main(monkeypatch, tmp_path, *args, f"--data.path={corpus}", "--weights_only=false") == 2
    assert one_error_line(capsys) == (
        "error: --weights_only false would let a checkpoint run pickled code: babygpt reads checkpoints as tensors "
        "and plain values only; drop it"
    )


@pytest.mark.parametrize("flag", ["--config", "-c"])
def test_a_yaml_syntax_error_names_the_file(tmp_path, monkeypatch, capsys, corpus, flag) -> None:
    (tmp_path / "bad.yaml").write_text("trainer:\n  max_steps: [10\n", encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "fit", flag, "bad.yaml", f"--data.path={corpus}") == 2
    assert "config file bad.yaml is not valid YAML at line 3" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "setting", "value"),
    [
        (["--trainer.gradient_clip_val=0"], "trainer.gradient_clip_val", 0),  # 0: no clipping
        (["--checkpoint.every_n_epochs=1"], "checkpoint.every_n_epochs", 1),
        (["--checkpoint.monitor=null"], "checkpoint.monitor", None),
        (["--checkpoint.filename=best-{epoch}-{step}"], "checkpoint.filename", "best-{epoch}-{step}"),
        (["--config={trainer: {max_steps: 3}}"], "trainer.max_steps", 3),  # inline YAML, not a file
        (["-c", "three.yaml", "--model.lr=0.001"], "trainer.max_steps", 3),
    ],
)
def test_the_edges_of_what_is_refused_are_accepted(tmp_path, monkeypatch, corpus, extra, setting, value) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "three.yaml").write_text("trainer:\n  max_steps: 3\n", encoding="utf-8")
    cli = set_up(monkeypatch, "fit", f"--data.path={corpus}", *SMALL, "--trainer.logger=false", *extra)
    assert cli.config.fit[setting] == value


def test_validate_ignores_a_training_only_setting_of_a_shared_config(tmp_path, monkeypatch, checkpoint, corpus):
    """limit_train_batches 0 would train nothing, which is refused in fit; validate trains nothing anyway."""
    monkeypatch.chdir(tmp_path)
    args = ["validate", f"--ckpt_path={checkpoint}", f"--data.path={corpus}", "--trainer.limit_train_batches=0"]
    assert set_up(monkeypatch, *args).config.validate.trainer.limit_train_batches == 0


def test_max_time_stops_between_optimizer_steps(monkeypatch, corpus: Path) -> None:
    from babygpt_pl.callbacks import StepTimer

    cli = set_up(monkeypatch, "fit", f"--data.path={corpus}", *TINY, "--trainer.max_time=00:00:10:00")
    timers = [c for c in cli.trainer.callbacks if isinstance(c, Timer)]
    assert [type(c) for c in timers] == [StepTimer] and timers[0]._duration == 600


def test_validate_on_a_corpus_with_another_vocabulary(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    other = tmp_path / "other.txt"
    other.write_text("abcdefghij" * 100, encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "validate", f"--data.path={other}", f"--ckpt_path={checkpoint}") == 2
    assert "vocabulary" in one_error_line(capsys)


class NaNAfter(BabyGPTModule):
    """Its weights turn NaN at step 3, so its loss does from then on, as a diverging run's would."""

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            with torch.no_grad():
                self.model.ln_f.weight.fill_(float("nan"))
        return super().training_step(batch, batch_idx)


class NaNFromTheStart(BabyGPTModule):
    """Its weights are NaN from the first step on."""

    def on_train_start(self) -> None:
        super().on_train_start()
        with torch.no_grad():
            self.model.ln_f.weight.fill_(float("nan"))


@pytest.mark.parametrize(
    ("log_every_n_steps", "validate"),
    [(1, True), (0, True), (0, False)],  # found by the training loss's check; the validation's; the first save's
)
def test_a_nan_at_the_first_step_says_no_checkpoint_was_written(
    tmp_path: Path, corpus: Path, log_every_n_steps: int, validate: bool
) -> None:
    """Found by the first save, it said the last good checkpoint was kept: ModelCheckpoint names its file first."""
    with pytest.raises(UserError, match="^the training loss became NaN or infinite at step 0; no checkpoint was"):
        fit_to_a_nan(tmp_path / "ckpt", corpus, NaNFromTheStart, log_every_n_steps, validate)
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))


class NaNUpdateAt3(BabyGPTModule):
    """Its update at step 3 makes a weight NaN (a NaN gradient), with every training loss until then finite."""

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.global_step == 3:
            self.model.ln_f.weight.grad.fill_(float("nan"))


class NaNValidationAt4(BabyGPTModule):
    """Its validation loss at step 4 is NaN, its weights and training losses finite."""

    def validation_step(self, batch, batch_idx) -> None:
        super().validation_step(batch, batch_idx)
        if self.global_step == 4:
            self.val_loss.update(torch.tensor(float("nan")))


def fit_to_a_nan(
    folder: Path, corpus: Path, module: type[BabyGPTModule], log_every_n_steps: int, validate: bool
) -> None:
    """Train ``module`` for up to 8 steps into a NaN, saving to ``folder`` every 2 steps (after a validation with
    ``validate``, else without any)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from babygpt_pl.checkpoint import AtomicCheckpointIO

    data = CiDataModule(str(corpus), batch_size=4, block_size=16, val_batches=1)
    model = module(vocab="".join(data.build_tokenizer().vocab), block_size=16, n_embed=16, n_head=2, n_layer=1)
    timing = {"monitor": "val_loss"} if validate else {"every_n_train_steps": 2}
    checkpoints = ModelCheckpoint(dirpath=folder, save_last=True, filename="best-{step}", **timing)
    trainer = L.Trainer(
        max_steps=8,
        logger=False,
        callbacks=[checkpoints],
        log_every_n_steps=log_every_n_steps,
        val_check_interval=2,
        limit_val_batches=None if validate else 0,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(model, data)


@pytest.mark.parametrize(
    ("module", "log_every_n_steps", "validate", "expected"),
    [
        (NaNAfter, 1, True, "the training loss became NaN or infinite at step 3"),
        (NaNAfter, 0, True, "the training loss became NaN or infinite at step 3"),  # never logged: validation checks
        (NaNAfter, 0, False, "the training loss became NaN or infinite at step 3"),  # nor validated: the save checks
        (NaNUpdateAt3, 1, True, "the validation loss became NaN or infinite at step 4"),
        (NaNUpdateAt3, 1, False, "the weights became NaN or infinite at step 4"),
        (NaNValidationAt4, 1, True, "the validation loss became NaN or infinite at step 4"),
    ],
)
def test_a_nan_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, corpus: Path, module: type[BabyGPTModule], log_every_n_steps: int, validate: bool, expected: str
) -> None:
    with pytest.raises(UserError, match=f"^{expected}; the last good checkpoint is kept. Lower model.lr"):
        fit_to_a_nan(tmp_path / "ckpt", corpus, module, log_every_n_steps, validate)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(t).all() for k, t in ckpt["state_dict"].items() if "head.bias" not in k)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best-step=2.ckpt", "last.ckpt"]  # no NaN best


def test_ctrl_c_before_training_is_a_clean_exit(tmp_path, monkeypatch, capsys) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "BabyGPTCLI", interrupted)
    assert run_main(monkeypatch, tmp_path, "fit") == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_while_predict_generates_is_a_clean_exit(tmp_path, monkeypatch, capsys, checkpoint) -> None:
    """Lightning turns it into exit code 1 (a crash's); the command says "interrupted", 130, as at start-up."""
    from babygpt_pl import module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "complete", interrupted)
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT from then on
    try:
        assert run_main(monkeypatch, tmp_path, "predict", f"--ckpt_path={checkpoint}", "--generation.output=o") == 130
    finally:
        signal.signal(signal.SIGINT, handler)
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted"
    assert not (tmp_path / "o").exists()


def signal_arrives(signum: int) -> None:
    """What the process does when ``signum`` arrives now (without sending it: Python's default would end pytest)."""
    signal.getsignal(signum)(signum, None)


@pytest.mark.parametrize("how", ["Lightning's SIGTERMException", "a signal before Lightning's handler"])
def test_sigterm_during_validate_is_terminated(tmp_path, monkeypatch, capsys, checkpoint, corpus, how) -> None:
    """Lightning ends a non-training run on SIGTERM with a SystemExit of code 0: a script would take it for done.
    Before Lightning sets its handler (loading the weights), Python's default ended the process without a word."""

    def sigterm(self, subcommand: str) -> None:
        if how.startswith("Lightning"):
            raise SIGTERMException
        signal_arrives(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(LightningCLI, "_run_subcommand", sigterm)
    assert run_main(monkeypatch, tmp_path, "validate", f"--data.path={corpus}", f"--ckpt_path={checkpoint}") == 143
    assert capsys.readouterr().err.splitlines()[-1] == "terminated"
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler is gone after it


@pytest.mark.slow
def test_sigterm_ends_predict(tmp_path, checkpoint) -> None:
    """Lightning's own SIGTERM handler only notes the signal: `timeout` or `docker stop` could not end a predict."""
    args = ["predict", f"--ckpt_path={checkpoint}", "--generation.max_new_tokens=10000000"]
    proc = subprocess.Popen(
        babygpt_cmd(*args), cwd=tmp_path, env=babygpt_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    while not any(line.startswith("Loaded model weights") for line in lines) and proc.poll() is None:
        lines.append(proc.stderr.readline())
    time.sleep(3)  # into the generation
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # (when the signal was ignored)
    assert proc.returncode == 143
    assert err.splitlines()[-1] == "terminated"
    assert "💡" not in "".join(lines)  # nor Lightning's advertisement


@pytest.mark.slow
def test_predict_into_a_closed_pipe_stops_quietly(tmp_path, checkpoint) -> None:
    """`babygpt predict | head -1`, where head has gone. The output file asked for is written all the same."""
    out = tmp_path / "samples.jsonl"
    args = ["predict", f"--ckpt_path={checkpoint}", "--generation.max_new_tokens=20", f"--generation.output={out}"]
    proc = subprocess.Popen(
        babygpt_cmd(*args), cwd=tmp_path, env=babygpt_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the first line: whatever the pipe's size, the first write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "Error" not in err
    assert [json.loads(line)["prompt"] for line in out.read_text(encoding="utf-8").splitlines()] == ["春江", "往事"]


@pytest.mark.parametrize(
    ("signum", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_while_torch_is_imported_is_a_clean_exit(monkeypatch, capsys, python_sigint, signum, code, said):
    from babygpt_pl import __main__ as entry

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "babygpt_pl.cli":
                signal_arrives(signum)  # as Ctrl-C or `kill` during the seconds of `import torch, lightning` would

    monkeypatch.delitem(sys.modules, "babygpt_pl.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", ["babygpt", "fit"])
    with pytest.raises(SystemExit) as exit_info:
        entry.main()
    assert exit_info.value.code == code
    assert capsys.readouterr().err == f"{said}\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "holds nothing, not settings"),
        ("- a\n- b\n", "holds ['a', 'b'], not settings"),
        ("trainer: 5\n", "`trainer:` holds 5, not settings"),
        ("data:\n", "`data:` holds None, not settings"),
        ("generation: fast\n", "`generation:` holds 'fast', not settings"),
    ],
)
def test_a_config_file_that_is_not_settings_is_named(tmp_path, monkeypatch, capsys, corpus, content, expected) -> None:
    (tmp_path / "odd.yaml").write_text(content, encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "fit", "--config", "odd.yaml", f"--data.path={corpus}") == 2
    line = one_error_line(capsys)
    assert line.startswith("error: config file odd.yaml") and expected in line


@pytest.mark.parametrize(
    ("option", "shown"),
    [
        ("--checkpoint.dirpath=afile/ck", "--checkpoint.dirpath afile/ck: afile is a file, not a folder"),
        ("--trainer.logger.init_args.save_dir=afile/out", "--trainer.logger.init_args.save_dir afile/out: afile is"),
        ("--trainer.logger.init_args.dir=afile/out", "--trainer.logger.init_args.dir afile/out: afile is a file"),
        ("--trainer.default_root_dir=afile/r", "--trainer.default_root_dir afile/r: afile is a file, not a folder"),
    ],
)
def test_an_unwritable_output_folder_is_refused_before_training(
    tmp_path, monkeypatch, capsys, corpus, option, shown
) -> None:
    (tmp_path / "afile").write_text("")
    assert run_main(monkeypatch, tmp_path, "fit", f"--data.path={corpus}", *SMALL, option) == 2
    assert shown in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "corpus.txt"]  # no wandb run, no checkpoints


@pytest.mark.parametrize(("value", "problem"), [("nope.yaml", "does not exist"), ("configs", "is a folder")])
def test_a_config_file_that_is_not_there_is_named(tmp_path, monkeypatch, capsys, value, problem) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cpu.yaml").write_text("trainer:\n  max_steps: 5\n", encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "fit", "--config", value) == 2
    line = one_error_line(capsys)
    assert f"config file {value} {problem}; pass a YAML file, e.g. one of configs/cpu.yaml" in line
    assert run_main(monkeypatch, tmp_path, "fit", "--config=") == 2
    assert "--config needs the path of a YAML file" in one_error_line(capsys)


def test_a_config_vocabulary_other_than_the_corpus_is_named(tmp_path, monkeypatch, capsys, corpus) -> None:
    (tmp_path / "c.yaml").write_text("model:\n  vocab: abc\n", encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "fit", "--config", "c.yaml", f"--data.path={corpus}", *SMALL) == 2
    line = one_error_line(capsys)
    assert "model.vocab (3 characters, from the config) differs" in line and "checkpoint" not in line


def test_no_subcommand_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    """`babygpt` alone: the config-file check once failed on the empty command line with a traceback."""
    monkeypatch.setattr(sys, "argv", ["babygpt"])
    assert run_main(monkeypatch, tmp_path) == 2
    assert 'expected "subcommand" to be one of {fit,validate,test,predict,chat}' in one_error_line(capsys)


def test_an_error_of_several_lines_is_printed_as_one(tmp_path, monkeypatch, capsys) -> None:
    """wandb's network errors, for one, span three lines."""

    def refuse(argv):
        raise UserError("wandb: Timed out\nConsider increasing the init_timeout setting:\n  see the docs")

    monkeypatch.setattr(cli_module, "check_config_files", refuse)
    assert run_main(monkeypatch, tmp_path, "fit") == 2
    assert (
        one_error_line(capsys) == "error: wandb: Timed out Consider increasing the init_timeout setting: see the docs"
    )


def test_a_null_data_path_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "c.yaml").write_text("data:\n  path: null\n", encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "fit", "--config", "c.yaml") == 2
    assert "data.path must be the path of a UTF-8 text file, got None" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["validate", "test"])
def test_validate_and_test_need_a_checkpoint(tmp_path, monkeypatch, capsys, corpus, command) -> None:
    assert run_main(monkeypatch, tmp_path, command, f"--data.path={corpus}", *SMALL) == 2
    assert one_error_line(capsys) == f"error: {command} needs a trained model: pass --ckpt_path checkpoints/last.ckpt"
    assert run_main(monkeypatch, tmp_path, command, f"--data.path={corpus}", "--ckpt_path=last") == 2
    assert "--ckpt_path last: there is no checkpoints/last.ckpt yet" in one_error_line(capsys)
    assert run_main(monkeypatch, tmp_path, command, f"--data.path={corpus}", "--ckpt_path=best") == 2
    assert "--ckpt_path best is not a file this command can load" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["fit", "validate", "predict", "chat"])
def test_an_empty_ckpt_path_is_one_line(tmp_path, monkeypatch, capsys, corpus, command) -> None:
    """As from `--ckpt_path "$UNSET"`: fit took it for a path and died in Lightning with a traceback."""
    assert run_main(monkeypatch, tmp_path, command, f"--data.path={corpus}", *SMALL, "--ckpt_path=") == 2
    assert one_error_line(capsys) == (
        "error: --ckpt_path is empty: pass a checkpoint file (e.g. checkpoints/last.ckpt), or leave it out"
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("processes", [1, 2])
def test_an_online_run_without_a_wandb_login_is_one_line(tmp_path, corpus, processes) -> None:
    """In a process of its own: wandb keeps its settings for the life of a process. Under DDP the first rank alone
    starts the run: the other ended in a traceback at its next collective, once the first had gone."""
    args = [
        "fit",
        f"--data.path={corpus}",
        *SMALL,
        "--trainer.max_steps=10",
        "--trainer.logger.init_args.offline=false",
        *(
            ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", f"--trainer.devices={processes}"]
            if processes > 1
            else []
        ),
    ]
    # No key in the environment or in ~/.netrc, nothing to reach should it try, and no terminal to ask on.
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path), "WANDB_BASE_URL": "http://127.0.0.1:9"}
    result = babygpt(tmp_path, *args, check=False, **env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "[rank1]" not in result.stderr
    line = result.stderr.splitlines()[-1]
    assert line.startswith("error: wandb: No API key configured. Use `wandb login` to log in.")
    assert line.endswith("(or log offline: drop --trainer.logger.init_args.offline false)")
    assert not (tmp_path / "checkpoints").exists()


def test_fit_with_ckpt_path_last_and_none_yet_is_a_new_run(tmp_path, monkeypatch, capsys, corpus, checkpoint) -> None:
    monkeypatch.chdir(tmp_path)
    # Not a resume from another last*.ckpt there, as Lightning would (this one, of another shape, would crash it).
    (tmp_path / "checkpoints").mkdir()
    checkpoint.rename(tmp_path / "checkpoints" / "last-backup.ckpt")
    args = ["--trainer.max_steps=1", "--trainer.logger=false", "--ckpt_path=last"]
    main(["fit", f"--data.path={corpus}", *SMALL, *args])
    err = capsys.readouterr().err
    assert "warning: --ckpt_path last: there is no checkpoints/last.ckpt yet, so this is a new run" in err
    assert "save_last=True" not in err  # Lightning's own warning, whose advice does not apply
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_a_resumed_run_takes_this_runs_compile_setting(tmp_path, monkeypatch, checkpoint, corpus) -> None:
    """compile is how a run executes, not what it trains: unlike the training settings, it is not the checkpoint's."""
    monkeypatch.chdir(tmp_path)
    # min_lr is not used by the checkpoint's constant schedule: a change to it is no reason to refuse.
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", *RESUME, *TRAINED_DATA, "--model.min_lr=1e-4"]
    cli = set_up(monkeypatch, *args, "--model.compile=true")
    assert cli.model.hparams.compile is True
    assert cli.model.hparams.n_layer == 1


def test_a_resume_compares_no_weight_decay_where_it_decays_nothing(tmp_path, monkeypatch, capsys, corpus) -> None:
    """Muon with a tied head decays nothing: checkpoints of the configs that set weight_decay 0.1 resume under the
    configs that no longer do (a changed one that is used is refused: test_resume_with_another_learning_rate…)."""
    ckpt = trained_checkpoint(tmp_path, corpus, optimizer="muon", tie_weights=True, weight_decay=0.1)
    monkeypatch.chdir(tmp_path)
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={ckpt}", *RESUME, *TRAINED_DATA, "--trainer.logger=false"]
    args += ["--model.optimizer=muon", "--model.tie_weights=true"]
    set_up(monkeypatch, *args)  # at the default weight_decay, 0.01
    assert "weight_decay" not in capsys.readouterr().err
    set_up(monkeypatch, *args, "--model.weight_decay=0.5")
    assert "warning: model.weight_decay 0.5 is not used in this run: Muon" in capsys.readouterr().err


def test_a_new_run_warns_of_a_rate_it_does_not_use(tmp_path, monkeypatch, capsys, corpus) -> None:
    monkeypatch.chdir(tmp_path)
    set_up(monkeypatch, "fit", f"--data.path={corpus}", *SMALL, "--trainer.logger=false", "--model.min_lr=1e-4")
    expected = "warning: model.min_lr 0.0001 is not used in this run: it is the floor of --model.lr_schedule cosine"
    assert expected in capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("args", "config"),
    [
        (["--trainer.logger.offline=false"], None),  # the short form of the flag
        (["--trainer.logger=WandbLogger", "--trainer.logger.offline=false"], None),
        (['--trainer.logger={"class_path": "WandbLogger", "init_args": {"offline": false, "project": "p"}}'], None),
        ([], "trainer:\n  logger:\n    - class_path: WandbLogger\n      init_args: {offline: false}\n"),
    ],
)
def test_a_wandb_logger_asked_to_log_online_does(tmp_path, monkeypatch, corpus, args: list, config: str | None):
    """babygpt's offline default is for what the user did not set, however it was set."""
    assert the_wandb_logger(tmp_path, monkeypatch, corpus, args, config)._offline is False


def the_wandb_logger(tmp_path, monkeypatch, corpus, args: list, config: str | None) -> WandbLogger:
    """The one logger of a fit set up with ``args`` and, if given, the config file text ``config``."""
    monkeypatch.chdir(tmp_path)
    if config:
        (tmp_path / "loggers.yaml").write_text(config, encoding="utf-8")
        args = ["--config=loggers.yaml", *args]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (logger,) = set_up(monkeypatch, "fit", f"--data.path={corpus}", *SMALL, *args).trainer.loggers
    return logger


@pytest.mark.parametrize("online", [False, True])
def test_a_wandb_logger_chosen_after_logger_false_is_babygpts_offline_one(
    tmp_path, monkeypatch, corpus, online: bool
) -> None:
    """A config.yaml saved by a `--trainer.logger false` run says `logger: false`; a WandbLogger named after it was
    WandbLogger's own: online (an upload with a wandb login), project None, files in the working folder."""
    asked = ["--trainer.logger.init_args.offline=false"] if online else []
    args = ["--trainer.logger=WandbLogger", *asked]
    logger = the_wandb_logger(tmp_path, monkeypatch, corpus, args, "trainer:\n  logger: false\n")
    assert (logger._offline, logger._project, logger.save_dir) == (not online, "babygpt", "outputs")


def test_wandb_mode_online_is_said_to_need_the_offline_flag(tmp_path, monkeypatch, capsys, corpus) -> None:
    """wandb's own banner for the offline run says "set WANDB_MODE=online to enable cloud syncing": it does not."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "online")
    set_up(monkeypatch, "fit", f"--data.path={corpus}", *SMALL)
    assert (
        "warning: WANDB_MODE=online does not take this run online: Lightning's offline WandbLogger sets it to "
        "offline; pass --trainer.logger.init_args.offline false"
    ) in capsys.readouterr().err.splitlines()


LOGGERS = """trainer:
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {save_dir: csv}
    - class_path: lightning.pytorch.loggers.WandbLogger
      init_args: {project: babygpt, offline: true, save_dir: outputs}
"""


def test_the_wandb_settings_reach_a_wandb_logger_in_a_list_and_from_a_saved_config(
    tmp_path, monkeypatch, checkpoint, corpus
) -> None:
    """Resume into the checkpoint's wandb run, WANDB_MODE=disabled and --trainer.default_root_dir, also where the
    wandb logger is one of a list, and where the config says the default save_dir (as every saved config.yaml)."""
    saved = torch.load(checkpoint, weights_only=True)
    saved["wandb_run_id"] = "abc123"
    torch.save(saved, checkpoint)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loggers.yaml").write_text(LOGGERS, encoding="utf-8")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ["fit", "--config=loggers.yaml", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", *RESUME]
    cli = set_up(monkeypatch, *args, *TRAINED_DATA, "--trainer.default_root_dir=root")
    wandb = first_wandb(cli.trainer.loggers)
    assert wandb._wandb_init["id"] == "abc123" and wandb._wandb_init["mode"] == "disabled"
    assert wandb.save_dir == "root"
    assert cli.config.fit.trainer.logger[1].init_args.save_dir == "outputs"  # what config.yaml keeps: as given


def test_lightnings_default_logger_keeps_the_learning_rate_monitor(tmp_path, monkeypatch, corpus) -> None:
    """--trainer.logger null is Lightning's default logger, not none: the learning rates are logged to it."""
    monkeypatch.chdir(tmp_path)
    for logger, monitored in (("null", True), ("false", False)):
        cli = set_up(monkeypatch, "fit", f"--data.path={corpus}", *SMALL, f"--trainer.logger={logger}")
        assert any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks) is monitored


def test_generation_output_in_fit_is_warned_as_not_written(tmp_path, monkeypatch, capsys, corpus) -> None:
    monkeypatch.chdir(tmp_path)
    set_up(monkeypatch, "fit", f"--data.path={corpus}", *SMALL, "--generation.output=s.jsonl")
    assert "warning: generation.output s.jsonl is not written: predict and chat write it" in capsys.readouterr().err


def test_sigterm_before_training_ends_the_other_ranks_as_well(tmp_path, monkeypatch, corpus) -> None:
    """Under DDP the other ranks waited at their next collective, then printed a gloo traceback each (seen)."""
    killed = []

    class Launcher(_SubprocessScriptLauncher):
        def __init__(self) -> None:  # (no processes: kill only records)
            pass

        def kill(self, signum: int) -> None:
            killed.append(signum)

    def terminated(self, subcommand: str) -> None:  # SIGTERM while Lightning sets the run up
        self.trainer.strategy._launcher = Launcher()
        raise Terminated

    monkeypatch.setattr(LightningCLI, "_run_subcommand", terminated)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Terminated):
        cli_module.BabyGPTCLI(args=["fit", f"--data.path={corpus}", *SMALL, "--trainer.logger=false"])
    assert killed == [signal.SIGKILL]


@pytest.mark.parametrize("folder", [None, "run_y"])
def test_ckpt_path_last_is_checked_like_a_file(tmp_path, monkeypatch, capsys, checkpoint, corpus, folder) -> None:
    """In the checkpoint folder of this run: --checkpoint.dirpath's, if given (not checkpoints/, whose absence would
    make this a new run that replaces run_y/last.ckpt)."""
    (tmp_path / (folder or "checkpoints")).mkdir()
    checkpoint.rename(tmp_path / (folder or "checkpoints") / "last.ckpt")
    args = ["fit", f"--data.path={corpus}", "--ckpt_path=last", "--model.block_size=16", "--model.n_embed=32"]
    args += [f"--checkpoint.dirpath={folder}"] if folder else []
    assert run_main(monkeypatch, tmp_path, *args) == 2
    line = one_error_line(capsys)
    assert f"checkpoint {folder or 'checkpoints'}/last.ckpt has a different model: n_embed=16 (this run: 32)" in line


@pytest.mark.parametrize("command", ["validate", "predict"])
def test_model_options_a_checkpoint_overrides_are_refused(tmp_path, monkeypatch, capsys, checkpoint, corpus, command):
    args = [command, f"--data.path={corpus}", f"--ckpt_path={checkpoint}", "--model.n_layer=3"]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert "has n_layer=1 (this run: 3): the checkpoint decides the model here" in one_error_line(capsys)


@pytest.mark.parametrize("where", ["line", "config"])
def test_a_model_option_given_at_its_default_is_refused_too(tmp_path, monkeypatch, capsys, checkpoint, corpus, where):
    """n_layer 6 is the default: the parsed config alone cannot tell it was asked for."""
    given = ["--model.n_layer=6"]
    if where == "config":
        (tmp_path / "six.yaml").write_text("model:\n  n_layer: 6\n")
        given = ["--config=six.yaml"]
    args = ["predict", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", *given]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    assert "has n_layer=1 (this run: 6): the checkpoint decides the model here" in one_error_line(capsys)


def test_validate_with_another_optimizer_setting_runs(tmp_path, monkeypatch, capsys, checkpoint, corpus) -> None:
    """The optimizer shapes a resumed run's state, not the weights: validate need not refuse it."""
    monkeypatch.chdir(tmp_path)
    main(
        [
            "validate",
            f"--data.path={corpus}",
            f"--ckpt_path={checkpoint}",
            "--model.optimizer=muon",
            "--trainer.logger=false",
        ]
    )
    assert "val_loss" in capsys.readouterr().out


def test_a_resume_with_nothing_left_to_train_is_refused(tmp_path, monkeypatch, capsys, checkpoint, corpus) -> None:
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", *RESUME, *TRAINED_DATA]
    assert run_main(monkeypatch, tmp_path, *args, "--trainer.max_steps=2") == 2
    line = one_error_line(capsys)
    assert "has already trained 2 steps and trainer.max_steps is 2" in line and "raise --trainer.max_steps" in line


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        (["--data.batch_size=8"], "data.batch_size=4 (this run: 8)"),
        (["--data.seed=5"], "data.seed=1337 (this run: 5)"),
        (["--data.train_ratio=0.8"], "data.train_ratio=0.9 (this run: 0.8)"),
        ([], "another text"),
    ],
)
def test_a_resume_on_other_data_is_refused(tmp_path, monkeypatch, capsys, checkpoint, corpus, change, shown) -> None:
    if not change:
        corpus.write_text(corpus.read_text(encoding="utf-8")[::-1], encoding="utf-8")  # same characters
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", *RESUME, *TRAINED_DATA, *change]
    assert run_main(monkeypatch, tmp_path, *args, "--trainer.logger=false") == 2
    line = one_error_line(capsys)
    assert shown in line and "resume with the data it was trained on" in line


def test_a_resume_through_a_link_keeps_the_folder_of_the_checkpoint(tmp_path, monkeypatch, checkpoint, corpus):
    """Its best-checkpoint record and last.ckpt are there; the link's folder would drop the record silently."""
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "last.ckpt"
    link.symlink_to(checkpoint)
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={link}", *RESUME, *TRAINED_DATA, "--trainer.logger=false"]
    assert set_up(monkeypatch, *args).config.fit.checkpoint.dirpath == str(tmp_path)


@pytest.mark.parametrize(("fast", "steps"), [("true", 1), ("2", 2)])
def test_a_fast_dev_run_from_a_checkpoint_is_refused(tmp_path, monkeypatch, capsys, checkpoint, corpus, fast, steps):
    """Lightning's fast_dev_run stops at step N, which the checkpoint (step 2) is at or past: exit 0, nothing done."""
    args = ["fit", f"--data.path={corpus}", f"--ckpt_path={checkpoint}", *RESUME, *TRAINED_DATA]
    assert run_main(monkeypatch, tmp_path, *args, f"--trainer.fast_dev_run={fast}") == 2
    assert one_error_line(capsys) == (
        f"error: --trainer.fast_dev_run runs {steps} step(s) from step 0, and checkpoint {checkpoint} has already "
        "trained 2: nothing would train; drop --ckpt_path for a smoke run"
    )
    set_up(monkeypatch, *args, "--trainer.fast_dev_run=3", "--trainer.logger=false")  # one step past it: allowed
    # fast_dev_run replaces max_steps: not refused as "nothing left to train" by it.
    set_up(monkeypatch, *args, "--trainer.max_steps=2", "--trainer.fast_dev_run=3", "--trainer.logger=false")


def test_a_resume_with_other_batches_per_step_is_warned(tmp_path, monkeypatch, capsys, checkpoint, corpus) -> None:
    args = [
        "fit",
        f"--data.path={corpus}",
        f"--ckpt_path={checkpoint}",
        *RESUME,
        *TRAINED_DATA,
        "--trainer.logger=false",
    ]
    (tmp_path / ".last.ckpt.x1y2.tmp").write_bytes(b"PK")  # a save killed halfway, beside the checkpoint
    set_up(monkeypatch, *args)
    err = capsys.readouterr().err
    assert "each step now averages" not in err
    assert f"warning: {tmp_path} holds 1 unfinished checkpoint write(s) of a killed run (.last.ckpt.x1y2.tmp" in err
    set_up(monkeypatch, *args, "--trainer.accumulate_grad_batches=2")
    assert (
        f"warning: checkpoint {checkpoint} was trained with trainer.accumulate_grad_batches=1 (this run: 2): each "
        "step now averages other batches than the uninterrupted run's (and the first step may average fewer)"
    ) in capsys.readouterr().err


@pytest.mark.parametrize("logger", [[], ["--trainer.logger=false"]])  # saved with the model even unlogged
def test_prompts_the_corpus_cannot_encode_stop_fit_before_training(tmp_path, monkeypatch, capsys, logger) -> None:
    (tmp_path / "en.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50, encoding="utf-8")
    args = ["fit", "--data.path=en.txt", "--data.source=elsewhere.tgz", *SMALL, *logger]
    assert run_main(monkeypatch, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert "warning: data.source elsewhere.tgz is not used: en.txt exists" in err
    assert "--data.prompts, the prompts of the samples logged at each validation, against en.txt: 4 char" in err
    assert "acter(s) not in the model's vocabulary: '春江往事'; remove them from the prompt, or pass --gen" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["en.txt"]  # no checkpoint, config or wandb run
    assert run_main(monkeypatch, tmp_path, *args, "--data.prompts=春", "--generation.oov=drop") == 2
    assert "against en.txt: prompt '春' is empty (after the oov policy)" in capsys.readouterr().err


def trained_on(tmp_path: Path, text_path: str) -> Path:
    """A tiny checkpoint that says it was trained on ``text_path`` (a file that is not there)."""
    english = tmp_path / "en.txt"
    english.write_text("the quick brown fox jumps over the lazy dog\n" * 20, encoding="utf-8")
    ckpt = tiny_checkpoint(tmp_path, english)
    english.unlink()
    saved = torch.load(ckpt, weights_only=True)
    saved[CiDataModule.__qualname__] = {"settings": {"text_sha256": "0" * 64}, "path": text_path}
    torch.save(saved, ckpt)
    return ckpt


def test_validate_looks_for_the_text_trained_on_not_the_default_corpus(tmp_path, monkeypatch, capsys) -> None:
    """Not data/ci.txt, built (an 85 MB fetch) only to be refused for its vocabulary."""
    ckpt = trained_on(tmp_path, "gone.txt")
    assert run_main(monkeypatch, tmp_path, "validate", f"--ckpt_path={ckpt}") == 2
    assert (
        one_error_line(capsys)
        == f"error: checkpoint {ckpt} was trained on gone.txt, which is not there either, and this run's data.path "
        "data/ci.txt does not exist: pass --data.path to that text"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]
    (tmp_path / "data").mkdir()  # as after `make run`: a ci.txt of the same characters is no stand-in for it
    (tmp_path / "data" / "ci.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20, encoding="utf-8")
    for command in ("validate", "test"):
        assert run_main(monkeypatch, tmp_path, command, f"--ckpt_path={ckpt}") == 2
        expected = (
            f"error: checkpoint {ckpt} was trained on gone.txt, which is not there: pass --data.path to that text"
        )
        assert one_error_line(capsys) == expected


def test_validate_takes_the_trained_on_text_only_where_none_is_set_and_it_is_there(tmp_path, monkeypatch, capsys):
    """A data config file's path is the user's; a published corpus that is gone is looked for where it is asked."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ci.txt").write_text("other characters entirely\n" * 40, encoding="utf-8")
    own = tmp_path / "own.txt"
    own.write_text("the lazy dog\n" * 40, encoding="utf-8")
    (tmp_path / "data.yaml").write_text(f"path: {own}\n", encoding="utf-8")
    # The checkpoint's vocabulary is the 28 characters of "the quick brown fox jumps over the lazy dog\n".
    for text_path, args, used, counts in (
        ("gone.txt", ["--data=data.yaml"], own, "12 characters; 16"),
        (str(tmp_path / "elsewhere" / "ci.txt"), [], Path("data/ci.txt"), "14 characters; 14"),
    ):
        ckpt = trained_on(tmp_path, text_path)
        assert run_main(monkeypatch, tmp_path, "validate", f"--ckpt_path={ckpt}", *args) == 2
        assert one_error_line(capsys).endswith(
            f"is not that of {used} ({counts} of the checkpoint's are not in it): pass --data.path to the text it "
            f"was trained on ({text_path})"
        )


def test_validate_of_a_config_naming_the_default_corpus_names_the_text_trained_on(tmp_path, monkeypatch, capsys):
    """configs/cpu.yaml names data/ci.txt: for a model of another text, say which before building ci.txt."""
    ckpt = trained_on(tmp_path, "small.txt")
    (tmp_path / "small.txt").write_text("the lazy dog\n" * 40, encoding="utf-8")
    (tmp_path / "run.yaml").write_text("data:\n  path: data/ci.txt\n", encoding="utf-8")
    assert run_main(monkeypatch, tmp_path, "validate", "--config=run.yaml", f"--ckpt_path={ckpt}") == 2
    assert one_error_line(capsys) == (
        f"error: checkpoint {ckpt} was trained on small.txt, and this run's data.path data/ci.txt does not exist: "
        "pass --data.path small.txt"
    )
    assert not (tmp_path / "data").exists()


def test_a_resume_of_the_published_corpus_builds_it_where_this_run_asks(tmp_path, monkeypatch, capsys) -> None:
    ckpt = trained_on(tmp_path, "/elsewhere/data/ci.txt")

    def build(path, source=None):
        raise UserError(f"would build {path}")

    monkeypatch.setattr(data_module, "ensure_corpus", build)
    assert run_main(monkeypatch, tmp_path, "fit", f"--ckpt_path={ckpt}", *RESUME) == 2
    assert one_error_line(capsys) == "error: would build data/ci.txt"


def test_a_resume_without_the_text_trained_on_names_it_before_building_the_default(
    tmp_path, monkeypatch, capsys
) -> None:
    ckpt = trained_on(tmp_path, "gone.txt")
    assert run_main(monkeypatch, tmp_path, "fit", f"--ckpt_path={ckpt}", *RESUME) == 2
    assert one_error_line(capsys) == (
        f"error: checkpoint {ckpt} was trained on gone.txt, which is not there either, and this run's data.path "
        "data/ci.txt does not exist: pass --data.path to that text"
    )
    assert not (tmp_path / "data").exists()
