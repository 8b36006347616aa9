"""The interactive loop: streaming, tokens/s, Ctrl-C stops one answer, empty line or end of input exits."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from cli_helper import babygpt_cmd, babygpt_env, tiny_checkpoint

from babygpt_pl import chat as chat_module
from babygpt_pl import cli as cli_module
from babygpt_pl.chat import chat_loop
from babygpt_pl.errors import UserError
from babygpt_pl.generation import GenerationConfig, complete
from babygpt_pl.model import BabyGPT, GPTConfig
from babygpt_pl.tokenizer import CharTokenizer

VOCAB = "\n 。春江花月夜往事知多少"


@pytest.fixture
def model() -> BabyGPT:
    torch.manual_seed(0)
    return BabyGPT(GPTConfig(vocab_size=len(VOCAB), block_size=16, n_embed=16, n_head=2, n_layer=1, dropout=0.0))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(model: BabyGPT, text: str, config: GenerationConfig | None = None, tty: bool = False) -> tuple[str, str]:
    """chat's (stdout, stderr) for ``text`` piped in (or typed, with ``tty``)."""
    out, err = io.StringIO(), io.StringIO()
    config = config or GenerationConfig(max_new_tokens=5, temperature=0)
    stdin = Terminal(text) if tty else io.StringIO(text)
    chat_loop(model, CharTokenizer(VOCAB), config, stdin=stdin, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def answers(model: BabyGPT, prompts: list[str], new: int = 5) -> str:
    """What predict's completion gives each prompt, as chat prints it: the prompt, the continuation, a line end."""
    config = GenerationConfig(max_new_tokens=new, temperature=0)
    return "".join(
        f"{p}{c.text}\n" for p, c in zip(prompts, complete(model, CharTokenizer(VOCAB), prompts, config), strict=True)
    )


def test_piped_prompts_are_all_answered_across_blank_lines(model: BabyGPT) -> None:
    """Only an empty line typed in a terminal leaves (test_chat_in_a_terminal): a piped one would drop the rest."""
    out, err = run(model, "春江\n往事\n\n\r\n月夜\n\n")
    assert out == answers(model, ["春江"]) + answers(model, ["往事"]) + answers(model, ["月夜"])
    assert err.count("tokens/s]") == 3 and err.count("> ") == 4  # the last: the end of the input


def test_piped_output_holds_the_answers_alone_and_a_terminal_sees_the_rest(model: BabyGPT) -> None:
    out, err = run(model, "春江\n")
    assert out == answers(model, ["春江"])
    assert err.startswith("babygpt chat: type the start of a ci") and "tokens/s]" in err
    out, err = run(model, "春江\n", tty=True)
    assert out.startswith("babygpt chat:") and "\n> " + answers(model, ["春江"]) + "[5 tokens in" in out
    assert err == ""


def test_end_of_input_exits_cleanly(model: BabyGPT) -> None:
    assert run(model, "春江")[1].count("tokens/s]") == 1


def test_a_bad_prompt_is_reported_and_the_loop_goes_on(model: BabyGPT) -> None:
    out, err = run(model, "火星\n春江\n")
    assert "\n> 火星\nerror: 2 character(s) not in the model's vocabulary: '火星'" in err
    assert out == answers(model, ["春江"])  # nothing of the refused prompt
    assert err.count("tokens/s]") == 1


def test_a_line_that_is_not_utf8_is_named_so(model: BabyGPT) -> None:
    """As Python's stdin hands over undecodable bytes: lone surrogates, which the vocabulary check showed as such."""
    out, err = run(model, "春\udcff江\n春江\n")
    assert "\nerror: this line is not UTF-8 text: type it again, or convert the piped file" in err
    assert err.count("\nerror:") == 1
    assert out == answers(model, ["春江"])


def test_a_long_prompts_warning_goes_to_stderr(model: BabyGPT) -> None:
    out, err = run(model, "春江" * 10 + "\n")
    assert "\nwarning: prompt of 20 characters is longer than the window; keeping its last 16\n" in err
    assert "window" not in out and out.startswith("春江" * 10)


@pytest.mark.slow
def test_piped_input_with_a_refused_prompt_exits_non_zero(tmp_path: Path, corpus: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path, corpus)
    cmd = babygpt_cmd("chat", f"--ckpt_path={ckpt}", "--generation.max_new_tokens=3")
    result = subprocess.run(cmd, input="ZZ\n春江\n", capture_output=True, text=True, env=babygpt_env(), timeout=300)
    assert result.returncode == 2
    assert result.stdout.startswith("春江") and result.stdout.count("\n") == 1  # the one answer alone
    assert result.stderr.count("tokens/s]") == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]  # (not Lightning's INFO)
    assert len(errors) == 2
    assert errors[0].startswith("error: 1 character(s) not in the model's vocabulary: 'Z'")
    assert errors[-1] == "error: 1 prompt(s) of the input were refused (see the errors above); fix them"


