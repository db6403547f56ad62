"""`nami plot RUN`: the picture of a training run's curves, from RUN/metrics.jsonl.

Four panels over the optimizer step: the loss (total and per stage, log scale), the learning
rate, the stage mix (each stage's share of the samples drawn, stacked), and images per second.
Drawn with matplotlib's Agg backend (no display needed). The request is checked, and the metrics
read, before matplotlib is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_fields, when_empty
from ..errors import NamiError
from ..input_paths import FOLDER, check_reads, reads
from ..user_files import is_number

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
DEFAULT_NAME = "curves.png"


@dataclass
class PlotRequest:
    """A run folder and where its curves go (default: RUN/curves.png)."""

    run: Path = field(metadata=reads(FOLDER, "RUN"))
    out: Path | None = field(default=None, metadata={
        **when_empty(f"give a .png, .pdf or .svg file, or leave it out for RUN/{DEFAULT_NAME}"),
        "shown": f"RUN/{DEFAULT_NAME}"})

    def __post_init__(self) -> None:
        check_fields(self)
        check_reads(self)  # RUN exists and is a folder (`input_paths`)
        self.run = Path(self.run)
        if self.out is not None:
            self.out = Path(self.out)

    @property
    def metrics(self) -> Path:
        return self.run / "metrics.jsonl"

    @property
    def target(self) -> Path:
        return self.out if self.out is not None else self.run / DEFAULT_NAME

    def check(self) -> None:
        """The run (a folder, checked at construction) has metrics, and the picture can be written (not
        over the metrics)."""
        from ..output_targets import check_out_file

        if not self.metrics.is_file():
            raise NamiError(f"{self.run} has no metrics.jsonl (not a training run, or none of its steps logged yet)")
        check_out_file(self.target, PLOT_SUFFIXES, "plot", {"metrics": self.metrics})


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl, each checked for what the plot reads."""
    from ..user_files import read_jsonl

    records = read_jsonl(path, "metrics file")
    if not records:
        raise NamiError(f"{path} holds no record yet")
    needed = ("step", "loss", "loss_stage", "lr", "stage_ratios", "images_per_s")
    for n, record in enumerate(records, start=1):
        missing = [key for key in needed if key not in record]
        if missing:
            raise NamiError(f"{path}:{n} lacks {', '.join(missing)} (not a `nami train` metrics record)")
        step = record["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise NamiError(f"{path}:{n}: step must be a whole number, got {step!r}")
        wrong = [key for key in NUMBERS if not number_or_none(record[key])] + [
            key for key in PER_STAGE if not isinstance(record[key], list) or not all(map(number_or_none, record[key]))
            or len(record[key]) != len(records[0][key])]
        if wrong:
            shape = "a number" if wrong[0] in NUMBERS else f"a list of {len(records[0][wrong[0]])} numbers (one per stage)"
            raise NamiError(f"{path}:{n}: {wrong[0]} must be {shape}, got {record[wrong[0]]!r}")
    return records


NUMBERS = ("loss", "lr", "images_per_s")  # what a metrics record holds (a step that skipped one: null)
PER_STAGE = ("loss_stage", "stage_ratios")


def number_or_none(value) -> bool:
    return value is None or is_number(value)


def stage_names(run: Path, count: int) -> list[str]:
    """"stage k (R px)" from the run's train_config.json, "stage k" without it."""
    try:
        stages = json.loads((run / "train_config.json").read_text())["train"]["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        stages = None
    if isinstance(stages, list) and len(stages) == count:
        return [f"stage {k + 1} ({side} px)" for k, side in enumerate(stages)]
    return [f"stage {k + 1}" for k in range(count)]


def plot_run(req: PlotRequest) -> Path:
    """Write the curves of `req.run` to `req.target`; returns the path."""
    from ..files import write_atomic

    req.check()
    records = read_metrics(req.metrics)
    fig = draw_curves(records, stage_names(req.run, len(records[-1]["loss_stage"])),
                      f"{req.run.resolve().name}: {len(records)} log steps, last at step {records[-1]['step']}")
    target = req.target
    write_atomic(target, lambda tmp: fig.savefig(tmp, format=target.suffix.lstrip(".").lower()))
    return target


def draw_curves(records: list[dict], names: list[str], title: str):
    """The figure of `records` (module doc): axes loss, learning rate, stage mix, images/s."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    value = lambda v: float("nan") if v is None else v  # noqa: E731 - a stage that drew nothing: a gap
    fig = Figure(figsize=(11.0, 7.5), dpi=110)
    FigureCanvasAgg(fig)
    loss, lr, mix, speed = fig.subplots(2, 2, sharex=True).flat
    loss.plot(steps, [r["loss"] for r in records], color="black", linewidth=2, label="total (weighted)")
    for k, name in enumerate(names):
        loss.plot(steps, [value(r["loss_stage"][k]) for r in records], linewidth=1, label=name)
    loss.set_yscale("log")
    loss.set_title("loss")
    loss.legend(fontsize=8)
    lr.plot(steps, [r["lr"] for r in records], color="tab:purple")
    lr.set_title("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    shares = [[r["stage_ratios"][k] / (sum(r["stage_ratios"]) or 1.0) for r in records] for k in range(len(names))]
    mix.stackplot(steps, shares, labels=names, alpha=0.8)
    mix.set_ylim(0, 1)
    mix.set_title("stage mix (share of samples)")
    mix.legend(fontsize=8, loc="upper left")
    speed.plot(steps, [r["images_per_s"] for r in records], color="tab:green")
    speed.set_ylim(bottom=0)
    speed.set_title("images / s")
    for ax in (mix, speed):
        ax.set_xlabel("optimizer step")
    for ax in (loss, lr, mix, speed):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
