"""The stage plan: what each mode runs, window by window (docs/method.md §3, §6).

Conventions (docs/method.md §1): sigma = 1 is pure noise, sigma = 0 is data. Stages run low to
high resolution. Inside window k a *local ratio* r runs from 1 (window start) to 0
(window end); the state is `r * start_k + (1 - r) * end_k` and the transformer is
conditioned on `tau = tau_end_k + r * (tau_start_k - tau_end_k)` (in [0, 1]; the
model multiplies by 1000 inside, FLUX style).

`FlowPlan` is the one place that applies what a mode means (`config.MODE_RULES`, the rule table,
lives in the lowest layer so every option and check can list the modes from it):

* ``nami``: K windows, stage k runs the block prefix `stage_ends[k]` at resolution k.
* ``flow-only``: the same K windows, every stage runs all blocks.
* ``flux-base``: one window over sigma 1 -> 0 at the full resolution, all blocks, with
  FLUX's resolution-dependent time shift applied to the local ratio.

Everything else (the sampler, training, `nami info`, the benchmarks) asks a plan: its windows,
their block prefixes and resolutions, how per-stage steps, guidance and stage mixes map onto its
windows. The Euler grid inside a window belongs to `NamiFlowScheduler`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config import MODE_RULES, FlowConfig, check_mode, parse_int_list, split_guidance, split_steps
from ..errors import ConfigError

PUBLIC_GRID_POINTS = 1000


def runnable_modes(stage_ends: Sequence[int], flow: FlowConfig) -> tuple[str, ...]:
    """The modes a model with `stage_ends` can run on `flow`: nested blocks need one stage module
    per stage."""
    return tuple(m for m, rule in MODE_RULES.items() if not rule.nested_blocks or len(stage_ends) == flow.num_stages)


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
    """Window starts: `S_1 = 1`, later ones from the previous window's end (docs/method.md §3)."""
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
    """Renoise jump out of a window ending at sigma `end` (docs/method.md §5).

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
class PublicWindows:
    """The public NAMI-T2I scheduler's windows, read off its 1000-point integer grid (docs/method.md §7).

    The scheduler keeps `sigmas = [1000, 999, ..., 1] / 1000` (float32) and takes the window
    edges as grid indices `int(edge * 1000)`, so 1:1:1 windows end at 0.667 and 0.334 (not 2/3
    and 1/3). Starts are corrected with gamma, and the arc lengths split the float32 timestep
    grid `sigmas * 1000` into timestep windows `(t_max, t_min)` (x1000 units): (1000, 744),
    (744, 386), (386, 1) for 1:1:1. The Euler grid inside them is `NamiFlowScheduler`'s.
    """

    starts: tuple[float, ...]
    ends: tuple[float, ...]
    raw_starts: tuple[float, ...]
    timestep_max: tuple[float, ...]  # x1000 units, float32 values
    timestep_min: tuple[float, ...]  # x1000 units, float32 values

    @classmethod
    def build(cls, ratios: Sequence[float], gamma: float) -> "PublicWindows":
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


def size_multiple(num_stages: int, pixels_per_token: int) -> int:
    """What every side of the final image must be a multiple of, in pixels: the lowest stage is
    2^(K-1) times smaller and must still hold whole tokens of `pixels_per_token` (patch x codec
    downsampling) pixels."""
    return int(pixels_per_token) * 2 ** (num_stages - 1)


def fit_size(flow: FlowConfig, height: int, width: int, pixels_per_token: int) -> FlowConfig:
    """`flow` with its last stage at `height` x `width` pixels and every stage at that aspect ratio
    (each half the next). Raises `ConfigError`, one line naming the rule, when a side does not
    halve into whole tokens in every stage."""
    K = flow.num_stages
    step = size_multiple(K, pixels_per_token)
    for name, side in (("width", width), ("height", height)):
        if side < step or side % step:
            below, above = max(step, side // step * step), (side // step + 1) * step
            nearest = f"{below}" if side < step else f"{below} or {above}"
            raise ConfigError(
                f"image size {width}x{height}: {name} {side} is not a multiple of {step}; with {K} stage{'s' * (K != 1)} "
                f"every side must be a multiple of {pixels_per_token} pixels per token x 2^{K - 1}, so each "
                f"stage's sides are whole tokens (nearest: {nearest})"
            )
    return flow.ending_at_size(height, width)


def sampling_plan(flow: FlowConfig, stage_ends: Sequence[int], pixels_per_token: int, mode: str,
                  resolution: int | None = None, height: int | None = None, width: int | None = None) -> "FlowPlan":
    """The `FlowPlan` a model samples with: `mode` on its `flow` with the last stage at `resolution`
    (square) or `height` x `width` pixels (either defaults to the flow's side)."""
    if height is not None or width is not None:
        if resolution is not None:
            raise ConfigError("give a resolution or a height and width, not both")
        final = flow.resolutions[-1]
        height, width = (final if side is None else side for side in (height, width))
        flow = fit_size(flow, height, width, pixels_per_token)
    elif resolution is not None:
        flow = fit_size(flow, resolution, resolution, pixels_per_token)
    return FlowPlan(mode, flow, stage_ends, pixels_per_token)


@dataclass(frozen=True)
class StageWindow:
    """One stage of a sampling/training plan.

    `level` indexes the flow's resolutions (0 = lowest); `resolution` is the window's side in
    pixels (its height when `width` is set: a non-square flow); `blocks` is the block prefix run;
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
    width: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.resolution, self.width or self.resolution

    def tokens(self, pixels_per_token: int) -> int:
        """Image tokens of one sample in this window."""
        height, width = self.size
        return (height // pixels_per_token) * (width // pixels_per_token)

    def warp(self, t: np.ndarray) -> np.ndarray:
        """Map uniform local time in [0, 1] to the local ratio r (FLUX shift for flux-base)."""
        t = np.asarray(t, dtype=np.float64)
        return t if self.shift_mu is None else time_shift(self.shift_mu, t)

    def tau(self, r):
        """Model timestep for local ratio r (float, array or tensor)."""
        return self.tau_end + r * (self.tau_start - self.tau_end)


class FlowPlan:
    """The stage windows a mode runs, with jump coefficients between consecutive windows.

    Raises `ConfigError` when the mode cannot run: an unknown mode, a nested mode whose model has
    not one stage module per stage, or a window resolution that is not a whole number of tokens.
    """

    def __init__(
        self,
        mode: str,
        flow: FlowConfig,
        stage_ends: Sequence[int],
        pixels_per_token: int,
    ) -> None:
        self.mode = check_mode(mode)
        self.rule = MODE_RULES[mode]
        self.flow = flow
        self.gamma = float(flow.gamma)
        self.pixels_per_token = int(pixels_per_token)
        depth = int(stage_ends[-1])
        K = flow.num_stages
        for name, side in zip(("height", "width") if flow.widths else ("resolution",), flow.sizes[0]):
            if side % self.pixels_per_token:  # the stages double, so the lowest decides
                raise ConfigError(
                    f"stage {name} {side} is not a multiple of the codec's {self.pixels_per_token} pixels per "
                    f"token; use a final {name} that is a multiple of {size_multiple(K, self.pixels_per_token)}"
                )
        if self.rule.nested_blocks and len(stage_ends) != K:
            raise ConfigError(
                f"the model has {len(stage_ends)} stage modules but the flow has {K} stages "
                f"({', '.join(map(str, flow.resolutions))})"
            )
        public = flow.grid == "public" and not self.rule.single_window
        self.public = PublicWindows.build(flow.window_ratios, self.gamma) if public else None
        if self.rule.single_window:
            height, width = flow.sizes[-1]
            tokens = (height // self.pixels_per_token) * (width // self.pixels_per_token)
            self.windows = [StageWindow(0, K - 1, height, depth, 1.0, 0.0, 1.0, 0.0, flux_shift_mu(tokens),
                                        width if flow.widths else None)]
            self.jumps: list[tuple[float, float]] = []
        else:
            self.windows = self._stage_windows(stage_ends, depth)
            self.jumps = [jump_coefficients(w.sigma_end, self.gamma) for w in self.windows[:-1]]

    def _stage_windows(self, stage_ends: Sequence[int], depth: int) -> list[StageWindow]:
        flow = self.flow
        if self.public is not None:
            starts, ends = list(self.public.starts), list(self.public.ends)
            taus = [(tmax / 1000.0, tmin / 1000.0)
                    for tmax, tmin in zip(self.public.timestep_max, self.public.timestep_min)]
        else:
            ends = window_ends(flow.window_ratios)
            starts = window_starts(ends, self.gamma)
            taus = tau_windows(starts, ends)
        return [
            StageWindow(
                index=k,
                level=k,
                resolution=flow.resolutions[k],
                blocks=int(stage_ends[k]) if self.rule.nested_blocks else depth,
                sigma_start=starts[k],
                sigma_end=ends[k],
                tau_start=taus[k][0],
                tau_end=taus[k][1],
                width=flow.widths[k] if flow.widths else None,
            )
            for k in range(flow.num_stages)
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def __iter__(self):
        return iter(self.windows)

    def __getitem__(self, k: int) -> StageWindow:
        return self.windows[k]

    def stage_steps(self, steps, name: str = "steps") -> tuple[int, ...]:
        """Per-window step counts from one total or one count per stage ("10,10,10"). A single
        window takes the total of the given counts; errors name `name`."""
        if self.rule.single_window:
            counts = parse_int_list(steps, name) if not isinstance(steps, int) else (steps,)
            return split_steps(sum(counts), 1, name)
        return split_steps(steps, len(self.windows), name)

    def stage_guidance(self, cfg, name: str = "cfg") -> tuple[float, ...]:
        """Per-window guidance scales from one scale or one per window ("8,3,3"); errors name `name`."""
        return split_guidance(cfg, len(self.windows), name)

    def stage_mix(self, weights: Sequence[float]) -> tuple[float, ...]:
        """Per-window sampling weights from a mix over the flow's stages (low to high resolution);
        a single window takes every sample."""
        if self.rule.single_window:
            return (1.0,)
        if len(weights) != len(self.windows):
            raise ConfigError(f"the stage mix has {len(weights)} weights for {len(self.windows)} stages")
        return tuple(float(w) for w in weights)