def interrupt_the_first_call(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple]:
    """Ctrl-C in the first call of chat's ``name``; the others run. Returns every call's arguments."""
    real, calls = getattr(chat_module, name), []

    def interrupted_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chat_module, name, interrupted_once)
    return calls


def test_ctrl_c_stops_the_answer_not_the_loop(model: BabyGPT, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = interrupt_the_first_call(monkeypatch, "complete")
    out, err = run(model, "春江\n往事\n")
    assert "[stopped]" in err
    assert [args[2] for args in calls] == [["春江"], ["往事"]]
    assert err.count("tokens/s]") == 1 and out == answers(model, ["往事"])


def test_streamed_text_is_the_answer(model: BabyGPT) -> None:
    out, _ = run(model, "春\n", GenerationConfig(max_new_tokens=8, temperature=0))
    assert out == answers(model, ["春"], new=8)


def test_the_chat_command_reads_its_checkpoint_once(tmp_path: Path, corpus: Path, monkeypatch) -> None:
    ckpt = tiny_checkpoint(tmp_path, corpus)
    checkpoint = torch.load(ckpt, weights_only=True)
    saved = checkpoint["state_dict"]
    for value in saved.values():
        value += 0.5  # unlike any model's initial weights
    torch.save(checkpoint, ckpt)
    reads, chatted = [], []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args[0]) or load(*args, **kwargs))
    monkeypatch.setattr(cli_module, "chat_loop", lambda model, *args: chatted.append(model) or 0)
    monkeypatch.chdir(tmp_path)
    cli_module.main(["chat", f"--ckpt_path={ckpt}"])
    assert len(reads) == 1
    [model] = chatted
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[f"model.{key}"]), key  # the checkpoint's weights, not the module's init


@pytest.mark.parametrize(
    ("precision", "dtype", "autocast"),
    [("32-true", torch.float32, False), ("64-true", torch.float64, False), ("bf16-mixed", torch.float32, True)],
)
def test_chat_runs_on_the_accelerator_and_precision_asked_for(
    tmp_path: Path, corpus: Path, monkeypatch, precision: str, dtype: torch.dtype, autocast: bool
) -> None:
    ckpt = tiny_checkpoint(tmp_path, corpus)
    seen = []

    def chat_loop(model, *args) -> int:
        seen.append((model.head.weight.device, model.head.weight.dtype, torch.is_autocast_enabled("cpu")))
        return 0

    monkeypatch.setattr(cli_module, "chat_loop", chat_loop)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, where the user asks for the CPU
    monkeypatch.chdir(tmp_path)
    cli_module.main(["chat", f"--ckpt_path={ckpt}", "--trainer.accelerator=cpu", f"--trainer.precision={precision}"])
    assert seen == [(torch.device("cpu"), dtype, autocast)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "closed", "refused"), [("chat", 0, "input"), ("chat", 1, "output"), ("predict", 0, "")]
)
def test_a_closed_standard_stream_is_said_so_where_it_is_needed(
    tmp_path: Path, corpus: Path, command: str, closed: int, refused: str
) -> None:
    """predict reads no stdin: run with it closed (cron, a service), it generates as ever."""
    ckpt = tiny_checkpoint(tmp_path, corpus)
    result = subprocess.run(
        babygpt_cmd(command, f"--ckpt_path={ckpt}", "--generation.max_new_tokens=3"),
        cwd=tmp_path,
        env=babygpt_env(),
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.close(closed),
    )
    if not refused:
        assert result.returncode == 0 and "--- 春江" in result.stdout
        return
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {command} needs its standard {refused}, which is closed: run it in a terminal, or redirect it to or "
        "from a file"
    ]


