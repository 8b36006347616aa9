"""Warnings: one line on stderr, from the first process only."""

from __future__ import annotations

import pytest

from babygpt_pl.errors import Terminated, exit_on_signal, warn


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({}, True),
        ({"LOCAL_RANK": "1"}, False),
        ({"RANK": "0", "LOCAL_RANK": "1"}, True),
        ({"SLURM_PROCID": "3"}, False),
    ],
)
def test_a_warning_is_printed_by_rank_zero_only(monkeypatch, capsys, env: dict, shown: bool) -> None:
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    warn("look out")
    assert capsys.readouterr().err == ("warning: look out\n" if shown else "")


@pytest.mark.parametrize(
    ("err", "word", "code"), [(KeyboardInterrupt(), "interrupted", 130), (Terminated(), "terminated", 143)]
)
def test_a_signal_exits_as_the_shell_reports_it(capsys, err: BaseException, word: str, code: int) -> None:
    with pytest.raises(SystemExit) as info:
        exit_on_signal(err)
    assert info.value.code == code
    assert capsys.readouterr().err == f"{word}\n"
