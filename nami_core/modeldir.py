"""Model directories: the bundled default model, loading a saved pipeline with clear errors."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import torch

from .checksums import verify_artefact
from .errors import ConfigError, NamiError, first_line
from .model.lora import LORA_SCALE
from .model_paths import DEFAULT_MODEL_NAME, bundled_model_dir, resolve_model_dir  # noqa: F401

# The classes a saved model's parts may be, by part: model_index.json names one per part as
# [module, class] (diffusers' layout); nothing else is imported.
PART_CLASSES = {
    "transformer": (("nami_core.model.transformer", "NamiTransformer"),),
    "scheduler": (("nami_core.flow.scheduler", "NamiFlowScheduler"),),
    "codec": (("nami_core.codecs.pixel", "PixelCodec"), ("nami_core.codecs.flux_vae", "FluxVAECodec")),
    "text_encoder": (("nami_core.text.encoder", "NamiTextEncoder"),),
    "bridge": (("nami_core.flow.jump", "BridgeJump"),),
}
COMPONENTS = tuple(name for name in PART_CLASSES if name != "bridge")  # in every model directory


def check_model_dir(path: Path) -> None:
    """A saved nami model (model_index.json + components), or the public NAMI-T2I layout
    (`nami_core.interop.public_layout`: transformer/, bridge_flow.bin, vae/, mclip/, mt5/)."""
    from .interop.public_layout import check_public_parts, is_public_layout

    if is_public_layout(path):
        check_public_parts(path)
        return
    if not (path / "model_index.json").is_file():
        raise NamiError(
            f"{path} is not a nami model directory (no model_index.json) nor the public NAMI-T2I layout "
            "(transformer/, bridge_flow.bin, vae/, mclip/, mt5/)"
        )
    for name in COMPONENTS:
        if not (path / name).is_dir():
            raise NamiError(f"model directory {path} is missing its {name}/ folder")
    weights = list((path / "transformer").glob("diffusion_pytorch_model*.safetensors"))
    if not weights:
        raise NamiError(f"model directory {path} has no transformer weights (transformer/*.safetensors)")


def has_ema(path: Path) -> bool:
    return (path / "transformer" / "diffusion_pytorch_model.ema.safetensors").is_file()


def quiet_loading():
    """Silence the libraries' loading chatter (progress bars, experimental-API warnings)."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def codec_dtype(codec, dtype: torch.dtype) -> torch.dtype:
    """The codec runs in float32 (pixel codec), or in the transformer's dtype except float16: the
    FLUX VAE overflows in float16, so it then stays in float32."""
    if codec.__class__.__name__ == "PixelCodec" or dtype == torch.float16:
        return torch.float32
    return dtype


