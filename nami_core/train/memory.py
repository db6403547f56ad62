"""Peak memory per GPU of one `nami train` step, estimated from the model's config alone (no torch).

`nami info --train-memory` prints it; `tests/test_train_memory.py` measures a real step of a tiny
model on the CPU and checks the estimate against it. Sizes are bytes; GiB = 2**30 bytes.

What a step holds. These are the assumptions of the estimate, and so its contract with the
training loop (`train/loop.py`, `train/staged_loss.py`); a change there that breaks one should
change this module too.

* **Weights and optimizer.** Parameters are fp32 (`--dtype bf16|fp16` is autocast over fp32
  weights); gradients are fp32; AdamW keeps two fp32 states; the EMA (on when `--ema-decay > 0`,
  the default) keeps one fp32 copy. That is 4 + 4 + 8 + 4 = 20 bytes per parameter, 16 without
  EMA (`--ema-decay 0`).
  - One process (one GPU, no DDP): the optimizer step frees the gradients (`zero_grad` sets them
    to None), so the forward holds none; backward creates them block by block while it frees
    activations, so at its peak (its start) only those of the output head and the deepest block
    run exist; all of them exist at the optimizer step.
  - DDP (`gpus > 1`): every GPU holds all of it. Gradients stay allocated between steps as DDP's
    persistent buckets (`gradient_as_bucket_view=True`), so they count in every phase, with no
    second copy and no communication buffer to count.
  - FSDP (`--fsdp --gpus N`, full sharding over transformer blocks): parameters, gradients,
    AdamW state and EMA are divided by N. Communication buffers: the unsharded parameters and
    gradients of the largest block, twice (the block being computed and the prefetched next one),
    plus the root unit (embedders, final layer), which stays unsharded through the step. Under
    bf16/fp16 FSDP gathers them in that dtype (accelerate sets FSDP's `MixedPrecision`), so
    there are no autocast weight copies either.
* **Mixed-precision weight copies.** Under DDP with bf16/fp16, autocast casts every weight a
  linear layer uses to 2 bytes and caches the copy until the forward ends; backward keeps the
  copies of the blocks that were not recomputed. 2 bytes per parameter of the deepest block
  prefix the step runs, plus the shared parts.
* **Activations.** Sample i of the step trains one stage window k: the block prefix
  `stage_ends[k]` (mode nami) on N_k image tokens plus T text tokens. Autograd keeps, per token and
  per block, a linear function of the width D (`double_block_bytes`, `single_block_bytes`; the
  lists there name every tensor a diffusers `FluxTransformerBlock` / `FluxSingleTransformerBlock`
  keeps for backward), plus a few bytes per head (norm statistics and the attention's
  logsumexp). Attention keeps its output and logsumexp, never the L x L matrix (SDPA's flash /
  memory-efficient kernels). Autocast keeps most activations in 2 bytes but runs LayerNorm in
  fp32 on CUDA (`AT_FORALL_FP32` in ATen's autocast), and the q and k RMS norms run in fp32 on
  every device (`ragged_attention.qk_rms_norm`: one fused kernel that keeps its fp32 input), so
  a bf16 step keeps about 2/3 of an fp32 one, not half. Around the
  blocks each sample keeps its batch tensors (clean grid, noise, text), the loss's squared error,
  the embedders' inputs and the output head's norm.
* **Checkpointing** (`--grad-checkpointing`), as `staged_loss.CheckpointPolicy` runs it: a
  recomputed block keeps only its input (D values per token); `none` recomputes nothing; `full`
  every block of every window; `last-stage` the blocks of the last stage module (from
  `stage_ends[-2]`) wherever they run; `auto` every block, but only for the samples of the
  full-resolution (last) window. Backward then recomputes one block at a time, for one window's
  samples: that block's activations come back for a moment (`WindowMemory.workspace_bytes`).
* **Stage mix.** Window k gets its share of the B samples, rounded by largest remainder so they
  add up to B (`split_batch`: 1 + 1 + 2 for B = 4 at 1:2:4), as `nami bench train` splits them.
  Without `--stage-mix` the estimate takes the phase of the default schedule (docs/method.md §4)
  with the highest peak. `nami train` draws each sample's window at random, so any split of the B
  samples over the windows the schedule draws can happen (all four at 1024 px in 10.7% of the
  steps at 1:2:4 with B = 4): `worst_draw` is the split that costs the most, and it is what
  `nami train` checks before it starts (`memory_guard`). The estimate is linear in each window's
  samples but for terms that depend only on which windows have samples (autocast copies of the
  deepest prefix) or take a maximum over windows (transients), so that worst split is one of a
  few: for each set of windows with samples, one sample in each but one, which takes the rest.
* **Phases of a step.** Forward end: everything above, all autocast copies and the last block's
  forward temporaries. Backward: the copies of recomputed-only blocks are gone, a backward
  transient comes in (the gradients of one block's activations, or a recomputed block and its
  gradients). Optimizer step: activations are gone (the EMA update works in place). The peak is
  the largest of the three. The transients are measured (see `FORWARD_TRANSIENT`); the rest is
  counted from the code.

Not counted: the CUDA context and kernels' workspaces (cuBLAS, flash-attention), NCCL's own
buffers, allocator fragmentation (plan 5-15% headroom), text encoders (training reads encoded
text), per-sample tensors of size O(D) (modulation vectors) and dataloader pinned memory.

`backend="cpu"` gives what the same step keeps on the CPU, where autocast leaves LayerNorm in the
low precision. The tests measure CPU steps both as they are and with CUDA's LayerNorm put in.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..config import BASELINE_MODE, DTYPE_NAMES, FlowConfig, ModelConfig, check_at_least, check_choice, field_default
from ..errors import ConfigError
from ..flow.plan import FlowPlan, runnable_modes
from ..model.params import block_params, shared_params
from .checkpointing import CHECKPOINTING, CheckpointPolicy
from .config import DTYPES, TrainConfig
from .precision import run_dtype
from .phases import default_ratios, parse_stage_mix, split_batch

BACKENDS = ("cuda", "cpu")
GIB = 2**30


@dataclass(frozen=True)
class Precision:
    """Bytes per value: `act` of autocast's low-precision activations (4 under fp32) and `norm` of
    what LayerNorm computes in (fp32 on CUDA, `act` on the CPU)."""

    act: int
    norm: int

    @classmethod
    def of(cls, dtype: str, backend: str = "cuda") -> "Precision":
        act = 4 if dtype == "fp32" else 2
        return cls(act, 4 if backend == "cuda" else act)

    @property
    def half(self) -> bool:
        return self.act < 4


def _modulated_copies(p: Precision, consumers: int) -> int:
    """Bytes per D of the AdaLN-modulated input kept by the `consumers` linears that read it: one
    tensor when it already has the activation dtype, else one autocast copy per linear."""
    modulated = max(p.norm, p.act)  # norm output (norm bytes) x modulation (act bytes), promoted
    return p.act if modulated == p.act else consumers * p.act


def _qk_norms(p: Precision) -> int:
    """Bytes per D kept by the RMS norms of q and k: the fused kernel keeps its input, cast to
    fp32 (4 + 4), whatever the activations' dtype."""
    return 2 * 4


