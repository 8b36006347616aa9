"""``babygpt`` (and ``python -m babygpt_pl``): the CLI, with Ctrl-C during its imports a clean exit too.

Importing the CLI imports torch and Lightning, seconds in which a Ctrl-C would otherwise print a traceback;
``babygpt_pl.cli.main`` handles the interrupts after that.
"""

import sys


def main() -> None:
    try:
        from babygpt_pl.cli import main as cli_main
    except KeyboardInterrupt:
        from babygpt_pl.errors import debugging

        if debugging(sys.argv):
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