def load_pipeline(model: str | Path | None, device: torch.device, dtype: torch.dtype, attention: str = "auto",
                  weights: str = "auto", diffusers_pipeline: bool = False):
    """Load a model directory onto `device`: a `SamplingPipeline`, or with `diffusers_pipeline` a
    `NamiPipeline` (diffusers' pipeline: its LoRA methods, `save_pretrained`, offload), whose
    import takes seconds more.

    The directory is a saved nami model or the public NAMI-T2I layout (read in place).
    weights: "ema" (the EMA variant), "raw", or "auto" (EMA when the directory has it).
    The transformer runs in `dtype`, the codec as `codec_dtype` says; text encoders stay in
    float32. On CUDA, float32 matmuls may use TF32.
    """
    from .interop.public_layout import is_public_layout, load_public_pipeline
    from .model.attention import apply_backend
    from .runtime import use_fast_matmul

    path = resolve_model_dir(model)
    check_model_dir(path)
    if weights not in ("auto", "ema", "raw"):
        raise NamiError(f"weights must be auto, ema or raw, got {weights!r}")
    public = is_public_layout(path)
    if weights == "ema" and (public or not has_ema(path)):
        raise NamiError(f"{path} has no EMA weights (transformer/diffusion_pytorch_model.ema.safetensors)")
    variant = "ema" if weights == "ema" or (weights == "auto" and not public and has_ema(path)) else None
    verify_artefact(path, "model directory")  # checksums.json: every file as written (cached)
    quiet_loading()
    try:
        pipe = load_public_pipeline(path) if public else load_saved_pipeline(path, variant)
        pipe.settings()  # the saved flow settings make a plan (a damaged config fails here, not mid-run)
        if not public:
            check_weight_names(pipe.transformer, path / "transformer", variant, path)
    except ConfigError as exc:  # a config value out of range (codec patch_size 0): name the directory
        raise NamiError(f"cannot load the model in {path}: {exc}") from None
    except NamiError:
        raise
    except UNREADABLE as exc:
        raise NamiError(f"cannot load the model in {path}: {describe(exc)}") from None
    use_fast_matmul(device)
    pipe.transformer.to(device=device, dtype=dtype)
    pipe.codec.to(device=device, dtype=codec_dtype(pipe.codec, dtype))
    pipe.text_encoder.to(device)
    if pipe.bridge is not None:
        pipe.bridge.to(device)
    check_finite_weights(pipe, path)
    apply_backend(pipe.transformer, attention)
    if diffusers_pipeline:
        from .pipeline import NamiPipeline

        pipe = NamiPipeline(**pipe.parts)
        pipe.set_progress_bar_config(disable=True)
    return pipe


def load_saved_pipeline(path: Path, variant: str | None):
    """A saved nami model directory's parts as the `SamplingPipeline`: each part loaded by the
    class `model_index.json` names (one of `PART_CLASSES`) with its `from_pretrained`, as
    diffusers' pipeline loader does; `variant` ("ema" or None) picks the transformer's weights."""
    import importlib

    from .sampling_pipeline import SamplingPipeline
    from .user_files import read_json_object

    index_path = path / "model_index.json"
    index = read_json_object(index_path, "model index")
    if index.get("_class_name") != "NamiPipeline":
        raise NamiError(f"{index_path} is not a nami model's (its _class_name is {index.get('_class_name')!r}, "
                        "not 'NamiPipeline')")
    parts = {}
    for name, allowed in PART_CLASSES.items():
        entry = index.get(name)
        if name == "bridge" and entry in (None, [None, None]):
            parts[name] = None
            continue
        if not isinstance(entry, list) or tuple(entry) not in allowed:
            names = " or ".join(f"[{module!r}, {cls!r}]" for module, cls in allowed)
            raise NamiError(f"{index_path}: {name} must be {names}, got {entry!r}")
        if not (path / name).is_dir():
            raise NamiError(f"model directory {path} is missing its {name}/ folder (model_index.json names one)")
        module, cls = entry
        options = {"variant": variant} if name == "transformer" and variant else {}
        parts[name] = getattr(importlib.import_module(module), cls).from_pretrained(path / name, **options)
    return SamplingPipeline(**parts)


# What loading a damaged or hand-edited model directory raises (a config value of the wrong type or
# size, a zero where a count belongs); each becomes one line naming the directory.
UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError, ArithmeticError)


def describe(exc: BaseException) -> str:
    """An exception in one phrase: its first line, with its type when that says more (ZeroDivisionError)."""
    line = first_line(exc)
    common = (OSError, ValueError, KeyError, RuntimeError)
    return line if isinstance(exc, common) else f"{type(exc).__name__}: {line}"


def check_weight_names(module, folder: Path, variant: str | None, path: Path) -> None:
    """NamiError when the weights file of `module` (one file: `diffusion_pytorch_model[.variant].safetensors`)
    lacks tensors the module has (loading leaves them without data) or holds tensors it has not
    (dropped without a word): either way the file is not this model's."""
    from safetensors import safe_open

    state = module.state_dict()
    missing = [name for name, t in state.items() if t.is_meta]
    file = folder / f"diffusion_pytorch_model{'.' + variant if variant else ''}.safetensors"
    extra: list[str] = []
    if file.is_file():
        with safe_open(str(file), framework="pt") as f:
            extra = sorted(set(f.keys()) - set(state))
    if missing:
        raise NamiError(f"model directory {path}: the transformer weights {file.name} lack {len(missing)} of "
                        f"{len(state)} tensors (e.g. {missing[0]}); the file is not this model's")
    if extra:
        raise NamiError(f"model directory {path}: the transformer weights {file.name} hold {len(extra)} tensors the "
                        f"model has not (e.g. {extra[0]}); the file is not this model's")


