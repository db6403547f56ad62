"""FLUX-family initialisation: a FLUX transformer cut to a subset of its blocks, as a
transformer directory for `nami train --model OUT` (which loads `OUT/transformer`).

The source is a diffusers `FluxTransformer2DModel` folder (config.json + safetensors, sharded
or not), a pipeline folder holding one in `transformer/`, or a single checkpoint file read
with diffusers' `FluxTransformer2DModel.from_single_file` (which may need the network for
the config). From folders only the kept tensors are read.

Embedders and the final layer are kept as they are; the kept blocks keep their weights and
are renumbered (`block_selection`). Guidance-distilled FLUX (`guidance_embeds=True`) carries
`time_text_embed.guidance_embedder.*`; NAMI has no guidance input, so those are dropped and
reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import validate_stage_ends
from ..errors import NamiError, first_line
from ..checksums import new_artefact
from ..files import write_json_atomic
from ..runtime import non_finite
from .block_selection import BlockSelection, compact
from .flux_state import (
    GUIDANCE_PREFIX,
    FluxWeights,
    build_transformer,
    checked_kwargs,
    model_keys,
    nami_kwargs,
    read_config,
    resolve_flux_config,
)

REPORT_FILE = "convert_report.json"


@dataclass
class FluxConversion:
    """What `convert_flux` kept and dropped. Parameter counts are element counts."""

    source: str
    out: str
    source_blocks: tuple[int, int]  # (double, single) in the source
    kept_blocks: list[str]
    dropped_blocks: list[str]
    stage_ends: tuple[int, ...]
    kept_params: int
    dropped_block_params: int
    dropped_guidance_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_params(self) -> int:
        return self.dropped_block_params + self.dropped_guidance_params

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kept_blocks_compact"] = compact(self.kept_blocks)
        data["dropped_params"] = self.dropped_params
        return data


def open_flux_source(src: Path) -> tuple[FluxWeights, dict[str, Any] | None, str]:
    """(weights, config.json contents or None, the config's label for messages) of a FLUX transformer."""
    src = Path(src)
    if src.is_dir():
        folder = src
        if not (src / "config.json").is_file() and (src / "transformer").is_dir():
            folder = src / "transformer"
        return FluxWeights.from_folder(folder), read_config(folder / "config.json"), str(folder / "config.json")
    if src.is_file():
        from diffusers import FluxTransformer2DModel

        try:
            model = FluxTransformer2DModel.from_single_file(str(src))
        except Exception as exc:
            first = first_line(exc)
            raise NamiError(f"{src}: diffusers cannot read it as a single-file FLUX checkpoint ({first})") from None
        return FluxWeights.from_state_dict(model.state_dict(), str(src)), dict(model.config), f"{src} (its config)"
    raise NamiError(f"{src}: does not exist")


def convert_flux(src: Path, out: Path, stage_ends: Sequence[int], selection: BlockSelection | None = None,
                 overwrite: bool = False) -> FluxConversion:
    """Write `out/transformer` (a `NamiTransformer` with `stage_ends` over the kept blocks) and
    `out/convert_report.json`; `selection` None keeps every block. `out` follows the output policy
    (`output_targets`): an earlier conversion there is replaced only with `overwrite`."""
    from ..output_targets import FLUX_INIT, check_out_folder

    out = check_out_folder(out, FLUX_INIT, {"source": src}, overwrite)
    weights, config, config_label = open_flux_source(src)
    flux = resolve_flux_config(weights, config, config_label)
    n_double, n_single = flux["num_layers"], flux["num_single_layers"]
    checked_kwargs(weights, flux, (n_double + n_single,))  # the whole source is FLUX-shaped before it is cut

    selection = selection or BlockSelection.first(n_double, n_single)
    selection.check(n_double, n_single)
    stage_ends = tuple(int(e) for e in stage_ends)
    validate_stage_ends(stage_ends, selection.depth, "--stage-ends")

    renamed: dict[str, str] = {}  # converted key -> source key
    dropped_block_params = 0
    for key in model_keys(weights):
        new = selection.rename(key)
        if new is None:
            dropped_block_params += math.prod(weights.shape(key))
        else:
            renamed[new] = key
    guidance_params = sum(math.prod(weights.shape(k)) for k in weights.keys() if k.startswith(GUIDANCE_PREFIX))

    kwargs = nami_kwargs({**flux, "num_layers": len(selection.double), "num_single_layers": len(selection.single)},
                         stage_ends)
    source_tensors = weights.tensors(renamed.values())
    transformer = build_transformer({new: source_tensors[old] for new, old in renamed.items()}, kwargs)

    all_blocks = BlockSelection.first(n_double, n_single).names()
    kept = selection.names()
    report = FluxConversion(
        source=str(src), out=str(out), source_blocks=(n_double, n_single), kept_blocks=kept,
        dropped_blocks=[b for b in all_blocks if b not in kept], stage_ends=stage_ends,
        kept_params=sum(math.prod(weights.shape(k)) for k in renamed.values()),
        dropped_block_params=dropped_block_params, dropped_guidance_params=guidance_params,
    )
    if guidance_params:
        report.notes.append(
            f"dropped the guidance embedder (time_text_embed.guidance_embedder.*, {guidance_params} parameters): "
            "the source is guidance-distilled and NAMI has no guidance input"
        )

    state = transformer.state_dict()
    bad = non_finite(state)
    if bad:  # a damaged source: a model made of it would draw noise without a word
        raise NamiError(f"{src}: the kept weights hold non-finite values ({len(bad)} of {len(state)} tensors, "
                        f"e.g. {bad[0]}); the source is damaged, nothing was written")
    with new_artefact(out) as tmp:
        transformer.save_pretrained(tmp / "transformer")
        write_json_atomic(tmp / REPORT_FILE, report.to_dict())
    return report