@pytest.mark.slow
def test_chat_in_a_terminal(tmp_path: Path, corpus: Path) -> None:
    """`babygpt chat` under a pseudo-terminal: type a prompt, see it answered, an empty line leaves (Ctrl-D is the
    end of input, as in test_end_of_input_exits_cleanly)."""
    ckpt = tiny_checkpoint(tmp_path, corpus)
    leader, follower = pty.openpty()
    cmd = babygpt_cmd("chat", f"--ckpt_path={ckpt}", "--generation.max_new_tokens=10")
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=subprocess.DEVNULL, env=babygpt_env())
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, timeout: float = 120) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 4096)
        assert marker in seen, seen.decode(errors="replace")

    read_until(b"> ")
    os.write(leader, "春江\n".encode())
    read_until(b"tokens/s]")
    os.write(leader, b"\n")
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    assert "春江".encode() in seen


def test_windows_line_ends_and_a_byte_order_mark_are_not_part_of_the_prompt(model: BabyGPT) -> None:
    out, _ = run(model, "\ufeff春江\r\n往事\r\n")
    assert out == answers(model, ["春江"]) + answers(model, ["往事"])


def test_num_samples_is_refused_not_ignored(model: BabyGPT, tmp_path: Path, corpus: Path, monkeypatch, capsys) -> None:
    with pytest.raises(UserError, match="chat streams one answer per prompt"):
        run(model, "春江\n", GenerationConfig(max_new_tokens=3, num_samples=2))
    ckpt = tiny_checkpoint(tmp_path, corpus)
    monkeypatch.chdir(tmp_path)
    made = []  # the trainer prints its set-up lines (GPU available: …) as it is made: the refusal comes first
    monkeypatch.setattr(cli_module.BabyGPTCLI, "instantiate_classes", lambda self: made.append(self))
    with pytest.raises(SystemExit):
        cli_module.main(["chat", f"--ckpt_path={ckpt}", "--generation.num_samples=2"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: chat streams one answer per prompt: drop --generation.num_samples (predict takes it)"
    ]
    assert made == []


def test_output_to_a_pipe_gets_each_answer_once(model: BabyGPT, tmp_path: Path) -> None:
    """A pipe is written in place: the whole file anew after each answer would repeat the earlier ones."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that opening it for writing does not block
    try:
        run(model, "春江\n往事\n", GenerationConfig(max_new_tokens=3, temperature=0, output=str(fifo)))
        records = [json.loads(line) for line in os.read(reader, 100_000).decode().splitlines()]
    finally:
        os.close(reader)
    assert [r["prompt"] for r in records] == ["春江", "往事"]


def test_a_named_pipe_is_opened_once_for_the_whole_chat(model: BabyGPT, tmp_path: Path) -> None:
    """Reopened for each answer, it was closed after the first: its reader (cat) left, and the second open waited for
    ever for another."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    config = GenerationConfig(max_new_tokens=3, temperature=0, output=str(fifo))
    chat = threading.Thread(target=run, args=(model, "春江\n往事\n花月\n", config), daemon=True)
    chat.start()
    chat.join(timeout=60)
    assert not chat.is_alive()
    reader.join(timeout=10)
    assert [json.loads(line)["prompt"] for line in read[0].splitlines()] == ["春江", "往事", "花月"]


class AfterAnEvent(io.StringIO):
    """Piped prompts whose second line comes only once ``event`` is set."""

    def __init__(self, text: str, event: threading.Event) -> None:
        super().__init__(text)
        self.event, self.lines = event, 0

    def readline(self, *args) -> str:
        self.lines += 1
        if self.lines == 2:
            self.event.wait(timeout=30)
        return super().readline(*args)


def test_a_named_pipe_whose_reader_left_is_one_error(model: BabyGPT, tmp_path: Path) -> None:
    """Kept open, its close flushed the unwritten answer again: a BrokenPipeError in place of the error line."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    left = threading.Event()

    def read_one_answer() -> None:
        with fifo.open(encoding="utf-8") as f:
            f.readline()
        left.set()

    threading.Thread(target=read_one_answer, daemon=True).start()
    config = GenerationConfig(max_new_tokens=3, temperature=0, output=str(fifo))
    with pytest.raises(UserError, match=f"^could not write --generation.output {fifo}: Broken pipe; choose another"):
        chat_loop(
            model,
            CharTokenizer(VOCAB),
            config,
            stdin=AfterAnEvent("春江\n往事\n", left),
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )


@pytest.mark.parametrize("prompts", ["春江\n往事\n", "春江\n"])
def test_ctrl_c_while_an_answer_is_saved_keeps_the_loop_and_the_answer(
    model: BabyGPT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompts: str
) -> None:
    """The write of --generation.output is the slow part after an answer (synced to disk): a Ctrl-C there stops
    that write, not the chat, and the answer is written with the next one or on leaving."""
    interrupt_the_first_call(monkeypatch, "write_atomic")
    out_file = tmp_path / "chat.jsonl"
    _, err = run(model, prompts, GenerationConfig(max_new_tokens=3, temperature=0, output=str(out_file)))
    assert "[stopped]" in err
    records = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == prompts.split()


class InterruptedAtALineEnd(io.StringIO):
    """A terminal where Ctrl-C lands as the first answer's line end is written."""

    fired = False

    def write(self, text: str) -> int:
        if text == "\n" and not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_right_after_an_answer_keeps_the_loop_and_the_answer(model: BabyGPT, tmp_path: Path) -> None:
    config = GenerationConfig(max_new_tokens=3, temperature=0, output=str(tmp_path / "chat.jsonl"))
    stdout = InterruptedAtALineEnd()
    chat_loop(
        model, CharTokenizer(VOCAB), config, stdin=io.StringIO("春江\n往事\n"), stdout=stdout, stderr=io.StringIO()
    )
    assert stdout.fired
    records = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == ["春江", "往事"]


def test_a_failed_write_of_the_output_ends_the_chat_with_its_error(
    model: BabyGPT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not counted as a refused prompt (the exit status would blame the input), nor the answer's line end lost."""

    def full_disk(*args, **kwargs):
        raise UserError("could not write --generation.output chat.jsonl: No space left on device")

    monkeypatch.setattr(chat_module, "write_atomic", full_disk)
    out = io.StringIO()
    config = GenerationConfig(max_new_tokens=3, temperature=0, output=str(tmp_path / "chat.jsonl"))
    with pytest.raises(UserError, match="No space left on device"):
        chat_loop(
            model, CharTokenizer(VOCAB), config, stdin=io.StringIO("春江\n往事\n"), stdout=out, stderr=io.StringIO()
        )
    assert out.getvalue() == answers(model, ["春江"], 3)


class ClosedAfterTheFirstAnswer(io.StringIO):
    """A pipe whose reader leaves as the first answer's line end is written."""

    def write(self, text: str) -> int:
        if text == "\n":
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def chat_into_a_closed_pipe(model: BabyGPT, tmp_path: Path) -> None:
    """Two prompts, with stdout closed at the first answer's end and the answers saved to chat.jsonl."""
    config = GenerationConfig(max_new_tokens=3, temperature=0, output=str(tmp_path / "chat.jsonl"))
    with pytest.raises(BrokenPipeError):  # stdout's own error, as it came
        chat_loop(
            model,
            CharTokenizer(VOCAB),
            config,
            stdin=io.StringIO("春江\n往事\n"),
            stdout=ClosedAfterTheFirstAnswer(),
            stderr=io.StringIO(),
        )


def test_an_answer_whose_stdout_failed_is_saved_all_the_same(model: BabyGPT, tmp_path: Path) -> None:
    chat_into_a_closed_pipe(model, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == ["春江"]


def test_where_the_output_fails_too_stdouts_error_is_the_one_said(
    model: BabyGPT, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save that fails after stdout broke (the output may be stdout itself: /dev/stdout under `| head`) made the
    quiet exit of a closed pipe an error line about the output."""

    def closed(*args, **kwargs):
        raise UserError("could not write --generation.output /dev/stdout: Broken pipe; choose another path")

    monkeypatch.setattr(chat_module, "write_atomic", closed)
    chat_into_a_closed_pipe(model, tmp_path)


def test_output_holds_every_answer_so_far(model: BabyGPT, tmp_path: Path) -> None:
    out_file = tmp_path / "chat.jsonl"
    run(model, "春江\n往事\n", GenerationConfig(max_new_tokens=3, temperature=0, output=str(out_file)))
    records = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == ["春江", "往事"]
    assert all(r["tokens"] == 3 and len(r["text"]) == 3 for r in records)
