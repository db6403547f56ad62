"""Interoperability with weights and tools outside nami.

* `flux_state`: FLUX-keyed transformer weights (diffusers `FluxTransformer2DModel` names)
  -> a `NamiTransformer`, with shape checks that name the file and key.
* `public_layout`: the public NAMI-T2I checkpoint directory (transformer/, bridge_flow.bin,
  vae/, mclip/, mt5/) -> a `SamplingPipeline`, and its conversion to a nami model directory.
* `block_selection` / `flux_convert`: a FLUX-family transformer cut to a subset of its
  blocks, written as a transformer directory for `nami train --model`.

Modules import torch and diffusers at the top; import them inside functions from code
that must stay light (the CLI).
"""
