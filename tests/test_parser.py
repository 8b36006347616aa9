"""The command line's one-line errors (babygpt_pl/parser.py); through the CLI: test_failures.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import babygpt_pl
from babygpt_pl.cli import main
from babygpt_pl.parser import short_class_error, short_type_error, short_union_error


def test_a_union_error_names_each_accepted_value_once() -> None:
    """trainer.precision's union repeats 64, 32 and 16 (as ints and as strings)."""
    message = (
        'Parser key "trainer.precision": Does not validate against any of the Union subtypes Subtypes: '
        "[typing.Literal[64, 32, 16], typing.Literal['64', '32', '16', 'bf16'], <class 'NoneType'>] Errors: - x "
        "Given value type: <class 'str'> Given value: bf17"
    )
    expected = "trainer.precision: bf17 is not accepted; give 64, 32, 16, bf16 or null"
    assert short_union_error(message) == expected


def test_a_union_error_of_other_types_is_kept_whole() -> None:
    message = (
        'Parser key "trainer.logger": Does not validate against any of the Union subtypes Subtypes: '
        "[<class 'lightning.pytorch.loggers.logger.Logger'>, <class 'bool'>] Errors: - x Given value type: "
        "<class 'str'> Given value: 5"
    )
    assert short_union_error(message) == message


def test_a_class_without_a_required_argument_names_the_option_to_pass() -> None:
    """What `--trainer.logger false --trainer.logger CSVLogger` gave: 700 characters of union errors."""
    message = (
        'Parser key "trainer.logger": Does not validate against any of the Union subtypes Subtypes: [<class '
        "'lightning.pytorch.loggers.logger.Logger'>, <class 'bool'>] Errors: - Problem with given class_path "
        "'lightning.pytorch.loggers.CSVLogger': the following arguments are required: save_dir - Expected a <class "
        "'bool'> Given value type: <class 'jsonargparse._namespace.Namespace'> Given value: Namespace(…)"
    )
    assert short_class_error(message) == (
        "trainer.logger CSVLogger needs save_dir: pass --trainer.logger.init_args.save_dir"
    )
    assert short_class_error("anything else") == "anything else"


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("<class 'float'>", "inf", "generation.x must be a finite number, got inf"),  # it read as "inf is no float"
        ("<class 'float'>", "-Infinity", "generation.x must be a finite number, got -Infinity"),
        ("<class 'float'>", "nan", "generation.x must be a finite number, got nan"),
        ("<class 'float'>", "abc", "generation.x must be a number, got abc"),
        ("<class 'int'>", "2.5", "generation.x must be an integer, got 2.5"),
        ("<class 'bool'>", "maybe", "generation.x must be true or false, got maybe"),
        (
            "typing.Literal['error', 'drop', 'replace']",
            "foo",
            "generation.x: foo is not accepted; give error, drop or replace",
        ),  # Python's spelling of the type, where every other option's error is in words
        ("<class 'pathlib.Path'>", "x", "Parser key \"generation.x\": Expected a <class 'pathlib.Path'>. Got value: x"),
    ],
)
def test_a_type_error_is_said_in_words(kind: str, value: str, expected: str) -> None:
    assert short_type_error(f'Parser key "generation.x": Expected a {kind}. Got value: {value}') == expected


@pytest.mark.parametrize(
    ("argv0", "command"),
    [
        (str(Path(babygpt_pl.__file__).with_name("__main__.py")), "python -m babygpt_pl"),
        ("/venv/bin/babygpt", "babygpt"),
        ("/venv/lib/pytest/__main__.py", "__main__.py"),  # another module's `python -m` is not this one
    ],
)
def test_errors_name_the_command_as_it_was_typed(monkeypatch, capsys, argv0, command) -> None:
    """argparse named ``python -m babygpt_pl`` after its file: "see __main__.py fit --help"."""
    monkeypatch.setattr(sys, "argv", [argv0])
    with pytest.raises(SystemExit):
        main(["fit", "--nope"])
    assert capsys.readouterr().err == f"error: unrecognized arguments: --nope (see {command} fit --help)\n"
