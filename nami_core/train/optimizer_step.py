"""One optimizer step that skips non-finite gradients on the device, never asking the host.

* fp16: a `GradScaler` scales the loss; a step whose unscaled gradients hold inf or NaN is
  skipped and the scale backs off, as torch.amp intends, and the run goes on. So is a step whose
  gradients are finite but whose norm is not (huge gradients whose squares overflow float32):
  the scaler is told (`_flag_non_finite_norm`), so it skips the step the loop counts as skipped,
  instead of stepping AdamW with gradients clipped to zero. On CUDA the scaler is accelerate's;
  on the CPU (where accelerate builds none) it is our own.
* bf16 and fp32: no scaling; the step is skipped the same way, by handing fused AdamW the
  "found inf" flag (its device-side skip, the one GradScaler uses), computed from the gradient norm.

In both cases `step()` returns that flag as a 0-dim device tensor (1 = the step was taken), for
the EMA, the loss weights and the statistics, which read it only when they log.
"""

from __future__ import annotations

import torch


class GuardedStep:
    """backward, unscale + clip, step + zero_grad for an accelerate-prepared AdamW (fused)."""

    def __init__(self, accelerator, optimizer, dtype: str) -> None:
        self.accelerator = accelerator
        self.optimizer = optimizer  # accelerate's AcceleratedOptimizer
        self.own_scaler = None
        if accelerator.scaler is None and dtype == "fp16":
            self.own_scaler = torch.amp.GradScaler(accelerator.device.type)

    @property
    def scaler(self):
        """The GradScaler in use, if any (saved with the checkpoint)."""
        return self.accelerator.scaler or self.own_scaler

    @property
    def inner(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(self.own_scaler.scale(loss) if self.own_scaler is not None else loss)

    def clip(self, parameters, max_norm: float) -> torch.Tensor:
        """Unscale (fp16) and clip the gradients; the total norm as a device tensor."""
        if self.own_scaler is not None:
            self.own_scaler.unscale_(self.inner)
        norm = self.accelerator.clip_grad_norm_(parameters, max_norm)
        if self.scaler is not None:
            self._flag_non_finite_norm(norm)
        return norm

    def _flag_non_finite_norm(self, norm: torch.Tensor) -> None:
        """Add "the norm is not finite" to the scaler's found-inf flags of this step (on the device),
        which its `step` reads to skip and `update` to back the scale off."""
        state = self.scaler._per_optimizer_states[id(self.inner)]
        bad = (~torch.isfinite(norm)).float()
        for found in state["found_inf_per_device"].values():
            torch.maximum(found, bad.to(found.device), out=found)

    def step(self, grad_norm: torch.Tensor) -> torch.Tensor:
        """Take the optimizer step unless the gradients are not finite; returns 1.0 / 0.0 on the device."""
        taken = torch.isfinite(grad_norm).float()
        if self.own_scaler is not None:
            self.own_scaler.step(self.inner)
            self.own_scaler.update()
        elif self.accelerator.scaler is not None:
            self.optimizer.step()  # accelerate: scaler.step + update
        elif getattr(self.inner, "_step_supports_amp_scaling", False):
            optimizer = self.inner
            optimizer.grad_scale, optimizer.found_inf = None, 1.0 - taken
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
        elif bool(taken):  # an optimizer without a device-side skip: the host has to decide
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return taken

    def state_dict(self) -> dict:
        return {"scaler": self.own_scaler.state_dict()} if self.own_scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.own_scaler is not None and "scaler" in state:
            self.own_scaler.load_state_dict(state["scaler"])
