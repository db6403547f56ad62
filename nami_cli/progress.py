"""Rich progress bars for per-stage sampling."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
