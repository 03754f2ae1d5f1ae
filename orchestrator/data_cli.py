"""`symsweep data ...`: prepare the CIFAR-10 cache and look at the transformed images."""

from __future__ import annotations

import typer

app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)
