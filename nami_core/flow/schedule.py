"""Piecewise flow: windows, timestep windows, jump coefficients and per-mode stage plans.

Conventions (SPEC §1): sigma = 1 is pure noise, sigma = 0 is data. Stages run low to
high resolution. Inside window k a *local ratio* r runs from 1 (window start) to 0
(window end); the state is `r * start_k + (1 - r) * end_k` and the transformer is
conditioned on `tau = tau_end_k + r * (tau_start_k - tau_end_k)` (in [0, 1]; the
model multiplies by 1000 inside, FLUX style).

The three modes share this one description:

* ``nami``: K windows, stage k runs the block prefix `stage_ends[k]` at resolution k.
* ``flow-only``: the same K windows, every stage runs all blocks.
* ``flux-base``: one window over sigma 1 -> 0 at the full resolution, all blocks, with
  FLUX's resolution-dependent time shift applied to the local ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import FlowConfig, check_mode, split_guidance, split_steps
from ..errors import ConfigError

PUBLIC_GRID_POINTS = 1000


def window_ends(ratios: Sequence[float]) -> list[float]:
    """Raw window ends `E_k = 1 - (w_1 + ... + w_k) / sum(w)`; the last is exactly 0."""
    total = float(sum(ratios))
    ends, acc = [], 0.0
    for w in ratios:
        acc += float(w)
        ends.append(1.0 - acc / total)
    ends[-1] = 0.0
    return ends


def corrected_start(previous_end: float, gamma: float) -> float:
    """Window start after a jump: `S = 1 - o / (sqrt(1 + 1/gamma) * (1 - o) + o)`, `o = 1 - E_prev`."""
    o = 1.0 - previous_end
    return 1.0 - o / (math.sqrt(1.0 + 1.0 / gamma) * (1.0 - o) + o)


def window_starts(ends: Sequence[float], gamma: float) -> list[float]:
    """Window starts: `S_1 = 1`, later ones from the previous window's end (SPEC §3)."""
    return [1.0] + [corrected_start(e, gamma) for e in ends[:-1]]


def tau_windows(starts: Sequence[float], ends: Sequence[float]) -> list[tuple[float, float]]:
    """Model timestep windows by arc length `d_k = S_k - E_k`, from 1 down to 0."""
    lengths = [s - e for s, e in zip(starts, ends)]
    total = sum(lengths)
    windows, acc = [], 0.0
    for d in lengths:
        start = 1.0 - acc / total
        acc += d
        windows.append((start, 1.0 - acc / total))
    windows[-1] = (windows[-1][0], 0.0)
    return windows


def jump_coefficients(end: float, gamma: float) -> tuple[float, float]:
    """Renoise jump out of a window ending at sigma `end` (SPEC §5).

    `alpha = 1 / (sqrt(1 + 1/gamma) * E + 1 - E)`, `beta = alpha * E / sqrt(gamma)`.
    """
    alpha = 1.0 / (math.sqrt(1.0 + 1.0 / gamma) * end + 1.0 - end)
    return alpha, alpha * end / math.sqrt(gamma)


