"""Warnings: one line on stderr, from the first process only."""

from __future__ import annotations

import pytest

from babygpt_pl.errors import warn


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
