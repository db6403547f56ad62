"""Training metrics: per-stage loss, loss by tau bins, throughput; to metrics.jsonl, TensorBoard and the console."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..files import write_text_atomic

TAU_BINS = 10


class MetricsWindow:
    """Accumulates the steps between two log lines."""

    def __init__(self, num_stages: int) -> None:
        self.num_stages = num_stages
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.steps = 0
        self.loss_sum = 0.0
        self.stage_sum = [0.0] * self.num_stages
        self.stage_n = [0] * self.num_stages
        self.tau_sum = [0.0] * TAU_BINS
        self.tau_n = [0] * TAU_BINS
        self.images = 0
        self.tokens = 0

    def add(self, loss: float, per_stage: dict[int, tuple[float, int]], taus, losses, images: int, tokens: int) -> None:
        self.steps += 1
        self.loss_sum += loss
        for k, (total, n) in per_stage.items():
            self.stage_sum[k] += total
            self.stage_n[k] += n
        for tau, value in zip(taus, losses):
            b = min(int(tau * TAU_BINS), TAU_BINS - 1)
            self.tau_sum[b] += value
            self.tau_n[b] += 1
        self.images += images
        self.tokens += tokens

    def summary(self, step: int, lr: float, weights, ratios, nan_skipped: int, world: int) -> dict:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        mean = lambda s, n: (s / n) if n else None  # noqa: E731
        return {
            "step": step,
            "lr": lr,
            "loss": self.loss_sum / max(self.steps, 1),
            "loss_stage": [mean(s, n) for s, n in zip(self.stage_sum, self.stage_n)],
            "samples_stage": list(self.stage_n),
            "loss_tau_bins": [mean(s, n) for s, n in zip(self.tau_sum, self.tau_n)],
            "stage_weights": list(weights),
            "stage_ratios": list(ratios),
            "images_per_s": self.images * world / dt,
            "tokens_per_s": self.tokens * world / dt,
            "seconds_per_step": dt / max(self.steps, 1),
            "nan_skipped": nan_skipped,
        }


class MetricsLog:
    """Appends one JSON object per log step to RUN/metrics.jsonl (and TensorBoard when installed)."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run / "metrics.jsonl"
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run / "tensorboard"))
            except Exception:  # noqa: BLE001  (tensorboard is optional)
                self.writer = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            self.writer.add_scalar("loss", record["loss"], step)
            self.writer.add_scalar("lr", record["lr"], step)
            self.writer.add_scalar("images_per_s", record["images_per_s"], step)
            for k, v in enumerate(record["loss_stage"]):
                if v is not None:
                    self.writer.add_scalar(f"loss_stage/{k + 1}", v, step)
            for b, v in enumerate(record["loss_tau_bins"]):
                if v is not None:
                    self.writer.add_scalar(f"loss_tau/{b / TAU_BINS:.1f}", v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log has no duplicated steps."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
