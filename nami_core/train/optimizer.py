"""The optimizer of a run and the learning rate of each step.

* `--optimizer adamw` (default): torch's AdamW, fused on CUDA and the CPU (its device-side skip
  of a non-finite step is what `optimizer_step.GuardedStep` uses); `adamw8bit`: bitsandbytes'
  AdamW8bit (8-bit optimizer state), when installed. Both take `--adam-beta1`, `--adam-beta2`,
  `--adam-epsilon` and `--adam-weight-decay`.
* The learning rate of step s (0-based, the optimizer steps taken before it) is the value of the
  `--lr-schedule` phase in force at s, the peak, times the factor diffusers' `get_scheduler`
  (diffusers.optimization) gives `--lr-scheduler` at s over `--steps` with `--lr-warmup-steps`:
  `constant` 1; `constant_with_warmup` s / warmup, then 1; `linear` down to 0 at `--steps`;
  `cosine` half a cosine to 0; `cosine_with_restarts` one cycle (as diffusers' default);
  `polynomial` (power 1) down to 1e-7 of the peak. As in diffusers' scripts, the first warmup step
  trains with a learning rate of 0. The rate is a function of the step and the settings alone, so
  a resumed run takes exactly the rates an uninterrupted one would.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def lr_factor(name: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """diffusers' `get_scheduler(name)` multiplier of the peak learning rate at each step."""
    from diffusers.optimization import get_scheduler

    # LambdaLR multiplies the optimizer's lr by its lambda: a holder with lr 1 leaves the lambda as it is
    holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    lambdas = get_scheduler(name, holder, num_warmup_steps=warmup_steps, num_training_steps=total_steps).lr_lambdas
    return lambda step: float(lambdas[0](step))


def build_optimizer(settings, params: Iterable[torch.nn.Parameter], lr: float, device: torch.device):
    """The optimizer `settings` (`TrainConfig`) asks for over `params`, starting at `lr`."""
    options = dict(lr=lr, betas=(settings.adam_beta1, settings.adam_beta2), eps=settings.adam_epsilon,
                   weight_decay=settings.adam_weight_decay)
    if settings.optimizer == "adamw8bit":
        import bitsandbytes as bnb  # checked installed by TrainConfig

        return bnb.optim.AdamW8bit(list(params), **options)
    return torch.optim.AdamW(params, fused=device.type in ("cuda", "cpu"), **options)
