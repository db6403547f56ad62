"""`nami plot RUN`: the curves of a training run as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nami_core.train.curves import PlotRequest

from . import options as o


@o.defaults_from(PlotRequest)
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder (the --out of `nami train`).")],
    out: o.out("The picture to write: .png, .pdf or .svg.", o.OUTPUT) = None,
) -> None:
    """Draw a training run's curves from RUN/metrics.jsonl: the loss (total and per stage), the
    learning rate, the stage mix and images per second, over the optimizer step. Prints the path.

    Examples:

      nami plot runs/shapes

      nami plot runs/shapes --out shapes-curves.svg
    """
    req = PlotRequest(run, **o.given(out=out))
    req.check()  # a missing run or a bad --out is one line before matplotlib loads
    from nami_core.train.curves import plot_run

    typer.echo(str(plot_run(req)))
