"""LoRA adapters on a `NamiTransformer`, in the format diffusers and peft read.

Training adds one peft adapter (`add_lora`) and freezes the base weights; an adapter is saved as
`ADAPTER/pytorch_lora_weights.safetensors` (keys `transformer.<module>.lora_A/B.weight`, the peft
`LoraConfig` in the safetensors metadata, as `FluxPipeline.save_lora_weights` writes them) plus
peft's `adapter_config.json`. `NamiPipeline.load_lora_weights(ADAPTER)` (diffusers'
`FluxLoraLoaderMixin`) loads it; `fuse_lora` folds it into the weights. The staged loss is
unchanged: an adapter on a block inside a stage's prefix is trained by that stage's samples.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, NamiError, first_line

# What diffusers' LoRA mixins add: PeftAdapterMixin to the transformer, FluxLoraLoaderMixin to the
# pipeline. Neither class has them as a base until one of these is used (`with_lora`), which imports
# peft: sampling without LoRA does not (`model.peft_loading`).
TRANSFORMER_LORA_METHODS = frozenset({
    "add_adapter", "set_adapter", "set_adapters", "enable_adapters", "disable_adapters", "active_adapters",
    "load_lora_adapter", "save_lora_adapter", "fuse_lora", "unfuse_lora", "unload_lora", "enable_lora",
    "disable_lora", "delete_adapters", "enable_lora_hotswap"})
PIPELINE_LORA_METHODS = frozenset({
    "load_lora_weights", "lora_state_dict", "load_lora_into_transformer", "save_lora_weights", "fuse_lora",
    "unfuse_lora", "unload_lora_weights", "set_adapters", "enable_lora", "disable_lora", "delete_adapters",
    "get_active_adapters", "get_list_adapters", "set_lora_device", "enable_lora_hotswap", "write_lora_layers",
    "num_fused_loras", "fused_loras", "lora_scale"})
_WITH_LORA: dict[tuple[type, type], type] = {}

ADAPTER_NAME = "default"
LORA_SCALE = 1.0  # an adapter's strength unless a scale is given (ADAPTER:SCALE, --scale)
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_INFO = "nami_lora.json"  # what `nami train --lora` records: base model, rank, steps
ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
             "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
# the feed-forward layers: a single-stream block's proj_out takes [attention, MLP]; the model's own
# final `proj_out` (the output head, outside every block) is not one of them
MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")
LORA_TARGETS = {"attn": ATTENTION, "attn+mlp": ATTENTION + MLP}  # module-name suffixes inside the blocks


def target_pattern(targets: str) -> str:
    """peft's `target_modules` as a regular expression (matched against whole module names): the
    suffixes of `LORA_TARGETS[targets]` inside a transformer block, so the output head `proj_out`
    never matches."""
    import re

    names = "|".join(re.escape(name) for name in LORA_TARGETS[targets])
    return rf"(?:.*\.)?(?:transformer_blocks|single_transformer_blocks)\.\d+\.(?:{names})"


MAX_LORA_RANK = 1024  # an adapter's rank (usual: 4 to 64)


def check_lora_settings(rank: int, alpha: float | None = None, targets: str = "attn") -> float:
    """Check `--lora RANK --lora-alpha A --lora-targets T` without importing peft; returns alpha
    (the rank when not given)."""
    if rank < 1:
        raise ConfigError(f"--lora must be a rank of at least 1, got {rank}")
    if rank > MAX_LORA_RANK:
        raise ConfigError(f"--lora must be a rank of at most {MAX_LORA_RANK}, got {rank}")
    if targets not in LORA_TARGETS:
        raise ConfigError(f"--lora-targets must be one of {', '.join(LORA_TARGETS)}, got {targets!r}")
    alpha = float(rank if alpha is None else alpha)
    if alpha <= 0:
        raise ConfigError(f"--lora-alpha must be above 0, got {alpha:g}")
    if alpha / rank > MAX_LORA_SCALE:
        raise ConfigError(f"--lora-alpha {alpha:g} scales a rank-{rank} adapter by {alpha / rank:g}; the scale "
                          f"alpha / rank must be at most {MAX_LORA_SCALE:g}")
    return alpha


def lora_config(rank: int, alpha: float | None = None, targets: str = "attn"):
    """The peft `LoraConfig` of `--lora RANK --lora-alpha A --lora-targets T` (alpha defaults to rank)."""
    from peft import LoraConfig

    alpha = check_lora_settings(rank, alpha, targets)
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_pattern(targets), init_lora_weights=True)


def with_lora(obj):
    """`obj` (a NamiTransformer, or a NamiPipeline and its transformer) with diffusers' LoRA methods:
    `PeftAdapterMixin` or `FluxLoraLoaderMixin` made a base of its class, once. The classes keep
    their names and modules, so saved models name them as before. Their `__getattr__` calls this
    when one of the methods is asked for."""
    from diffusers import DiffusionPipeline
    from diffusers.loaders import FluxLoraLoaderMixin, PeftAdapterMixin

    from .peft_loading import with_peft

    with_peft()
    if isinstance(obj, DiffusionPipeline):
        _add_base(obj, FluxLoraLoaderMixin)
        _add_base(obj.transformer, PeftAdapterMixin)
    else:
        _add_base(obj, PeftAdapterMixin)
    return obj


def _add_base(obj, mixin: type) -> None:
    cls = type(obj)
    if isinstance(obj, mixin):
        return
    if (cls, mixin) not in _WITH_LORA:
        _WITH_LORA[cls, mixin] = type(cls.__name__, (cls, mixin), {"__module__": cls.__module__,
                                                                 "__qualname__": cls.__qualname__})
    obj.__class__ = _WITH_LORA[cls, mixin]


class LoraOnFirstUse:
    """A base of `NamiTransformer` and `NamiPipeline`: asked for one of diffusers' LoRA methods
    (`lora_methods`), the object gets them (`with_lora`) and answers with it."""

    lora_methods: frozenset = frozenset()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # nn.Module's submodules, diffusers' config attributes
        except AttributeError:
            if name not in type(self).lora_methods:
                raise
        return getattr(with_lora(self), name)


def add_lora(transformer, config) -> list:
    """Freeze `transformer` and add the adapter; returns the adapter's (trainable) parameters."""
    with_lora(transformer)
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    params = [p for name, p in transformer.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state_dict(transformer) -> dict:
    """The adapter's tensors under peft's names (`<module>.lora_A.weight`, no adapter name)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)


def save_lora(transformer, folder: str | Path) -> Path:
    """Write the adapter as diffusers' `save_lora_weights` does, plus peft's adapter_config.json."""
    from diffusers.loaders import FluxLoraLoaderMixin

    folder = Path(folder)
    config = transformer.peft_config[ADAPTER_NAME]
    FluxLoraLoaderMixin.save_lora_weights(folder, transformer_lora_layers=lora_state_dict(transformer),
                                   transformer_lora_adapter_metadata=config.to_dict())
    config.save_pretrained(str(folder))
    return folder


MAX_LORA_SCALE = 100.0  # usual scales are 0 to 2; far larger ones overflow the weights


def check_lora_scale(value: float, what: str) -> float:
    """`value` as an adapter's scale: finite and at most `MAX_LORA_SCALE` in size; errors name `what`."""
    if not math.isfinite(value):
        raise NamiError(f"{what}: the scale must be a finite number, got {value}")
    if abs(value) > MAX_LORA_SCALE:
        raise NamiError(f"{what}: the scale must be at most {MAX_LORA_SCALE:g} in size (usual scales are 0 to 2), "
                        f"got {value:g}")
    return value


def parse_lora_spec(spec: str, option: str = "--lora") -> tuple[Path, float]:
    """`ADAPTER[:SCALE]` -> (folder or .safetensors file, scale; `LORA_SCALE` by default); errors
    name `option`."""
    path, scale = spec, LORA_SCALE
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            value = float(tail)
        except ValueError:
            value = None
        if value is not None:
            path, scale = head, check_lora_scale(value, f"{option} {spec}")
    if not Path(path).exists():
        raise NamiError(f"{option} {spec}: {path} does not exist")
    if Path(path).is_dir() and not (Path(path) / LORA_WEIGHTS).is_file():
        raise NamiError(f"{option} {spec}: {path} holds no {LORA_WEIGHTS}")
    if Path(path).is_file() and Path(path).suffix != ".safetensors":
        raise NamiError(f"{option} {spec}: {path} is neither an adapter folder nor a .safetensors file")
    return Path(path), scale


def apply_loras(pipe, specs: list[str], on_warning: Callable[[str], None] | None = None) -> list[tuple[str, float]]:
    """Load every `ADAPTER[:SCALE]` of `specs` into `pipe` and activate them together. Each adapter
    is checked first (`check_adapter`); what it and diffusers find amiss but loadable (modules the
    model lacks) goes to `on_warning`, one line each (Python's warnings by default)."""
    from .adapter_check import check_adapter

    if specs and "load_lora_weights" not in getattr(pipe, "lora_methods", ()):
        raise TypeError(f"LoRA adapters load into a NamiPipeline, not a {type(pipe).__name__}: load the model with "
                        "load_pipeline(..., diffusers_pipeline=True)")
    warn = on_warning or (lambda text: warnings.warn(text, UserWarning, stacklevel=3))
    loaded = []
    for i, spec in enumerate(specs):
        path, scale = parse_lora_spec(spec)
        name = f"lora{i}"
        found = check_adapter(pipe, path, spec)
        try:
            with quiet_peft() as logged:
                pipe.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise NamiError(f"--lora {spec}: cannot load it into this model ({why_not_loaded(exc, path)})") from None
        # once it is applied: the check's warnings, else what diffusers logged (the same finding otherwise)
        for line in found or [f"--lora {spec}: {text}" for text in logged]:
            warn(line)
        loaded.append((name, scale))
    if loaded:
        pipe.set_adapters([n for n, _ in loaded], [s for _, s in loaded])
    return loaded


@contextmanager
def quiet_peft():
    """Silence what diffusers logs and peft warns while an adapter loads: a failure is reported
    once, as the error that follows. Yields the list of warning lines diffusers logged (each
    message's first line), for the caller to pass on."""
    logger = logging.getLogger("diffusers.loaders.peft")
    level = logger.level
    lines: list[str] = []
    handler = _Collect(lines)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    propagate = logger.propagate
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if text:
            self.lines.append(text.splitlines()[0][:300])


def why_not_loaded(exc: BaseException, adapter: Path) -> str:
    """The reason an adapter did not load, in one phrase (naming the model it was trained on)."""
    text = str(exc)
    if "size mismatch" in text:
        base = read_lora_info(adapter_folder(adapter)).get("base_model")
        return "its layers have other sizes: it was trained on another model" + (f", {base}" if base else "")
    return first_line(exc)[:200]


def adapter_folder(path: Path) -> Path:
    """The folder of an adapter given as its folder or its weights file."""
    return path if path.is_dir() else path.parent


def read_lora_info(folder: Path) -> dict:
    """An adapter folder's `nami_lora.json` ({} when it has none)."""
    from ..user_files import read_json_object

    path = Path(folder) / LORA_INFO
    return read_json_object(path, "adapter record") if path.is_file() else {}
