"""diffusers' modules without peft until LoRA is asked for.

Importing diffusers' pipeline module, or its hooks (which `ModelMixin.device` imports on first
use), imports peft when it is installed (about 0.5 s of a cold start; docs/benchmarks.md, "Cold
start"), only because two of diffusers' modules import a peft class at their top
(`hooks.layerwise_casting`, `loaders.lora_base`) and pipeline construction checks whether a
component is a peft model. Sampling and training without LoRA use none of that. So nami imports
them (`sampling_pipeline`, `pipeline`), and builds its pipeline, with peft hidden from diffusers (`peft_hidden`);
`with_peft`, called by `model.lora.with_lora` before any LoRA method runs, imports peft and gives
those two modules the names they would have had.
"""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def peft_hidden():
    """Within the block diffusers takes peft for not installed (it imports none of it)."""
    from diffusers.utils import import_utils

    available = getattr(import_utils, "_peft_available", None)
    if available is None or "peft" in sys.modules:  # another diffusers, or peft is loaded already
        yield
        return
    import_utils._peft_available = False
    try:
        yield
    finally:
        import_utils._peft_available = available


def with_peft() -> None:
    """Import peft and complete what diffusers' modules imported under `peft_hidden` lack."""
    from diffusers.utils import is_peft_available

    if not is_peft_available():
        return
    from peft.helpers import disable_input_dtype_casting
    from peft.tuners.tuners_utils import BaseTunerLayer

    casting = sys.modules.get("diffusers.hooks.layerwise_casting")
    if casting is not None:
        casting._SHOULD_DISABLE_PEFT_INPUT_AUTOCAST = True
        casting.BaseTunerLayer, casting.disable_input_dtype_casting = BaseTunerLayer, disable_input_dtype_casting
    lora_base = sys.modules.get("diffusers.loaders.lora_base")
    if lora_base is not None:
        lora_base.BaseTunerLayer = BaseTunerLayer