def check_finite_weights(pipe, path: Path) -> None:
    """NamiError when the transformer's (or codec's, bridge's) weights hold NaN or inf: such a model
    draws black or noisy pictures without a word. One host sync per device."""
    from .runtime import non_finite

    parts = {name: dict(module.named_parameters()) for name in ("transformer", "codec", "bridge")
             if (module := getattr(pipe, name, None)) is not None}
    bad = non_finite({f"{part}/{name}": t for part, tensors in parts.items() for name, t in tensors.items()})
    if bad:
        part, name = bad[0].split("/", 1)
        count = sum(b.startswith(f"{part}/") for b in bad)
        raise NamiError(f"model directory {path}: the {part} weights hold non-finite values "
                        f"({count} of {len(parts[part])} tensors, e.g. {name}); the model is damaged")


def merge_lora(model: str | Path, adapter: str | Path, out: str | Path, scale: float = LORA_SCALE, overwrite: bool = False,
               on_warning: Callable[[str], None] | None = None) -> Path:
    """Fold `adapter` (at `scale`) into the weights of the model directory `model` and write the
    result as a new model directory `out` (atomically): the merged transformer is its only weights.
    The adapter applies to the weights `nami sample` uses by default (EMA when the model has it).
    `out` follows the output policy (`output_targets`): never the model or the adapter, nor around
    them; an existing model directory is replaced only with `overwrite`. Merged weights that are
    not all finite are refused, nothing written."""
    from .checksums import new_artefact
    from .model.lora import adapter_folder, apply_loras, check_lora_scale, parse_lora_spec
    from .output_targets import MODEL, check_out_folder
    from .runtime import non_finite
    from .vocabulary import combined_vocabulary

    check_lora_scale(scale, "--scale")
    path, _ = parse_lora_spec(str(adapter))
    source = resolve_model_dir(model)
    check_out_folder(out, MODEL, {"--model": source, "adapter": adapter_folder(path)}, overwrite)
    pipe = load_pipeline(source, torch.device("cpu"), torch.float32, diffusers_pipeline=True)
    stored = stored_dtype(source)
    apply_loras(pipe, [str(path)], on_warning)
    pipe.fuse_lora(components=["transformer"], lora_scale=scale)
    pipe.unload_lora_weights()
    pipe.transformer.to(stored)  # saved as the model's weights were (fp16 stays fp16)
    weights = dict(pipe.transformer.named_parameters())
    bad = non_finite(weights)
    if bad:
        raise NamiError(f"merging {adapter} at scale {scale:g} gives non-finite weights ({len(bad)} of {len(weights)} "
                        f"tensors, e.g. {bad[0]}, in {stored}); nothing was written (try a smaller --scale)")
    pipe.transformer.register_to_config(_name_or_path="")
    out = Path(out)
    vocabulary = combined_vocabulary(source, [adapter_folder(path)])
    with new_artefact(out) as tmp:
        pipe.save_pretrained(tmp)
        if vocabulary is not None:
            vocabulary.save(tmp)
    return out


SAFETENSORS_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The floating dtype the transformer's weights are stored in (float32 if it cannot be read)."""
    from safetensors import safe_open

    variant = ".ema" if has_ema(Path(model_dir)) else ""
    path = Path(model_dir) / "transformer" / f"diffusion_pytorch_model{variant}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # the header names each tensor's dtype: no tensor is read
                dtype = SAFETENSORS_FLOATS.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return torch.float32

