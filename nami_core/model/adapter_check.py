"""What a LoRA adapter must pass before it is applied to a model.

1. Its integrity record (`checksums.json` of its folder, or of the adapter folder holding its
   `ema/`) matches, when it has one.
2. Its tensors, after diffusers' own conversion of other formats (kohya, xlabs), are all LoRA
   matrices: `<module>.lora_A.weight` and `<module>.lora_B.weight`, in pairs. A renamed tensor, or a
   module with one matrix of the two, would otherwise be dropped and peft's random initialisation
   used in its place.
3. Every value is finite.
4. `adapter_config.json`, when present, agrees with the weights: its rank `r` is the rank of each
   pair (unless a `rank_pattern` varies it) and every module is one its `target_modules` names.
5. Its modules are in the model: none at all is an error (an adapter for another model); some
   missing is a warning saying how many of how many (diffusers would ignore them quietly).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..checksums import MANIFEST, verify_artefact
from ..errors import NamiError, first_line

PAIR = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")
EXTRA = re.compile(r"^(?P<module>.+)\.(alpha|lora_magnitude_vector(?:\.[^.]+)?|lora_(?:A|B)(?:\.[^.]+)?\.bias)$")
PREFIX = "transformer."


def verify_adapter_files(path: Path) -> None:
    """The adapter's integrity record, its folder's own or (for `ADAPTER/ema`) its parent's."""
    folder = path if path.is_dir() else path.parent
    if (folder / MANIFEST).is_file():
        verify_artefact(folder, "adapter")
    elif (folder.parent / MANIFEST).is_file() and (folder.parent / "pytorch_lora_weights.safetensors").is_file():
        verify_artefact(folder.parent, "adapter", prefix=f"{folder.name}/")


def read_adapter(pipe, path: Path, spec: str) -> dict[str, torch.Tensor]:
    """The adapter's transformer tensors by module path (diffusers' conversion applied); NamiError
    for a file that cannot be read."""
    try:
        state = pipe.lora_state_dict(str(path))
    except NamiError:
        raise
    except Exception as exc:  # safetensors, torch and diffusers each fail on a damaged file their own way
        raise NamiError(f"--lora {spec}: cannot read the adapter ({type(exc).__name__}: {first_line(exc)[:200]})") from None
    if isinstance(state, tuple):
        state = state[0]
    return {key[len(PREFIX):] if key.startswith(PREFIX) else key: value for key, value in state.items()
            if not key.startswith("text_encoder.")}


def adapter_pairs(state: dict[str, torch.Tensor], spec: str) -> dict[str, dict[str, torch.Tensor]]:
    """module -> {"lora_A": tensor, "lora_B": tensor}; NamiError for names that are not LoRA
    matrices and for modules with one matrix of the pair."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    strangers = []
    for key, value in state.items():
        found = PAIR.match(key)
        if found is not None:
            pairs.setdefault(found["module"], {})[found["part"]] = value
        elif EXTRA.match(key) is None:
            strangers.append(key)
    if strangers:
        raise NamiError(f"--lora {spec}: {len(strangers)} of its {len(state)} tensors are not LoRA matrices "
                        f"(e.g. {strangers[0]}): renamed or from another format")
    half = sorted(module for module, parts in pairs.items() if len(parts) != 2)
    if half:
        missing = "lora_A" if "lora_A" not in pairs[half[0]] else "lora_B"
        raise NamiError(f"--lora {spec}: {len(half)} of its {len(pairs)} modules lack {missing} (e.g. {half[0]}); "
                        "the adapter is incomplete (peft would draw the missing matrices at random)")
    if not pairs:
        raise NamiError(f"--lora {spec}: the adapter holds no LoRA matrices for the transformer")
    return pairs


def check_config(folder: Path, pairs: dict[str, dict[str, torch.Tensor]], spec: str) -> None:
    """`adapter_config.json` (when present) against the weights: rank and target modules."""
    from ..user_files import read_json_object

    path = folder / "adapter_config.json"
    if not path.is_file():
        return
    config = read_json_object(path, "adapter config")
    for module, parts in pairs.items():
        rank_a, rank_b = parts["lora_A"].shape[0], parts["lora_B"].shape[-1]
        if rank_a != rank_b:
            raise NamiError(f"--lora {spec}: module {module} has lora_A of rank {rank_a} but lora_B of rank {rank_b}")
    rank = config.get("r")
    if not config.get("rank_pattern") and isinstance(rank, int):
        other = next((m for m, parts in pairs.items() if parts["lora_A"].shape[0] != rank), None)
        if other is not None:
            raise NamiError(f"--lora {spec}: {path} says r={rank}, but its weights have rank "
                            f"{pairs[other]['lora_A'].shape[0]} (e.g. {other}); the config and the weights disagree")
    targets = config.get("target_modules")
    if isinstance(targets, list) and targets:
        loose = next((m for m in pairs if not any(m == t or m.endswith(f".{t}") for t in targets)), None)
        if loose is not None:
            raise NamiError(f"--lora {spec}: {path} targets {', '.join(map(str, targets))}, but the weights hold "
                            f"{loose}; the config and the weights disagree")
    elif isinstance(targets, str) and targets:
        loose = next((m for m in pairs if re.fullmatch(targets, m) is None), None)
        if loose is not None:
            raise NamiError(f"--lora {spec}: {path} targets {targets!r}, but the weights hold {loose}")


def check_adapter(pipe, path: Path, spec: str) -> list[str]:
    """Check the adapter at `path` for `pipe`'s transformer (module docstring); returns the warnings
    (one line each) and raises NamiError for what cannot be applied."""
    from ..runtime import non_finite
    from .lora import adapter_folder, read_lora_info

    verify_adapter_files(path)
    state = read_adapter(pipe, path, spec)
    pairs = adapter_pairs(state, spec)
    bad = non_finite(state)
    if bad:
        raise NamiError(f"--lora {spec}: the adapter holds non-finite values ({len(bad)} of {len(state)} tensors, "
                        f"e.g. {bad[0]}); it is damaged")
    check_config(adapter_folder(path), pairs, spec)
    modules = {name for name, _ in pipe.transformer.named_modules()}
    absent = sorted(m for m in pairs if m not in modules)
    if len(absent) == len(pairs):
        base = read_lora_info(adapter_folder(path)).get("base_model")
        raise NamiError(f"--lora {spec}: none of its {len(pairs)} modules is in this model (e.g. {absent[0]}): "
                        "it was trained on another model" + (f", {base}" if base else ""))
    if absent:
        return [f"--lora {spec}: {len(absent)} of its {len(pairs)} modules are not in this model (e.g. {absent[0]}) "
                "and are ignored; the rest applies"]
    return []
