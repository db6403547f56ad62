"""`nami train`'s progress: on a terminal a bar from before step 1 (what the set-up is doing, then
step / total, images/s, loss, ETA); off a terminal one plain line per log step that never wraps."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from nami_cli.progress import StepClock, clock_text, train_line
from nami_core.train.config import TrainConfig
from tests.helpers import prepare_train_data, run_cli, train_cli_args

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("progress"))


def test_a_terminal_shows_the_set_up_then_the_bar(data, tmp_path):
    from nami_cli.train import run

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    run(TrainConfig(data=data / "data", out=tmp_path / "run", stages=(16, 32, 64), config_file=data / "model.json",
                    steps=4, batch_size=4, lr=1e-3, log_every=2, save_every=1000), console)
    text = ANSI.sub("", screen.getvalue())
    order = ["importing torch and accelerate", "checking the settings, the data and the memory a step needs",
             "loading the data", "building the model", "step 1: drawing the first batch", "step 4/4"]
    positions = [text.find(phase) for phase in order]
    assert -1 not in positions and positions == sorted(positions), positions
    final = text[text.rfind("step 4/4") - 120:]
    assert re.search(r"training .*step 4/4 +[0-9.]+ img/s +loss [0-9.]+ +ETA 0:00:00", final), final
    assert re.search(r"step +2/4 +loss [0-9.]+ .* ETA ", text)  # the metrics lines above the bar
    assert "done at step 4" in text


def test_off_a_terminal_one_plain_line_per_log_step(data, tmp_path, capsys):
    out = tmp_path / "piped"
    code, _, err = run_cli(train_cli_args(data, out, "--steps", "6", "--save-every", "1000", batch_size=4,
                                          log_every=2), capsys)
    assert code == 0, err
    lines = err.splitlines()
    steps = [line for line in lines if line.startswith("step")]
    assert len(steps) == 3 and all(len(line) > 100 for line in steps)  # longer than a terminal: never wrapped
    assert [line.split()[1] for line in steps] == ["2/6", "4/6", "6/6"]
    assert all(re.search(r" ETA ([0-9]+:[0-9]{2}:[0-9]{2}|\?)$", line) for line in steps)
    assert not any(ANSI.search(line) or "━" in line for line in lines)
    assert lines[-1].startswith("done at step 6")


def test_the_eta_counts_from_the_end_of_the_first_step(monkeypatch):
    """A run started at t=0 whose first step ends at t=60 (set-up and compiling), then 2 s a step:
    the time left is 2 s per step to go, the first minute not counted."""
    times = iter([60.0, 62.0, 64.0, 66.0])
    monkeypatch.setattr("nami_cli.progress.time.perf_counter", lambda: next(times))
    clock = StepClock()
    clock.tick(1)
    assert clock.remaining(10) is None
    for step in (2, 3, 4):
        clock.tick(step)
    assert clock.remaining(10) == pytest.approx(2.0 * 6)
    assert clock_text(3725.4) == "1:02:05" and clock_text(None) == "?"


def test_the_metrics_line():
    record = {"step": 20, "loss": 0.5, "loss_stage": [0.25, None, 0.75], "lr": 1e-4, "images_per_s": 12.34,
              "tokens_per_s": 567.8, "nan_skipped": 0}
    assert train_line(record, 100, 61.0) == ("step      20/100  loss 0.5000  stages [0.2500 - 0.7500]  lr 1.00e-04  "
                                             "12.3 img/s  568 tok/s  ETA 0:01:01")