def double_block_bytes(width: int, heads: int, p: Precision) -> int:
    """Bytes one token (image or text) keeps in a double-stream block (`FluxTransformerBlock`):

    per stream (n = norm bytes, a = activation bytes, D values each unless said):
    norm1 input (n), norm1 output (n), modulated input of to_q/to_k/to_v (`_modulated_copies`),
    q and k before their RMS norms (`_qk_norms`), attention output into to_out / to_add_out (a),
    its projection (a), norm2 input (n), norm2 output (n), modulated MLP input (a), MLP hidden
    before and after GELU (4a + 4a), MLP output (a);
    joint attention: q, k, v and the output (4a);
    per head: rstd of the q and k norms (2 x 4 bytes), logsumexp (4); LayerNorm mean and rstd (16).
    """
    a, n = p.act, p.norm
    per_d = 4 * n + _modulated_copies(p, 3) + _qk_norms(p) + 12 * a + 4 * a
    return per_d * width + 12 * heads + 16


def single_block_bytes(width: int, heads: int, p: Precision) -> int:
    """Bytes one token keeps in a single-stream block (`FluxSingleTransformerBlock`):

    norm input (n), norm output (n), modulated input of proj_mlp/to_q/to_k/to_v
    (`_modulated_copies`), MLP hidden before GELU (4a), q and k before their norms (`_qk_norms`),
    attention q, k, v and output (4a), [attention, MLP] into proj_out (5a), proj_out's output
    (a); per head 12 bytes, LayerNorm statistics 8.
    """
    a, n = p.act, p.norm
    per_d = 2 * n + _modulated_copies(p, 4) + 4 * a + _qk_norms(p) + 4 * a + 5 * a + a
    return per_d * width + 12 * heads + 8


