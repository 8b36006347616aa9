"""The command line's config files and errors: each bad option or file in one line naming the fix, where
jsonargparse would print its usage, a list of every type a union tried, or a YAML parser's "<unicode string>"."""

from __future__ import annotations

import glob
import itertools
import os
import re
import sys

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from babygpt_pl.errors import UserError, one_line

# The sections of a config file: each is a mapping of settings.
_SECTIONS = ("trainer", "model", "data", "generation", "checkpoint")


def raised_in(err: BaseException, module: str) -> bool:
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


_UNION_ERROR = re.compile(
    r'^Parser key "(?P<key>[^"]+)": Does not validate against any of the Union subtypes Subtypes: \[(?P<types>.*)\] '
    r"Errors: .* Given value: (?P<value>.*)$"
)


_PLAIN_TYPE = re.compile(r"typing\.Literal\[(?P<values>[^\]]*)\]|<class '(?P<cls>int|float|str|bool|NoneType)'>")


_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "NoneType": "null"}


_TYPE_ERROR = re.compile(r"^Parser key \"(?P<key>[^\"]+)\": Expected a (?P<type>.+?)\. Got value: (?P<value>.*)$")


def short_type_error(message: str) -> str:
    """jsonargparse's error for a value not of an option's one type, in words: "Expected a <class 'float'>. Got
    value: inf" reads as if inf were no float (jsonargparse refuses inf and nan), and a Literal's is Python's."""
    match = _TYPE_ERROR.match(message)
    plain = match and _PLAIN_TYPE.fullmatch(match["type"])
    if not plain:
        return message
    if plain["values"] is not None:
        return f"{match['key']}: {match['value']} is not accepted; give {_one_of(_literal_values(plain))}"
    what = _TYPE_NAMES[plain["cls"]]
    if plain["cls"] == "float" and match["value"].strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
        what = "a finite number"
    return f"{match['key']} must be {what}, got {match['value']}"


def _literal_values(part: re.Match) -> list[str]:
    return [v.strip().strip("'\"") for v in part["values"].split(",")]


def _one_of(choices: list[str]) -> str:
    """ "a, b or c", each once."""
    *most, last = dict.fromkeys(choices)
    return f"{', '.join(most)} or {last}" if most else last


_REQUIRED_ERROR = re.compile(
    r"^Parser key \"(?P<key>[^\"]+)\": .*?Problem with given class_path '(?P<cls>[^']+)': the following arguments are "
    r"required: (?P<args>[\w, ]+?) - "
)


def short_class_error(message: str) -> str:
    """jsonargparse's error for a class given without an argument it requires (``--trainer.logger CSVLogger`` after
    a config's ``logger: false``, where no default save_dir is left), as the class and what to pass."""
    match = _REQUIRED_ERROR.match(message)
    if match is None:
        return message
    flags = ", ".join(f"--{match['key']}.init_args.{arg.strip()}" for arg in match["args"].split(","))
    return f"{match['key']} {match['cls'].rsplit('.', 1)[-1]} needs {match['args']}: pass {flags}"


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
            accepted += _literal_values(part)
        else:
            accepted.append(_TYPE_NAMES[part["cls"]])
    if rest.replace(",", "").strip():
        return message  # a type this cannot name briefly (a class path, a list): keep everything
    return f"{match['key']}: {match['value']} is not accepted; give {_one_of(accepted)}"


def program_name() -> str | None:
    """The command as the user typed it, for usage lines and errors: argparse names ``python -m babygpt_pl`` after
    its file, "__main__.py" (None: argparse's own name, that of the installed ``babygpt``)."""
    ours = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
    return "python -m babygpt_pl" if os.path.realpath(sys.argv[0]) == os.path.realpath(ours) else None


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
        message = short_class_error(short_type_error(short_union_error(one_line(message))))
        early = re.search(r"Option '([^']+)' is not accepted before subcommand '(\w+)'", message)
        if early and (files := [path for path, content in self.config_files.items() if holds_key(content, early[1])]):
            # `babygpt -c cpu.yaml fit`: the top parser's --config takes sections per command (fit: trainer: …).
            message = (
                f"config file {files[0]} sets {early[1]} before the command: put --config after it, e.g. "
                f"{command} {early[2]} --config {files[0]}"
            )
        if unknown := re.search(r"Subcommand '(\w+)' does not accept option '([^']+)'", message):
            command = f"{command} {unknown[1]}"  # (the top parser's message: its --help lists no options)
            if files := [path for path, content in self.config_files.items() if holds_key(content, unknown[2])]:
                message = f"config file {files[0]} sets {unknown[2]}, which is not an option: check its spelling"
        print(f"error: {message} (see {command} --help)", file=sys.stderr)
        sys.exit(2)


def holds_key(settings: dict, dotted: str) -> bool:
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
        if holds_key(content, "data.block_size"):  # the parser would take the linked value without a word
            raise UserError(
                f"config file {path} sets data.block_size, which follows model.block_size (the model's window is "
                "its data's): set model.block_size instead"
            )
        settings[path] = content
    return settings
