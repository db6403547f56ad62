"""Training metrics: per-stage loss, loss by tau bins, throughput; to metrics.jsonl (the record),
the trackers of `--report-to` (TensorBoard, wandb, through accelerate) and the console."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from ..files import write_text_atomic

TAU_BINS = 10


class MetricsWindow:
    """Accumulates the steps between two log lines on the device; `summary` reads them back, the one
    host sync of a log step. Losses of a skipped (non-finite) step are not counted."""

    def __init__(self, num_stages: int, device=None) -> None:
        self.num_stages = num_stages
        self.device = torch.device(device or "cpu")
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.steps = 0
        self.images = 0
        self.tokens = 0
        zeros = lambda n: torch.zeros(n, dtype=torch.float64, device=self.device)  # noqa: E731
        self.taken = zeros(())
        self.loss_sum = zeros(())
        self.stage_sum, self.stage_n = zeros(self.num_stages), zeros(self.num_stages)
        self.tau_sum, self.tau_n = zeros(TAU_BINS), zeros(TAU_BINS)

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent outside training (drawing validation images) out of the throughput."""
        self.t0 += seconds

    def add(self, loss: torch.Tensor, sums: torch.Tensor, taus: torch.Tensor, losses: torch.Tensor,
            taken: torch.Tensor, images: int, tokens: int) -> None:
        """One step: its loss (0-dim), per-window [loss sum, count] pairs (2K,) summed over ranks, every
        sample's tau and loss (n,), and whether it was taken (0-dim, 0 or 1); all on the device."""
        ok = taken > 0
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps += 1
        self.images += images
        self.tokens += tokens
        self.taken += taken.double()
        self.loss_sum += torch.where(ok, loss.detach().double(), zero)
        self.stage_sum += torch.where(ok, sums[0::2], zero)
        self.stage_n += torch.where(ok, sums[1::2], zero)
        bins = (taus.detach().double() * TAU_BINS).long().clamp(0, TAU_BINS - 1)
        self.tau_sum.index_add_(0, bins, torch.where(ok, losses.detach().double(), zero))
        self.tau_n.index_add_(0, bins, torch.where(ok, torch.ones_like(bins, dtype=torch.float64), zero))

    def summary(self, step: int, lr: float, weights, mix, nan_skipped, world: int) -> dict:
        """The metrics record of the window (one read of the device)."""
        packed = torch.cat([self.taken[None], self.loss_sum[None], self.stage_sum, self.stage_n, self.tau_sum,
                            self.tau_n, torch.as_tensor(weights, dtype=torch.float64, device=self.device).reshape(-1),
                            torch.as_tensor(nan_skipped, dtype=torch.float64, device=self.device).reshape(1)])
        values = packed.tolist()
        K, B = self.num_stages, TAU_BINS
        taken, loss_sum = values[0], values[1]
        stage_sum, stage_n = values[2:2 + K], values[2 + K:2 + 2 * K]
        tau_sum, tau_n = values[2 + 2 * K:2 + 2 * K + B], values[2 + 2 * K + B:2 + 2 * K + 2 * B]
        weight_values, skipped = values[2 + 2 * K + 2 * B:-1], values[-1]
        dt = max(time.perf_counter() - self.t0, 1e-9)
        mean = lambda s, n: (s / n) if n else None  # noqa: E731
        return {
            "step": step,
            "lr": lr,
            "loss": loss_sum / max(taken, 1),
            "loss_stage": [mean(s, n) for s, n in zip(stage_sum, stage_n)],
            "samples_stage": [int(n) for n in stage_n],
            "loss_tau_bins": [mean(s, n) for s, n in zip(tau_sum, tau_n)],
            "stage_weights": weight_values,
            "stage_ratios": [float(m) for m in mix],
            "images_per_s": self.images * world / dt,
            "tokens_per_s": self.tokens * world / dt,
            "seconds_per_step": dt / max(self.steps, 1),
            "nan_skipped": int(skipped),
        }


def tracker_values(record: dict) -> dict[str, float]:
    """The scalars of a metrics record as trackers plot them: loss, lr, throughput, and per stage
    (1-based) its loss and its share of the stage mix, per tau bin its loss."""
    values = {name: float(record[name]) for name in ("loss", "lr", "images_per_s", "tokens_per_s", "nan_skipped")}
    for k, v in enumerate(record["loss_stage"]):
        if v is not None:
            values[f"loss_stage/{k + 1}"] = float(v)
    total = sum(record["stage_ratios"]) or 1.0
    for k, share in enumerate(record["stage_ratios"]):
        values[f"stage_mix/{k + 1}"] = share / total
    for b, v in enumerate(record["loss_tau_bins"]):
        if v is not None:
            values[f"loss_tau/{b / TAU_BINS:.1f}"] = float(v)
    return values


def tracker_config(settings: dict) -> dict[str, str | int | float | bool | None]:
    """A run's settings (`TrainConfig.to_json`) as trackers record hyperparameters: lists as text."""
    return {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in settings.items()}


class MetricsLog:
    """Appends one JSON object per log step to RUN/metrics.jsonl and hands its scalars to
    `trackers(values, step)` (accelerate's `Accelerator.log`), when given."""

    def __init__(self, run: Path, enabled: bool, trackers: Callable[[dict, int], None] | None = None) -> None:
        self.enabled = enabled
        self.path = run / "metrics.jsonl"
        self.trackers = trackers

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers(tracker_values(record), record["step"])

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log has no duplicated steps."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
