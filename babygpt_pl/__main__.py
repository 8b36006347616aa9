"""``babygpt`` (and ``python -m babygpt_pl``): the CLI, with Ctrl-C or SIGTERM during its imports a clean exit too.

Importing the CLI imports torch and Lightning, seconds in which a Ctrl-C would otherwise print a traceback and a
SIGTERM end the process without a word; ``babygpt_pl.cli.main`` handles both after that.
"""

import sys

from babygpt_pl.errors import Terminated, debugging, exit_on_signal, terminate_on_sigterm


def main() -> None:
    with terminate_on_sigterm():
        try:
            from babygpt_pl.cli import main as cli_main
        except (KeyboardInterrupt, Terminated) as err:
            if debugging(sys.argv):
                raise
            exit_on_signal(err)
        cli_main()


if __name__ == "__main__":
    main()
