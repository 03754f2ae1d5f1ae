"""The `symsweep` command.

Sub-commands live in small modules and are registered here; `main` turns every
`workers.errors.UserError` into one line on stderr and its exit code (2), so bad input never
ends in a traceback.
"""

from __future__ import annotations

import sys

import typer

from orchestrator.data_cli import app as data_app
from workers.errors import UserError

app = typer.Typer(
    name="symsweep",
    help="Sweeps for 'Synergy and Symmetry in Deep Learning' on Ray: run, watch, resume, query.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except UserError as err:
        print(f"symsweep: error: {err}", file=sys.stderr)
        return err.exit_code
    except typer.Exit as ex:
        return ex.exit_code
    except SystemExit as ex:  # click's usage errors
        return int(ex.code or 0)
    except Exception as ex:  # click.ClickException (bad flags) prints itself
        import click

        if isinstance(ex, click.ClickException):
            ex.show()
            return ex.exit_code
        if isinstance(ex, click.exceptions.Abort):
            print("Aborted.", file=sys.stderr)
            return 130
        raise
    return 0



def console() -> None:
    """Console-script wrapper: exit with `main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    console()
