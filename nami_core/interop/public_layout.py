"""The public NAMI-T2I checkpoint directory (docs/method.md §2, §5) -> a `SamplingPipeline`.

Layout (no `model_index.json`):

    transformer/      diffusers FluxTransformer2DModel state dict: pytorch_model_fsdp.bin
                      (torch.save) or safetensors; config.json optional
    bridge_flow.bin   the bridge jump: `scale` (K-1 scalars), `shift.{k}` (1, C, s_{k+1}, s_{k+1})
                      with s_{k+1} the latent side of stage k+2 (nami-2b: 64 and 128)
    vae/              diffusers AutoencoderKL (FLUX: 16 latent channels, f8)
    mclip/            multilingual CLIP (a BERT text tower): tokenizer/ + clip_text_encoder/ as
                      released, or one flat folder
    mt5/              mT5 encoder + tokenizer (tokenizer.json, or only spiece.model as released)
    nami_layout.json  optional, not part of the release: {"stage_ends": [...], "resolutions": [...]}

How the pieces not stored in the release are set:

* stage plan: `nami_layout.json` "stage_ends" if given; otherwise an 8 double + 14 single
  block transformer gets the release's cumulative ends (9, 16, 22): stage k runs the 8 double
  blocks and the first 1, 8 or 14 single blocks. Any other depth is an error asking for the
  override, since the paper defines no rule for other depths;
* stage resolutions: the bridge fixes them. `shift.{k}` has the latent grid of stage k+2,
  so with the VAE's downsampling f the resolutions are (s_1/2, s_1, 2 s_1, ...) * f
  (nami-2b with f8: 256, 512, 1024); "resolutions" in `nami_layout.json` states them instead
  and the bridge is checked against them;
* text, as the release's inference code encodes it (`RELEASE_TEXT`): mT5 over 256 padded
  tokens with no attention mask, its last hidden state as the sequence; mCLIP over 77 tokens
  with its mask, the first token as the pooled vector; and a transformer that attends to the
  whole padded sequence (`text_padding="none"`);
* flow: the public scheduler's integer grid (`grid="public"`, see `PublicGrid`), windows
  1:1:1, gamma 1/3, bridge jumps, 10 Euler steps per stage and guidance 3 by default.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import FlowConfig, get_preset, validate_stage_ends
from ..errors import ConfigError, NamiError
from ..checksums import new_artefact
from ..text.folders import locate_part
from .flux_state import (
    FluxWeights,
    build_transformer,
    checked_kwargs,
    model_keys,
    read_config,
    resolve_flux_config,
    torch_load_state_dict,
)

PARTS = {
    "transformer": "the FluxTransformer2DModel weights",
    "bridge_flow.bin": "the bridge jump weights",
    "vae": "the FLUX AutoencoderKL",
    "mclip": "the multilingual CLIP (BERT) tokenizer and text tower",
    "mt5": "the mT5 tokenizer and encoder",
}
TEXT_PARTS = ("mclip", "mt5")
# Files that mark a directory as the public layout rather than a broken nami model directory.
MARKERS = ("bridge_flow.bin", "mclip", "mt5", "transformer/pytorch_model_fsdp.bin")
LAYOUT_OVERRIDE = "nami_layout.json"
OVERRIDE_FIELDS = ("stage_ends", "resolutions")
# How the release encodes prompts (`NamiTextEncoder` settings; paths relative to the model directory).
RELEASE_TEXT = {"spec": "mt5:mt5,mclip:mclip", "max_tokens": 256, "pooled_max_tokens": 77,
                "sequence_attention_mask": False, "pooled_source": "first-token"}
RELEASE_TEXT_PADDING = "none"
STEPS_PER_STAGE = 10
DEFAULT_CFG = 3.0
RELEASE_PRESET = "nami-2b"
TOKEN_PATCH = 2


def is_public_layout(path: Path) -> bool:
    """No `model_index.json`, and at least one file only the public layout has."""
    path = Path(path)
    return not (path / "model_index.json").is_file() and any((path / m).exists() for m in MARKERS)


def check_public_parts(path: Path) -> None:
    """Every part of the layout is present (cheap: nothing is read)."""
    path = Path(path)
    for name, what in PARTS.items():
        if not (path / name).exists():
            raise NamiError(
                f"{path / name}: missing ({what}); the public NAMI-T2I layout has "
                "transformer/, bridge_flow.bin, vae/, mclip/ and mt5/"
            )
    if not (path / "vae" / "config.json").is_file():
        raise NamiError(f"{path / 'vae' / 'config.json'}: missing ({PARTS['vae']})")
    for name in TEXT_PARTS:
        locate_part(path / name)


def read_override(path: Path) -> dict[str, Any]:
    data = read_config(path / LAYOUT_OVERRIDE) or {}
    unknown = sorted(set(data) - set(OVERRIDE_FIELDS))
    if unknown:
        raise NamiError(f"{path / LAYOUT_OVERRIDE}: unknown field(s) {', '.join(unknown)}; use {', '.join(OVERRIDE_FIELDS)}")
    return data


def release_stage_ends(flux_config: dict[str, Any], override: dict[str, Any], root: Path) -> tuple[int, ...]:
    """The stage plan: the override's, else the release's for its 8 + 14 blocks (see module doc)."""
    if "stage_ends" in override:
        depth = flux_config["num_layers"] + flux_config["num_single_layers"]
        try:
            stage_ends = tuple(int(e) for e in override["stage_ends"])
            validate_stage_ends(stage_ends, depth)
        except (ConfigError, TypeError, ValueError) as exc:
            raise NamiError(f"{root / LAYOUT_OVERRIDE}: {exc}") from None
        return stage_ends
    preset = get_preset(RELEASE_PRESET).model
    blocks = (flux_config["num_layers"], flux_config["num_single_layers"])
    if blocks == (preset.double_blocks, preset.single_blocks):
        return preset.stage_ends
    raise NamiError(
        f"{root / LAYOUT_OVERRIDE}: missing; the release defines stage ends only for {preset.double_blocks} double + "
        f"{preset.single_blocks} single blocks ({', '.join(map(str, preset.stage_ends))}), found {blocks[0]} + "
        f"{blocks[1]}; write {{\"stage_ends\": [...]}} there"
    )


def _hidden_size(config: dict[str, Any]) -> int | None:
    for key in ("d_model", "hidden_size"):
        if config.get(key) is not None:
            return int(config[key])
    return None


def check_text_and_vae(root: Path, flux_config: dict[str, Any]) -> tuple[int, int]:
    """Text encoder widths and VAE channels against the transformer. Returns (latent channels, downsample)."""
    joint, pooled = flux_config["joint_attention_dim"], flux_config["pooled_projection_dim"]
    for name, key, want, weight in (("mt5", "d_model", joint, "context_embedder.weight"),
                                    ("mclip", "hidden_size", pooled, "time_text_embed.text_embedder.linear_1.weight")):
        config_file = locate_part(root / name).config_file
        found = _hidden_size(read_config(config_file) or {})
        if found != want:
            raise NamiError(
                f"{config_file}: {key} expected {want} (the transformer's {weight} takes {want} "
                f"features), found {found}"
            )
    vae = read_config(root / "vae" / "config.json") or {}
    channels = int(vae.get("latent_channels", 4))
    in_channels = flux_config["in_channels"]
    if channels * TOKEN_PATCH**2 != in_channels:
        raise NamiError(
            f"{root / 'vae' / 'config.json'}: latent_channels expected {in_channels // TOKEN_PATCH**2} (the transformer's "
            f"x_embedder.weight takes {in_channels} = C x {TOKEN_PATCH}x{TOKEN_PATCH} features), found {channels}"
        )
    downsample = 2 ** (len(vae.get("block_out_channels", (64,))) - 1)
    return channels, downsample


def read_bridge(
    path: Path, num_stages: int, channels: int, sides: list[int] | None
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """`bridge_flow.bin` checked against K stages, C latent channels and (if given) the latent
    sides of stages 2..K. Returns (state dict for `BridgeJump`, sides); without `sides` they
    are read off `shift.0` (stage 2) and double per stage."""
    jumps = num_stages - 1
    state = torch_load_state_dict(path)
    wanted = ["scale"] + [f"shift.{k}" for k in range(jumps)]
    if sorted(state) != sorted(wanted):
        raise NamiError(f"{path}: keys expected {wanted} (a {num_stages}-stage bridge), found {sorted(state)}")
    scale = state["scale"]
    if scale.numel() != jumps:
        raise NamiError(f"{path}: scale expected {jumps} scalars (one per jump), found shape {tuple(scale.shape)}")
    if sides is None:
        first = tuple(state["shift.0"].shape)
        if len(first) != 4 or first[2] != first[3] or first[2] % (2 * TOKEN_PATCH):
            raise NamiError(
                f"{path}: shift.0 expected shape (1, {channels}, s, s) with s a multiple of {2 * TOKEN_PATCH} "
                f"(stage 1 has side s/2 in {TOKEN_PATCH}x{TOKEN_PATCH} tokens), found {first}"
            )
        sides = [first[2] * 2**k for k in range(jumps)]
    for k in range(jumps):
        expected = (1, channels, sides[k], sides[k])
        found = tuple(state[f"shift.{k}"].shape)
        if found != expected:
            raise NamiError(f"{path}: shift.{k} expected shape {expected}, found {found}")
    bridge = {"scale": scale.reshape(jumps).float()}
    bridge.update({f"shift.{k}": state[f"shift.{k}"].float() for k in range(jumps)})
    return bridge, sides


@dataclass
class PublicLayout:
    """A checked public NAMI-T2I directory; `load()` builds the pipeline."""

    root: Path
    weights: FluxWeights
    flux_config: dict[str, Any]
    transformer_kwargs: dict[str, Any]
    stage_ends: tuple[int, ...]
    resolutions: tuple[int, ...]
    latent_channels: int
    bridge_state: dict[str, torch.Tensor]

    @classmethod
    def inspect(cls, root: Path) -> "PublicLayout":
        """Check every part (shapes, widths, channels, stage plan) before anything big is built."""
        root = Path(root)
        check_public_parts(root)
        override = read_override(root)
        weights = FluxWeights.from_folder(root / "transformer")
        flux = resolve_flux_config(weights, read_config(root / "transformer" / "config.json"),
                                   str(root / "transformer" / "config.json"))
        stage_ends = release_stage_ends(flux, override, root)
        if len(stage_ends) < 2:
            raise NamiError(
                f"{root / LAYOUT_OVERRIDE}: stage_ends expected at least 2 stages (the bridge jumps between them), "
                f"found {list(stage_ends)}"
            )
        kwargs = {**checked_kwargs(weights, flux, stage_ends), "text_padding": RELEASE_TEXT_PADDING}
        channels, downsample = check_text_and_vae(root, flux)
        sides = None
        if "resolutions" in override:
            try:
                flow = FlowConfig(resolutions=tuple(override["resolutions"]))
            except (ConfigError, TypeError, ValueError) as exc:
                raise NamiError(f"{root / LAYOUT_OVERRIDE}: {exc}") from None
            if len(flow.resolutions) != len(stage_ends) or flow.resolutions[0] % (downsample * TOKEN_PATCH):
                raise NamiError(
                    f"{root / LAYOUT_OVERRIDE}: resolutions expected {len(stage_ends)} sides, multiples of "
                    f"{downsample * TOKEN_PATCH} px, found {list(flow.resolutions)}"
                )
            sides = [r // downsample for r in flow.resolutions[1:]]
        bridge, sides = read_bridge(root / "bridge_flow.bin", len(stage_ends), channels, sides)
        resolutions = (sides[0] // 2 * downsample,) + tuple(s * downsample for s in sides)
        return cls(root, weights, flux, kwargs, stage_ends, resolutions, channels, bridge)

    def load(self, load_text_models: bool = True):
        """The `SamplingPipeline`: transformer (stored dtype, `text_padding="none"`), bridge, VAE codec,
        mT5 + mCLIP text encoder (`RELEASE_TEXT`, relative to the directory) and the public flow.

        `load_text_models=False` leaves the text encoder as its config only (widths from the
        checked configs), for writing the pipeline without holding mT5 in memory."""
        from ..codecs.flux_vae import FluxVAECodec
        from ..flow.jump import BridgeJump
        from ..flow.scheduler import NamiFlowScheduler
        from ..sampling_pipeline import SamplingPipeline
        from ..text.encoder import NamiTextEncoder

        transformer = build_transformer(self.weights.tensors(model_keys(self.weights)), self.transformer_kwargs)
        sides = [int(self.bridge_state[f"shift.{k}"].shape[-1]) for k in range(len(self.stage_ends) - 1)]
        bridge = BridgeJump(channels=self.latent_channels, sides=sides)
        bridge.load_state_dict(self.bridge_state)
        codec = FluxVAECodec.from_vae_path(self.root / "vae", patch_size=TOKEN_PATCH).eval()
        if load_text_models:
            text = NamiTextEncoder.load(**RELEASE_TEXT, base_dir=self.root)
        else:
            text = NamiTextEncoder(**RELEASE_TEXT, sequence_dim=self.flux_config["joint_attention_dim"],
                                   pooled_dim=self.flux_config["pooled_projection_dim"])
        scheduler = NamiFlowScheduler(
            resolutions=list(self.resolutions), window_ratios=[1.0] * len(self.stage_ends), grid="public",
            jump="bridge", default_steps=[STEPS_PER_STAGE] * len(self.stage_ends), default_cfg=DEFAULT_CFG,
            default_mode="nami",
        )
        return SamplingPipeline(transformer, scheduler, codec, text, bridge.eval())


def load_public_pipeline(root: Path):
    """`PublicLayout.inspect(root).load()`."""
    return PublicLayout.inspect(root).load()


def convert_public_layout(src: Path, out: Path, link_text: bool = False, overwrite: bool = False) -> PublicLayout:
    """Write the public directory `src` as a nami model directory `out` (`NamiPipeline.save_pretrained`:
    safetensors and configs, the VAE inside `codec/`, the bridge in `bridge/`) with mt5/ and mclip/
    copied in (or symlinked with `link_text`), so the text encoder spec resolves inside `out`. `out`
    follows the output policy (`output_targets`): a model directory there is replaced only with
    `overwrite`."""
    from ..output_targets import MODEL, check_out_folder

    out = check_out_folder(out, MODEL, {"source": src}, overwrite)
    layout = PublicLayout.inspect(src)
    from ..pipeline import NamiPipeline

    parts = layout.load(load_text_models=False).parts  # the text encoder is saved as its spec; its models are copied
    with new_artefact(out) as tmp:
        NamiPipeline(**parts).save_pretrained(tmp)
        for name in ("mt5", "mclip"):
            source = (Path(src) / name).resolve()
            if link_text:
                os.symlink(source, tmp / name, target_is_directory=True)
            else:
                shutil.copytree(source, tmp / name)
    return layout
