"""NamiPipeline: nami's generation (`SamplingPipeline`) as a diffusers `DiffusionPipeline`."""

from __future__ import annotations

import logging

from .model.peft_loading import peft_hidden

with peft_hidden():  # diffusers' pipeline module imports every model module; none of them need peft
    from diffusers import DiffusionPipeline

# Every component class must be importable from sys.modules when diffusers loads a saved pipeline.
from .codecs import flux_vae, pixel  # noqa: F401
from .errors import ConfigError
from .flow import jump, scheduler  # noqa: F401
from .model.lora import PIPELINE_LORA_METHODS, LoraOnFirstUse
from .model.transformer import NamiTransformer  # noqa: F401
from .sampling_pipeline import NamiPipelineOutput, SamplingPipeline, SamplingSettings  # noqa: F401
from .text.encoder import NamiTextEncoder  # noqa: F401

logger = logging.getLogger(__name__)


class NamiPipeline(LoraOnFirstUse, DiffusionPipeline, SamplingPipeline):
    """Text-to-image with a NAMI model, as a diffusers pipeline.

    Components: `transformer` (NamiTransformer), `scheduler` (NamiFlowScheduler: stage
    resolutions, windows, jump, defaults), `codec` (PixelCodec or FluxVAECodec),
    `text_encoder` (NamiTextEncoder) and, for bridged weights, `bridge` (BridgeJump).
    Generation is `SamplingPipeline`'s; diffusers' pipeline gives it loading and saving, model
    offload (`enable_model_cpu_offload`), the device and the progress bar. diffusers' LoRA
    methods (`load_lora_weights`, `fuse_lora`, ...: `FluxLoraLoaderMixin`) join the class when
    one is first used (`model.lora.with_lora`).
    """

    lora_methods = PIPELINE_LORA_METHODS  # diffusers' FluxLoraLoaderMixin, on first use
    _lora_loadable_modules = ["transformer"]  # LoRA (diffusers/peft format) applies to the transformer only

    @classmethod
    def load_lora_into_text_encoder(cls, state_dict, *args, **kwargs) -> None:
        """The text encoder takes no LoRA: refuse an adapter that has text-encoder weights."""
        if any(key.startswith("text_encoder.") for key in state_dict):
            raise ConfigError("this LoRA adapter has text-encoder weights; nami applies LoRA to the transformer only")

    model_cpu_offload_seq = "text_encoder->transformer->codec"
    _optional_components = ["bridge"]

    def __init__(self, transformer, scheduler, codec, text_encoder, bridge=None) -> None:
        DiffusionPipeline.__init__(self)
        with peft_hidden():  # diffusers would import peft to check that no component is a peft model
            self.register_modules(
                transformer=transformer, scheduler=scheduler, codec=codec, text_encoder=text_encoder, bridge=bridge
            )


def register_pipeline_class(pipeline_class: type) -> None:
    """Publish `pipeline_class` under its own name on the `diffusers` package (idempotent), so
    `DiffusionPipeline.from_pretrained(dir)` loads a saved nami model.

    A saved model's `model_index.json` names its pipeline class (`"_class_name": "NamiPipeline"`)
    and its components by full module path. Stock diffusers looks the pipeline class up as an
    attribute of the `diffusers` package, and uses a component's module only if the process has
    already imported it. Importing this module does both: it imports every component module and
    publishes `NamiPipeline`. Nothing inside diffusers is replaced, and no code is copied into
    model directories (diffusers' `trust_remote_code` route). A different class already published
    under that name is left in place, with a warning.
    """
    import diffusers

    name = pipeline_class.__name__
    existing = getattr(diffusers, name, None)
    if existing is pipeline_class:
        return
    if existing is not None:
        logger.warning("diffusers already has a %s (%s); not replacing it", name, getattr(existing, "__module__", "?"))
        return
    setattr(diffusers, name, pipeline_class)


register_pipeline_class(NamiPipeline)
