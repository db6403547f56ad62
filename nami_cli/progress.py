"""Progress on stderr: bars per stage for sampling (`StageProgress`), and `nami train`'s
(`TrainProgress`): on a terminal one bar from before step 1 on (what the set-up is doing, then
step / total, images/s, loss, ETA) with the metrics lines above it; off a terminal (a pipe, a log
file) no bar, one plain line per log step that never wraps."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .output import log
from .output import stderr as console


class StageProgress:
    """One bar per stage window; `step(stage, i)` advances the stage's bar."""

    def __init__(self, label: str = "stage") -> None:
        self.label = label
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: list[int] = []
        self.started = False

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.progress.stop()

    def plan(self, steps: list[int], repeats: int = 1) -> None:
        """Start the bars once the plan is known (nothing is drawn if loading fails)."""
        self.progress.start()
        self.started = True
        for k, n in enumerate(steps):
            name = f"{self.label} {k + 1}/{len(steps)}" if len(steps) > 1 else "sampling"
            self.tasks.append(self.progress.add_task(name, total=n * repeats))

    def step(self, stage: int, i: int) -> None:
        if stage < len(self.tasks):
            self.progress.advance(self.tasks[stage])


def clock_text(seconds: float | None) -> str:
    """h:mm:ss, or "?" when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class StepClock:
    """The time left of a run from this session's pace, measured from the end of its first step
    (which pays the set-up, the first batch and any compiling)."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def tick(self, step: int) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start = (now, step)
        self.last = (now, step)

    def remaining(self, total: int) -> float | None:
        """Seconds until step `total`; None before two steps are done."""
        if self.start is None or self.last is None or self.last[1] == self.start[1]:
            return None
        (t0, s0), (t1, s1) = self.start, self.last
        return (t1 - t0) / (s1 - s0) * (total - s1)


def train_line(record: dict, total: int, eta: float | None) -> str:
    """The metrics line of a log step."""
    stages = " ".join("-" if v is None else f"{v:.4f}" for v in record["loss_stage"])
    return (f"step {record['step']:>7}/{total}  loss {record['loss']:.4f}  stages [{stages}]  lr {record['lr']:.2e}  "
            f"{record['images_per_s']:.1f} img/s  {record['tokens_per_s']:.0f} tok/s  ETA {clock_text(eta)}"
            + (f"  nan-skipped {record['nan_skipped']}" if record["nan_skipped"] else ""))


class TrainProgress:
    """`nami train`'s display (module doc). `phase(text)` before the first step, `step(step,
    total)` after each, `record(r)` for each metrics record."""

    def __init__(self, total: int, out: Console | None = None) -> None:
        self.total = total
        self.console = out or console
        self.live = self.console.is_terminal
        self.clock = StepClock()
        self.loss: float | None = None
        self.images_per_s: float | None = None
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[status]}"),
                                 console=self.console, transient=False) if self.live else None
        self.task = None

    def __enter__(self) -> "TrainProgress":
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("setting up", total=None, counts="", status="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def phase(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)
            self.progress.refresh()  # shown now, however short the phase

    def step(self, step: int, total: int) -> None:
        first = self.clock.start is None
        self.clock.tick(step)
        if self.progress is None:
            return
        if first:
            self.progress.reset(self.task, total=total, completed=step, description="training")
        status = [f"{self.images_per_s:.1f} img/s" if self.images_per_s is not None else "",
                  f"loss {self.loss:.4f}" if self.loss is not None else "",
                  f"ETA {clock_text(self.clock.remaining(total))}"]
        self.progress.update(self.task, completed=step, counts=f"step {step}/{total}",
                             status="  ".join(part for part in status if part))

    def record(self, record: dict) -> None:
        self.loss, self.images_per_s = record["loss"], record["images_per_s"]
        log(train_line(record, self.total, self.clock.remaining(self.total)), self.console)