def flux_shift_mu(
    image_tokens: int,
    base_tokens: int = 256,
    max_tokens: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution shift: mu grows linearly with the image token count."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return image_tokens * slope + base_shift - slope * base_tokens


def time_shift(mu: float, t: np.ndarray) -> np.ndarray:
    """FLUX time shift `exp(mu) / (exp(mu) + (1/t - 1))`, fixing t = 0 and t = 1."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    inside = t > 0
    out[inside] = math.exp(mu) / (math.exp(mu) + (1.0 / t[inside] - 1.0))
    return out


@dataclass(frozen=True)
class PublicGrid:
    """The public NAMI-T2I scheduler's windows and Euler grids, read off its integer grid.

    Windows: the scheduler keeps `sigmas = [1000, 999, ..., 1] / 1000` (float32) and takes
    the window edges as grid indices `int(edge * 1000)`, so 1:1:1 windows end at 0.667 and
    0.334 (not 2/3 and 1/3). Starts are corrected with gamma, and the arc lengths split the
    float32 timestep grid `sigmas * 1000` into timestep windows `(t_max, t_min)` (x1000 units):
    (1000, 744), (744, 386), (386, 1) for 1:1:1.

    Grids: within window k the scheduler lays a fine grid of `N = int(t_max - t_min)` intervals
    (float32 difference) and drops its last point, so the fine timesteps run from t_max to
    `t_last = t_min + (t_max - t_min) / N` and the local ratios from 1 to `1 / N`. An n-step
    stage takes `tau = linspace(t_max, t_last, n) / 1000` and `r = [linspace(1, 1/N, n), 0]`:
    last timesteps 745 / 387 / 2 and last ratios 1/256, 1/358, 1/385 for 1:1:1. Both are the
    window's linear map `tau = tau_end + r (tau_start - tau_end)` at the same ratios.
    """

    starts: tuple[float, ...]
    ends: tuple[float, ...]
    raw_starts: tuple[float, ...]
    timestep_max: tuple[float, ...]  # x1000 units, float32 values
    timestep_min: tuple[float, ...]  # x1000 units, float32 values

    @classmethod
    def build(cls, ratios: Sequence[float], gamma: float) -> "PublicGrid":
        n = PUBLIC_GRID_POINTS
        grid = np.linspace(1, n, n, dtype=np.float32)[::-1].copy()
        sigmas = grid / np.float32(n)  # float32, [1.0, 0.999, ..., 0.001]
        timesteps = sigmas * np.float32(n)
        total = float(sum(ratios))
        edges = [0.0]
        acc = 0.0
        for w in ratios:
            acc += float(w)
            edges.append(acc / total)
        edges[-1] = 1.0
        starts, ends, raw_starts, distances = [], [], [], []
        for k in range(len(ratios)):
            i0 = max(int(edges[k] * n), 0)
            i1 = min(int(edges[k + 1] * n), n)
            start = float(sigmas[i0])
            end = float(sigmas[i1]) if i1 < n else 0.0
            raw_starts.append(start)
            if k > 0:
                start = corrected_start(start, gamma)
            starts.append(start)
            ends.append(end)
            distances.append(start - end)
        total_d = sum(distances)
        t_max, t_min = [], []
        acc = 0.0
        for k, d in enumerate(distances):
            r0 = acc / total_d if k > 0 else 0.0
            acc += d
            r1 = acc / total_d if k < len(distances) - 1 else 1.0
            t_max.append(float(timesteps[int(r0 * n)]))
            t_min.append(float(timesteps[min(int(r1 * n), n - 1)]))
        return cls(tuple(starts), tuple(ends), tuple(raw_starts), tuple(t_max), tuple(t_min))

    def fine_intervals(self, k: int) -> int:
        """N: the number of intervals of window k's fine grid, `int(t_max - t_min)` in float32."""
        span = np.float32(self.timestep_max[k]) - np.float32(self.timestep_min[k])
        intervals = int(span)
        if intervals < 1:
            raise ConfigError(
                f"window {k + 1} spans {float(span):.3f} timesteps, less than one step of the public grid; "
                "use wider window ratios"
            )
        return intervals

    def stage_grid(self, k: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(ratios of length steps+1 from 1 to 0; taus of length steps, in [0, 1])."""
        n = self.fine_intervals(k)
        t_max, t_min = self.timestep_max[k], self.timestep_min[k]
        t_last = t_max + (n - 1) * ((t_min - t_max) / n)  # point n-1 of the fine grid
        last_ratio = 1.0 + (n - 1) * (-1.0 / n)
        ratios = np.append(np.linspace(1.0, last_ratio, steps), 0.0)
        return ratios, np.linspace(t_max, t_last, steps) / 1000.0


def round_timesteps(taus: np.ndarray, rounding: str) -> np.ndarray:
    """Model timesteps in [0, 1] as a pipeline passes them: "none" keeps them, "fp16" rounds the
    x1000 timestep to float16 and divides it by 1000 in float16 (the release's float16 pipeline)."""
    if rounding == "none":
        return taus
    import torch

    scaled = torch.as_tensor(np.asarray(taus, dtype=np.float64) * 1000.0).to(torch.float16)
    return (scaled / 1000).double().numpy()


@dataclass(frozen=True)
class StageWindow:
    """One stage of a sampling/training plan.

    `level` indexes the flow's resolutions (0 = lowest); `blocks` is the block prefix run;
    sigma_* are the window's noise levels at r = 1 and r = 0; tau_* the timestep window.
    """

    index: int
    level: int
    resolution: int
    blocks: int
    sigma_start: float
    sigma_end: float
    tau_start: float
    tau_end: float
    shift_mu: float | None = None

    def warp(self, t: np.ndarray) -> np.ndarray:
        """Map uniform local time in [0, 1] to the local ratio r (FLUX shift for flux-base)."""
        t = np.asarray(t, dtype=np.float64)
        return t if self.shift_mu is None else time_shift(self.shift_mu, t)

    def tau(self, r):
        """Model timestep for local ratio r (float, array or tensor)."""
        return self.tau_end + r * (self.tau_start - self.tau_end)


class FlowPlan:
    """The stage windows a mode runs, with jump coefficients between consecutive windows."""

    def __init__(
        self,
        mode: str,
        flow: FlowConfig,
        stage_ends: Sequence[int],
        pixels_per_token: int,
    ) -> None:
        self.mode = check_mode(mode)
        self.flow = flow
        self.gamma = float(flow.gamma)
        self.pixels_per_token = int(pixels_per_token)
        depth = int(stage_ends[-1])
        K = flow.num_stages
        if mode == "nami" and len(stage_ends) != K:
            raise ConfigError(
                f"the model has {len(stage_ends)} stage modules but the flow has {K} stages "
                f"({', '.join(map(str, flow.resolutions))})"
            )
        self.public = PublicGrid.build(flow.window_ratios, self.gamma) if flow.grid == "public" else None
        if mode == "flux-base":
            res = flow.resolutions[-1]
            tokens = (res // self.pixels_per_token) ** 2
            self.windows = [StageWindow(0, K - 1, res, depth, 1.0, 0.0, 1.0, 0.0, flux_shift_mu(tokens))]
            self.jumps: list[tuple[float, float]] = []
            return
        if self.public is not None:
            starts, ends = list(self.public.starts), list(self.public.ends)
            taus = [
                (tmax / 1000.0, tmin / 1000.0)
                for tmax, tmin in zip(self.public.timestep_max, self.public.timestep_min)
            ]
        else:
            ends = window_ends(flow.window_ratios)
            starts = window_starts(ends, self.gamma)
            taus = tau_windows(starts, ends)
        self.windows = [
            StageWindow(
                index=k,
                level=k,
                resolution=flow.resolutions[k],
                blocks=int(stage_ends[k]) if mode == "nami" else depth,
                sigma_start=starts[k],
                sigma_end=ends[k],
                tau_start=taus[k][0],
                tau_end=taus[k][1],
            )
            for k in range(K)
        ]
        self.jumps = [jump_coefficients(ends[k], self.gamma) for k in range(K - 1)]

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self):
        return iter(self.windows)

    def __getitem__(self, k: int) -> StageWindow:
        return self.windows[k]

    def stage_steps(self, steps) -> tuple[int, ...]:
        """Per-window step counts. flux-base takes the total of the given counts."""
        if self.mode == "flux-base":
            if isinstance(steps, str):
                from ..config import parse_int_list

                steps = parse_int_list(steps, "steps")
            total = steps if isinstance(steps, int) else sum(int(s) for s in steps)
            return split_steps(int(total), 1)
        return split_steps(steps, len(self.windows))

    def stage_guidance(self, cfg) -> tuple[float, ...]:
        """Per-window guidance scales from one scale or one per window ("8,3,3")."""
        return split_guidance(cfg, len(self.windows))

    def stage_grid(self, k: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Euler grid of window k: (ratios, length steps+1, from 1 to 0; taus, length steps),
        taus rounded as the flow's `timestep_rounding` says."""
        if steps <= 0:
            raise ConfigError(f"steps must be positive, got {steps}")
        if self.public is not None and self.mode != "flux-base":
            ratios, taus = self.public.stage_grid(k, steps)
        else:
            window = self.windows[k]
            ratios = window.warp(np.linspace(1.0, 0.0, steps + 1))
            taus = window.tau(ratios[:-1])
        return ratios, round_timesteps(taus, self.flow.timestep_rounding)

    def latent_sides(self, full_side: int) -> list[int]:
        """Latent grid side per window given the full-resolution latent side."""
        K = self.flow.num_stages
        return [full_side // 2 ** (K - 1 - w.level) for w in self.windows]
