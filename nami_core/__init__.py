"""nami: progressive rectified flow transformers (NAMI) for text-to-image.

Heavy modules (torch, diffusers) load lazily, so `import nami_core` is cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "NamiTransformer": "nami_core.model.transformer",
    "BridgeJump": "nami_core.flow.jump",
    "NamiFlowScheduler": "nami_core.flow.scheduler",
    "PixelCodec": "nami_core.codecs.pixel",
    "FluxVAECodec": "nami_core.codecs.flux_vae",
    "NamiTextEncoder": "nami_core.text.encoder",
    "NamiPipeline": "nami_core.pipeline",
    "SamplingPipeline": "nami_core.sampling_pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nami_core' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