def head_bytes(width: int, p: Precision) -> int:
    """Per image token around the blocks' end: the final AdaLN norm's input and output and
    proj_out's input."""
    return (2 * p.norm + p.act) * width


def image_io_bytes(in_channels: int, p: Precision) -> int:
    """Per image token and channel: the fp32 clean grid and noise of the batch and the loss's
    squared difference (3 x 4 bytes), and x_embedder's input (x_r, packed, in the activation
    dtype). x_r and the target themselves are gone once the losses are computed."""
    return (12 + p.act) * in_channels


def text_io_bytes(text_dim: int, p: Precision) -> int:
    """Per text token: the encoded text (fp32) and, under autocast, context_embedder's copy of it."""
    return (4 + (p.act if p.half else 0)) * text_dim


def batch_bytes(in_channels: int, text_dim: int, tokens: int, text_tokens: int) -> int:
    """Per sample, the batch itself (fp32 clean grid and noise, encoded text), alive all step."""
    return 8 * in_channels * tokens + 4 * text_dim * text_tokens


# Transients, in bytes per D per token of the window going through a block: what a block's
# forward holds besides what it keeps (in a bf16 single block the fp32 [attention, MLP]
# concatenation, 20, and the fp32 attention output, 4, among others; in a recomputed block
# everything it would keep, briefly); the gradients alive at once while backward goes through a
# block; and what comes on top of the recomputed activations while backward goes through a
# recomputed block. Measured on the tiny preset (tests/test_train_memory.py): 22 / 45
# (fp32 / half), 50 / 57-63 recomputed, 16, and 10 / 31; the other shapes there check them.
FORWARD_TRANSIENT = {4: 24, 2: 48}
FORWARD_TRANSIENT_RECOMPUTED = {4: 52, 2: 60}
BACKWARD_TRANSIENT = 16
RECOMPUTE_TRANSIENT = {4: 10, 2: 32}


@dataclass(frozen=True)
class WindowShape:
    """One stage window as a training step runs it: its resolution, image tokens and block prefix."""

    resolution: int
    tokens: int
    blocks: int


