"""FLUX-keyed transformer weights -> `NamiTransformer`.

The weights carry diffusers' `FluxTransformer2DModel` key names (`x_embedder.weight`,
`transformer_blocks.{i}.attn.to_q.weight`, `single_transformer_blocks.{j}.proj_mlp.weight`,
...), which are also `NamiTransformer`'s. The model shape is read off the tensor shapes:

* width and input features from `x_embedder.weight` (width, in_channels);
* text and pooled dims from `context_embedder.weight` (width, joint_attention_dim) and
  `time_text_embed.text_embedder.linear_1.weight` (width, pooled_projection_dim);
* head dim from the per-head QK norm `*.attn.norm_q.weight` (head_dim,), heads = width / head_dim;
* block counts from the `transformer_blocks.{i}` / `single_transformer_blocks.{j}` indices.

Only the rotary axes are invisible in the weights: a `config.json` states them, else FLUX's
(16, 56, 56) is used when head_dim is 128. Every problem is a `NamiError` naming the file,
the key and the expected versus found shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..errors import NamiError, first_line
from ..model.transformer import NamiTransformer

GUIDANCE_PREFIX = "time_text_embed.guidance_embedder."
DOUBLE_PREFIX = "transformer_blocks."
SINGLE_PREFIX = "single_transformer_blocks."
FLUX_ROPE_AXES = (16, 56, 56)
FLUX_HEAD_DIM = 128
SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# Single weight files looked for in a transformer folder, in this order.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "pytorch_model_fsdp.bin", "diffusion_pytorch_model.bin")
# Config fields compared between a config.json and the weights.
SHAPE_FIELDS = (
    "in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
    "joint_attention_dim", "pooled_projection_dim",
)


def torch_load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict (tensors only) from `path`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean the same thing here
        first = first_line(exc)
        raise NamiError(f"{path}: cannot read the state dict ({first})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NamiError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return dict(state)


class FluxWeights:
    """A FLUX-keyed state dict held in one file or in safetensors shards.

    Shapes are read without loading tensors where the format allows (safetensors), so a
    12B FLUX checkpoint can be checked and cut without holding it in memory. `label`
    names the file(s) in error messages.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._files: dict[str, Path] = {}
        self._tensors: dict[str, torch.Tensor] = {}

    @classmethod
    def from_files(cls, files: Iterable[Path], label: str | None = None) -> "FluxWeights":
        files = list(files)
        weights = cls(label or ", ".join(str(f) for f in files))
        for path in files:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    with safe_open(str(path), framework="pt") as handle:
                        for key in handle.keys():
                            weights._shapes[key] = tuple(handle.get_slice(key).get_shape())
                            weights._files[key] = path
                except Exception as exc:
                    raise NamiError(f"{path}: cannot read safetensors ({str(exc).strip().splitlines()[0]})") from None
            else:
                for key, value in torch_load_state_dict(path).items():
                    weights._tensors[key] = value
                    weights._shapes[key] = tuple(value.shape)
        return weights

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], label: str) -> "FluxWeights":
        weights = cls(label)
        for key, value in state.items():
            weights._tensors[key] = value
            weights._shapes[key] = tuple(value.shape)
        return weights

    @classmethod
    def from_folder(cls, folder: Path) -> "FluxWeights":
        """The weights of a transformer folder: sharded safetensors (with their index), else the
        first of `WEIGHT_FILES`, else its only `*.safetensors` / `*.bin` file."""
        index = folder / SAFETENSORS_INDEX
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise NamiError(f"{index}: not a safetensors index (no weight_map)") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise NamiError(f"{folder / missing[0]}: missing (listed in {index.name})")
            return cls.from_files([folder / s for s in shards], str(index))
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return cls.from_files([folder / name])
        candidates = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        if len(candidates) == 1:
            return cls.from_files(candidates)
        if not candidates:
            raise NamiError(f"{folder}: no transformer weights (expected one of {', '.join(WEIGHT_FILES)})")
        raise NamiError(f"{folder}: {len(candidates)} weight files and no {SAFETENSORS_INDEX}; keep one")

    def keys(self) -> list[str]:
        return list(self._shapes)

    def __contains__(self, key: str) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def tensors(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """Load the named tensors (only those)."""
        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            if key in self._tensors:
                out[key] = self._tensors[key]
            else:
                by_file.setdefault(self._files[key], []).append(key)
        if by_file:
            from safetensors import safe_open

            for path, names in by_file.items():
                with safe_open(str(path), framework="pt") as handle:
                    for key in names:
                        out[key] = handle.get_tensor(key)
        return out


def _block_count(weights: FluxWeights, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = sorted({int(m.group(1)) for key in weights.keys() if (m := pattern.match(key))})
    if indices != list(range(len(indices))):
        raise NamiError(f"{weights.label}: {prefix.rstrip('.')} indices {indices} are not 0..{len(indices) - 1}")
    return len(indices)


def _matrix(weights: FluxWeights, key: str) -> tuple[int, int]:
    if key not in weights:
        raise NamiError(
            f"{weights.label}: no {key}; not a FLUX transformer state dict "
            "(diffusers FluxTransformer2DModel key names expected)"
        )
    shape = weights.shape(key)
    if len(shape) != 2:
        raise NamiError(f"{weights.label}: {key} expected a 2-D weight, found shape {shape}")
    return shape  # type: ignore[return-value]


def infer_flux_config(weights: FluxWeights) -> dict[str, Any]:
    """`FluxTransformer2DModel` arguments read off the weight shapes (all but `axes_dims_rope`)."""
    width, in_channels = _matrix(weights, "x_embedder.weight")
    _, joint_dim = _matrix(weights, "context_embedder.weight")
    _, pooled_dim = _matrix(weights, "time_text_embed.text_embedder.linear_1.weight")
    out_channels, _ = _matrix(weights, "proj_out.weight")
    num_layers = _block_count(weights, DOUBLE_PREFIX)
    num_single = _block_count(weights, SINGLE_PREFIX)
    if num_layers + num_single == 0:
        raise NamiError(f"{weights.label}: no transformer_blocks.* or single_transformer_blocks.* keys")
    norm_key = f"{DOUBLE_PREFIX}0.attn.norm_q.weight" if num_layers else f"{SINGLE_PREFIX}0.attn.norm_q.weight"
    if norm_key not in weights:
        raise NamiError(f"{weights.label}: no {norm_key} (the per-head QK norm that gives the head dim)")
    head_dim = weights.shape(norm_key)[0]
    if width % head_dim:
        raise NamiError(
            f"{weights.label}: {norm_key} expected a head dim dividing the width {width}, found shape ({head_dim},)"
        )
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": None if out_channels == in_channels else out_channels,
        "num_layers": num_layers,
        "num_single_layers": num_single,
        "attention_head_dim": head_dim,
        "num_attention_heads": width // head_dim,
        "joint_attention_dim": joint_dim,
        "pooled_projection_dim": pooled_dim,
        "guidance_embeds": any(k.startswith(GUIDANCE_PREFIX) for k in weights.keys()),
    }


def read_config(path: Path) -> dict[str, Any] | None:
    """A JSON config file, or None when it does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NamiError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise NamiError(f"{path}: expected a JSON object")
    return data


def resolve_flux_config(weights: FluxWeights, config: dict[str, Any] | None, config_label: str) -> dict[str, Any]:
    """The model shape: inferred from the weights, checked against `config` when there is one.

    Returns `FluxTransformer2DModel` arguments including `axes_dims_rope` and `guidance_embeds`.
    """
    inferred = infer_flux_config(weights)
    head_dim = inferred["attention_head_dim"]
    if config is None:
        if head_dim != FLUX_HEAD_DIM:
            raise NamiError(
                f"{config_label}: missing; the rotary axes cannot be read off the weights and FLUX's "
                f"{list(FLUX_ROPE_AXES)} need attention_head_dim {FLUX_HEAD_DIM}, found {head_dim}"
            )
        return {**inferred, "axes_dims_rope": FLUX_ROPE_AXES}
    for key in SHAPE_FIELDS:
        if key in config and config[key] is not None and int(config[key]) != inferred[key]:
            raise NamiError(f"{weights.label}: {key} expected {config[key]} (from {config_label}), found {inferred[key]}")
    if int(config.get("patch_size", 1)) != 1:
        raise NamiError(
            f"{config_label}: patch_size expected 1 (tokens are packed 2x2 outside the model), found {config['patch_size']}"
        )
    axes = tuple(int(a) for a in config.get("axes_dims_rope", FLUX_ROPE_AXES))
    if sum(axes) != head_dim:
        raise NamiError(f"{config_label}: axes_dims_rope {list(axes)} expected to sum to attention_head_dim {head_dim}")
    return {**inferred, "axes_dims_rope": axes}


def nami_kwargs(flux_config: Mapping[str, Any], stage_ends: Iterable[int]) -> dict[str, Any]:
    """`NamiTransformer` arguments for a FLUX shape and a stage plan (no guidance embedder)."""
    return {
        "patch_size": 1,
        "in_channels": int(flux_config["in_channels"]),
        "out_channels": flux_config.get("out_channels"),
        "num_layers": int(flux_config["num_layers"]),
        "num_single_layers": int(flux_config["num_single_layers"]),
        "attention_head_dim": int(flux_config["attention_head_dim"]),
        "num_attention_heads": int(flux_config["num_attention_heads"]),
        "joint_attention_dim": int(flux_config["joint_attention_dim"]),
        "pooled_projection_dim": int(flux_config["pooled_projection_dim"]),
        "axes_dims_rope": tuple(int(a) for a in flux_config["axes_dims_rope"]),
        "stage_ends": tuple(int(e) for e in stage_ends),
        "prediction": "velocity",
    }


def _meta_model(kwargs: Mapping[str, Any]) -> NamiTransformer:
    with torch.device("meta"):
        return NamiTransformer(**kwargs)


def check_shapes(found: Mapping[str, tuple[int, ...]], kwargs: Mapping[str, Any], label: str) -> None:
    """Every key of a `NamiTransformer(**kwargs)` present with its shape, and nothing else.

    Raises one `NamiError` naming the first problem (and how many more there are).
    """
    expected = {k: tuple(v.shape) for k, v in _meta_model(kwargs).state_dict().items()}
    problems = []
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"{key} expected shape {shape}, found none (missing)")
        elif tuple(found[key]) != shape:
            problems.append(f"{key} expected shape {shape}, found {tuple(found[key])}")
    problems += [
        f"{key} (shape {tuple(found[key])}) is not a FluxTransformer2DModel key" for key in found if key not in expected
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise NamiError(f"{label}: {problems[0]}{more}")


def build_transformer(tensors: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]) -> NamiTransformer:
    """A `NamiTransformer(**kwargs)` holding `tensors` (shapes already checked), in their dtype."""
    model = _meta_model(kwargs)
    model.load_state_dict(dict(tensors), strict=True, assign=True)
    return model.eval()


def model_keys(weights: FluxWeights) -> list[str]:
    """The keys a `NamiTransformer` takes: all but a guidance embedder (NAMI has no guidance input)."""
    return [k for k in weights.keys() if not k.startswith(GUIDANCE_PREFIX)]


def checked_kwargs(weights: FluxWeights, flux_config: Mapping[str, Any], stage_ends: Iterable[int]) -> dict[str, Any]:
    """`NamiTransformer` arguments for all blocks of `weights` (shape `flux_config`, from
    `resolve_flux_config`) with `stage_ends`, after checking every key and shape."""
    kwargs = nami_kwargs(flux_config, stage_ends)
    check_shapes({k: weights.shape(k) for k in model_keys(weights)}, kwargs, weights.label)
    return kwargs
