"""Exponential moving average of the trained weights, updated with one foreach kernel on the device.

The decay follows diffusers' `EMAModel` default schedule (see `decay_at`) and the state dict has
the same keys, so checkpoints of either resume with the other. The update is a foreach `lerp`
toward the weights: one pass over the parameters and no temporary (diffusers' foreach update
takes three passes and a model-sized difference); the averages agree to float rounding. A step
whose gradients were not finite (`gate` 0, decided on the device) leaves the average as it was,
without the host reading the gate (the weight stays a device tensor; see `update`).
"""

from __future__ import annotations

from typing import Iterable

import torch


class EMA:
    """Shadow copies of `params` (detached, same dtype and device)."""

    def __init__(self, params: Iterable[torch.Tensor], decay: float) -> None:
        self.decay = float(decay)
        self.optimization_step = 0
        self.shadow_params = [p.detach().clone() for p in params]
        self._stored: list[torch.Tensor] | None = None

    def decay_at(self, step: int) -> float:
        """The decay of update number `step` (1-based): 0 for the first (the average starts at the
        weights), then `min(decay, (1 + t) / (10 + t))` with t = step - 1."""
        t = step - 1
        return 0.0 if t <= 0 else min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor], gate: torch.Tensor | None = None) -> None:
        """shadow <- shadow + (1 - decay) * gate * (param - shadow); gate: 0-dim tensor on the
        shadow's device (1 = take the step, 0 = keep the average)."""
        self.optimization_step += 1
        weight = 1.0 - self.decay_at(self.optimization_step)
        targets = [p.detach() for p in params]
        if gate is None:
            torch._foreach_lerp_(self.shadow_params, targets, weight)
            return
        # a 0-dim device weight goes in as a tensor list (one per parameter): the Scalar overload
        # would read it back to the host (`.item()`), a sync every step
        weight = gate.to(self.shadow_params[0].dtype) * weight
        torch._foreach_lerp_(self.shadow_params, targets, [weight] * len(targets))

    def to(self, device) -> "EMA":
        self.shadow_params = [s.to(device) for s in self.shadow_params]
        return self

    @torch.no_grad()
    def swap(self, params: Iterable[torch.Tensor]) -> None:
        """Exchange the averages and `params` in place, one tensor at a time (the extra memory is one
        tensor's, not a model's); a second swap restores both exactly."""
        for s, p in zip(self.shadow_params, params):
            held = p.detach().clone()
            p.copy_(s)
            s.copy_(held)

    @torch.no_grad()
    def store(self, params: Iterable[torch.Tensor]) -> None:
        self._stored = [p.detach().clone() for p in params]

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.Tensor]) -> None:
        for s, p in zip(self.shadow_params, params):
            p.copy_(s)

    @torch.no_grad()
    def restore(self, params: Iterable[torch.Tensor]) -> None:
        for s, p in zip(self._stored or [], params):
            p.copy_(s)
        self._stored = None

    def state_dict(self) -> dict:
        return {"decay": self.decay, "min_decay": 0.0, "optimization_step": self.optimization_step,
                "update_after_step": 0, "use_ema_warmup": False, "inv_gamma": 1.0, "power": 2 / 3,
                "shadow_params": self.shadow_params}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.optimization_step = int(state["optimization_step"])
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow_params):
            raise ValueError(f"EMA state holds {len(shadow)} tensors for {len(self.shadow_params)} parameters")
        self.shadow_params = [s.to(device=o.device, dtype=o.dtype) for s, o in zip(shadow, self.shadow_params)]