@dataclass
class WindowMemory:
    """One window's share of a step: its samples, the blocks they recompute, what they keep
    through the step (`activation_bytes`) and backward's transient while it goes through their
    blocks (`workspace_bytes`). `window` is the plan's 0-based index."""

    window: int
    resolution: int
    tokens: int
    blocks: int
    samples: int
    recomputed_blocks: int
    activation_bytes: int
    workspace_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainMemory:
    """The estimate: bytes per GPU by kind, per window, and the peak of each phase of a step."""

    parameters: int
    gradients: int
    adamw: int
    ema: int
    communication: int
    autocast_weights: int
    windows: list[WindowMemory]
    phases: dict[str, int]

    @property
    def activations(self) -> int:
        return sum(w.activation_bytes for w in self.windows)

    @property
    def fixed(self) -> int:
        """Parameters, gradients, AdamW state and EMA."""
        return self.parameters + self.gradients + self.adamw + self.ema

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": {
                "parameters": self.parameters,
                "gradients": self.gradients,
                "adamw": self.adamw,
                "ema": self.ema,
                "communication": self.communication,
                "autocast_weights": self.autocast_weights,
                "activations": self.activations,
                "fixed": self.fixed,
            },
            "windows": [w.to_dict() for w in self.windows],
            "phases": dict(self.phases),
            "peak_bytes": self.peak,
            "peak_phase": self.peak_phase,
            "peak_gib": self.peak / GIB,
        }


def window_samples(batch_size: int, mix: Sequence[float]) -> list[int]:
    """Samples per window: the mix's shares of `batch_size`, rounded by largest remainder (they add up to it)."""
    total = float(sum(mix))
    if total <= 0 or any(w < 0 for w in mix):
        raise ConfigError(f"the stage mix must be non-negative with a positive sum, got {':'.join(f'{w:g}' for w in mix)}")
    return split_batch(batch_size, mix)


def candidate_draws(batch_size: int, windows: Sequence[int], num_windows: int) -> list[list[int]]:
    """The splits of `batch_size` samples over `windows` (indices of `num_windows`) among which the
    costliest random draw is (module doc: for each set of windows that get samples, one in each but
    one, which takes the rest)."""
    draws = []
    for size in range(1, min(len(windows), batch_size) + 1):
        for chosen in itertools.combinations(windows, size):
            for heavy in chosen:
                samples = [0] * num_windows
                for k in chosen:
                    samples[k] = 1
                samples[heavy] += batch_size - size
                draws.append(samples)
    return draws


def worst_draw(model: ModelConfig, windows: Sequence[WindowShape], batch_size: int, drawn: Sequence[int],
               **options: Any) -> tuple[list[int], "TrainMemory"]:
    """The split of `batch_size` samples over the windows `drawn` whose step costs the most, and its estimate."""
    best = None
    for samples in candidate_draws(batch_size, list(drawn), len(windows)):
        memory = estimate(model, windows, samples, **options)
        if best is None or memory.peak > best[1].peak:
            best = (samples, memory)
    if best is None:
        raise ConfigError("no stage window is ever drawn")
    return best


def estimate(model: ModelConfig, windows: Sequence[WindowShape], samples: Sequence[int], *, dtype: str = "fp32",
             text_tokens: int = 256, grad_checkpointing: str = "none", fsdp: bool = False, gpus: int = 1,
             ema: bool = True, backend: str = "cuda", trainable: int | None = None) -> TrainMemory:
    """Peak memory per GPU of one training step with `samples[k]` samples in window k (module doc),
    in a run of `gpus` processes (one: gradients are freed between steps; several: DDP's buckets
    keep them, or FSDP shards them).

    `trainable`: the number of parameters that train (a LoRA adapter's, `nami train --lora`); the
    rest are frozen, stored in the run's dtype (2 bytes under bf16/fp16, so autocast makes no
    copies of them) with no gradient, AdamW state or EMA. Activations are counted as for full
    training: backward still runs through every block (an upper bound)."""
    check_choice("--dtype", dtype, DTYPE_NAMES)
    check_choice("backend", backend, BACKENDS)
    check_at_least("--gpus", gpus, 1)
    if text_tokens < 0:
        raise ConfigError(f"text tokens must not be negative, got {text_tokens}")
    if len(samples) != len(windows):
        raise ConfigError(f"{len(samples)} sample counts for {len(windows)} windows")
    p = Precision.of(dtype, backend)
    D, H, T = model.width, model.heads, text_tokens
    blocks = block_params(model)
    shared = shared_params(model)
    total = shared + sum(blocks)
    shards = gpus if fsdp else 1

    trained = total if trainable is None else int(trainable)
    frozen_bytes = 2 if trainable is not None and p.half else 4

    def per_param(nbytes: int) -> int:
        return math.ceil(trained * nbytes / shards)

    kinds = ["double"] * model.double_blocks + ["single"] * model.single_blocks
    kept = {"double": double_block_bytes(D, H, p), "single": single_block_bytes(D, H, p)}
    last = len(windows) - 1
    policy = CheckpointPolicy(grad_checkpointing, model.stage_ends, last)  # the loop's own rule
    result_windows: list[WindowMemory] = []
    deepest = deepest_kept = 0
    batch = forward_ws = 0
    for k, (window, b) in enumerate(zip(windows, samples)):
        start = policy.recompute_from(k)
        first = window.blocks if start is None else min(start, window.blocks)
        N = window.tokens
        L = N + T
        per_sample = N * (image_io_bytes(model.in_channels, p) + head_bytes(D, p)) + T * text_io_bytes(model.text_dim, p)
        per_sample += L * sum(kept[kind] for kind in kinds[:first])
        per_sample += L * (window.blocks - first) * p.act * D  # a recomputed block keeps its input
        if first < window.blocks:  # backward recomputes the window's last block first, all else alive
            workspace = b * L * (kept[kinds[window.blocks - 1]] + RECOMPUTE_TRANSIENT[p.act] * D)
        else:
            workspace = b * L * BACKWARD_TRANSIENT * D
        result_windows.append(WindowMemory(k, window.resolution, N, window.blocks, b, window.blocks - first,
                                           b * per_sample, workspace))
        batch += b * batch_bytes(model.in_channels, model.text_dim, N, T)
        transient = FORWARD_TRANSIENT_RECOMPUTED if first < window.blocks else FORWARD_TRANSIENT
        forward_ws = max(forward_ws, b * L * transient[p.act] * D)
        if b:
            deepest = max(deepest, window.blocks)
            deepest_kept = max(deepest_kept, first)

    if p.half and not fsdp and trainable is None:  # autocast's cached 2-byte weights: all until the forward ends, then
        copies_all = 2 * (shared + sum(blocks[:deepest]))  # those of blocks backward does not recompute
        copies_kept = 2 * (shared + sum(blocks[:deepest_kept]))
    else:
        copies_all = copies_kept = 0
    # FSDP: the root unit (shared parts) and two blocks unsharded, parameters and gradients, in
    # its param/reduce dtype
    communication = (2 * max(blocks) + shared) * 2 * p.act if fsdp else 0

    parameters = per_param(4) + math.ceil((total - trained) * frozen_bytes / shards)
    gradients, adamw = per_param(4), per_param(8)
    ema_bytes = per_param(4) if ema else 0
    fixed = parameters + gradients + adamw + ema_bytes
    if gpus == 1:  # gradients freed between steps; backward's peak holds the head's and a block's
        between_steps = fixed - gradients
        in_backward = between_steps + min(gradients, math.ceil(4 * (shared + max(blocks)) * trained / total))
    else:
        between_steps = in_backward = fixed
    activations = sum(w.activation_bytes for w in result_windows)
    workspace = max((w.workspace_bytes for w in result_windows), default=0)
    phases = {
        "forward": between_steps + communication + activations + copies_all + forward_ws,
        "backward": in_backward + communication + activations + copies_kept + workspace,
        "optimizer": fixed + batch,
    }
    return TrainMemory(parameters, gradients, adamw, ema_bytes, communication, copies_all, result_windows, phases)


def plan_windows(model: ModelConfig, flow: FlowConfig, pixels_per_token: int, mode: str | None = None
                 ) -> tuple[FlowPlan, list[WindowShape]]:
    """The windows a training run of `model` on `flow` steps through (mode: the model's default,
    else flux-base when it cannot run nested stages)."""
    modes = runnable_modes(model.stage_ends, flow)
    mode = mode if mode in modes else BASELINE_MODE
    plan = FlowPlan(mode, flow, model.stage_ends, pixels_per_token)
    shapes = [WindowShape(w.resolution, w.tokens(pixels_per_token), w.blocks) for w in plan]
    return plan, shapes


def train_memory_report(name: str, model: ModelConfig, flow: FlowConfig, pixels_per_token: int, mode: str | None, *,
                        batch_size: int, dtype: str = field_default(TrainConfig, "dtype"), text_tokens: int = 256,
                        grad_checkpointing: str = field_default(TrainConfig, "grad_checkpointing"),
                        stage_mix: str | Sequence[float] | None = None, fsdp: bool = False, gpus: int = 1,
                        ema: bool = True, backend: str = "cuda", trainable: int | None = None) -> dict[str, Any]:
    """The JSON of `nami info --train-memory`: the estimate for the stage mix given, or for the
    default schedule's most expensive phase, plus the worst single draw."""
    check_at_least("--batch-size", batch_size, 1)
    check_choice("--grad-checkpointing", grad_checkpointing, CHECKPOINTING)
    check_choice("--dtype", dtype, DTYPES)
    dtype = run_dtype(dtype, backend)  # auto: what `nami train` computes in on that backend
    plan, shapes = plan_windows(model, flow, pixels_per_token, mode)
    K = flow.num_stages
    if stage_mix is None or isinstance(stage_mix, str):
        what = "the default schedule" if stage_mix is None else "--stage-mix"
        phases = parse_stage_mix(stage_mix or default_ratios(K), K)
        candidates = [(phase.values, f"the costliest phase of {what}, from step {phase.start}"
                       if len(phases) > 1 else what) for phase in phases]
    else:
        if len(stage_mix) != K:
            raise ConfigError(f"--stage-mix has {len(stage_mix)} weights for {K} stages")
        candidates = [(tuple(float(v) for v in stage_mix), "--stage-mix")]
    options: dict[str, Any] = {"dtype": dtype, "text_tokens": text_tokens, "grad_checkpointing": grad_checkpointing,
                               "fsdp": fsdp, "gpus": gpus, "ema": ema, "backend": backend, "trainable": trainable}
    best = None
    for mix, source in candidates:
        window_mix = plan.stage_mix(mix)
        samples = window_samples(batch_size, window_mix)
        memory = estimate(model, shapes, samples, **options)
        if best is None or memory.peak > best[0].peak:
            best = (memory, mix, source)
    memory, mix, source = best
    drawn = sorted({k for values, _ in candidates for k, share in enumerate(plan.stage_mix(values)) if share > 0})
    worst_samples, worst = worst_draw(model, shapes, batch_size, drawn, **options)
    report = memory.to_dict()
    for window, entry in zip(plan, report["windows"]):
        entry["width"] = window.size[1]  # "resolution" is the window's height
    params = shared_params(model) + sum(block_params(model))
    height, width = flow.sizes[-1]
    return {
        "model": name,
        "params": params,
        "trainable_params": params if trainable is None else trainable,
        "width": width,
        "height": height,
        "mode": plan.mode,
        "batch_size": batch_size,
        "dtype": dtype,
        "parallel": "fsdp" if fsdp else "ddp",
        "gpus": gpus,
        "grad_checkpointing": grad_checkpointing,
        "ema": ema,
        "text_tokens": text_tokens,
        "stage_mix": list(mix),
        "stage_mix_source": source,
        "backend": backend,
        **report,
        "worst_draw": {"samples_per_window": worst_samples, "peak_bytes": worst.peak, "peak_gib": worst.peak / GIB},
    }

