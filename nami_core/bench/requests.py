"""What `nami bench latency` and `nami bench train` are asked for: defaults and checks, no torch.

Both requests check themselves at construction, so a bad option is one error line before torch is
imported; text given for the list fields ("256,512", "nami,flux-base", "4:2:1") is parsed there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import (ATTENTION_BACKENDS, CHECKPOINTING, DEVICES, DTYPE_CHOICES, MAX_BATCH_SIZE, MAX_REPEATS, MAX_SIDE,
                      MAX_TEXT_TOKENS, MODES, PRESETS, TEXT_PADDINGS, check_fields, check_mode, get_preset, guidance_scales,
                      number_text, one_of, parse_int_list, parse_name_list, parse_weights, split_steps,
                      validate_resolutions, within)
from ..flow.saved import read_saved_model
from ..input_paths import MODEL, check_reads, reads
from ..model_paths import resolve_model_dir
from ..errors import NamiError

DEFAULT_PRESET = "nami-2b"  # the model shape benchmarked without --preset or --model
DEFAULT_RESOLUTIONS = (256, 512, 1024, 2048)
DEFAULT_MODES = tuple(reversed(MODES))  # the baseline first: flux-base, flow-only, nami
DEFAULT_STAGE_MIX = (4.0, 2.0, 1.0)
DEFAULT_PROMPT_TOKENS = 12  # real tokens of a benchmark prompt, as a short caption has


@dataclass
class LatencyRequest:
    """The options of `nami bench latency`. `dtype` "auto" is bf16 on CUDA, fp32 on the CPU."""

    preset: str | None = field(default=None, metadata={**one_of(tuple(PRESETS)), "shown": f"{DEFAULT_PRESET}, without --model"})
    model_dir: str | None = field(default=None, metadata=reads(MODEL, "--model"))
    resolutions: tuple[int, ...] | str = field(default=DEFAULT_RESOLUTIONS, metadata=within(1, MAX_SIDE))
    steps: str = "30"
    batch_size: int = field(default=1, metadata=within(1, MAX_BATCH_SIZE))
    modes: tuple[str, ...] | str = DEFAULT_MODES
    dtype: str = field(default="auto", metadata=one_of(DTYPE_CHOICES))
    attention: tuple[str, ...] | str = field(default=("auto",), metadata=one_of(ATTENTION_BACKENDS))
    compile: bool = False
    device: str = field(default="auto", metadata=one_of(DEVICES))
    warmup: int = field(default=1, metadata=within(0, MAX_REPEATS))
    repeats: int = field(default=3, metadata=within(1, MAX_REPEATS))
    cfg: float | str = 3.0
    text_tokens: int = field(default=256, metadata=within(1, MAX_TEXT_TOKENS))
    prompt_tokens: int = field(default=DEFAULT_PROMPT_TOKENS, metadata=within(1, MAX_TEXT_TOKENS))
    text_padding: str | None = field(default=None, metadata={**one_of(TEXT_PADDINGS), "shown": "the model's"})
    count_ops: bool = True
    include_codec: bool = False
    include_text: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.resolutions = parse_int_list(self.resolutions, "--resolutions") if self.resolutions else ()
        self.modes = parse_name_list(self.modes, "--modes")
        self.attention = parse_name_list(self.attention, "--attention")
        scales = guidance_scales(self.cfg, "--cfg")
        if len(scales) != 1:
            raise NamiError(f"--cfg: the benchmark times one guidance scale for every stage, got {self.cfg}")
        self.cfg = scales[0]
        self.validate()

    def validate(self) -> None:
        check_fields(self)
        if self.preset is not None and self.model_dir is not None:
            raise NamiError("give --preset or --model, not both")
        if not self.modes:
            raise NamiError(f"--modes is empty; choose from {', '.join(MODES)}")
        for mode in self.modes:
            check_mode(mode)
        if not self.resolutions:
            raise NamiError("--resolutions is empty")
        if len(set(self.resolutions)) != len(self.resolutions):
            raise NamiError(f"--resolutions lists a resolution twice: {','.join(map(str, self.resolutions))}")
        if not self.attention:  # a name given twice: parse_name_list
            raise NamiError(f"--attention must list each backend once, got {','.join(self.attention)}")
        check_reads(self)
        split_steps(self.steps, self.num_stages(), "--steps")

    def num_stages(self) -> int:
        """The stages of the model benchmarked (its configs; no weights)."""
        if self.model_dir is None:
            return len(get_preset(self.preset or DEFAULT_PRESET).model.stage_ends)
        return len(read_saved_model(resolve_model_dir(self.model_dir)).model.stage_ends)


@dataclass
class TrainBenchRequest:
    """The options of `nami bench train`. `stages` default to the preset's; `dtype` "auto" is bf16
    on CUDA, fp32 on the CPU; `stage_mix` is one weight per stage ("4:2:1")."""

    preset: str | None = field(default=None, metadata={**one_of(tuple(PRESETS)), "shown": DEFAULT_PRESET})
    stages: tuple[int, ...] | str | None = field(default=None, metadata={"shown": "the preset's"})
    mode: str = field(default="nami", metadata=one_of(MODES))
    stage_mix: tuple[float, ...] | str = field(
        default=DEFAULT_STAGE_MIX, metadata={"shown": ":".join(map(number_text, DEFAULT_STAGE_MIX))})
    batch_size: int = field(default=8, metadata=within(1, MAX_BATCH_SIZE))
    dtype: str = field(default="auto", metadata=one_of(DTYPE_CHOICES))
    attention: str = field(default="auto", metadata=one_of(ATTENTION_BACKENDS))
    grad_checkpointing: str = field(default="none", metadata=one_of(CHECKPOINTING))
    compile: bool = False
    steps: int = field(default=10, metadata=within(1, MAX_REPEATS))
    warmup: int = field(default=2, metadata=within(0, MAX_REPEATS))
    device: str = field(default="auto", metadata=one_of(DEVICES))
    text_tokens: int = field(default=256, metadata=within(1, MAX_TEXT_TOKENS))
    prompt_tokens: int | None = field(default=None, metadata={"shown": f"{DEFAULT_PROMPT_TOKENS}, at most the slot"})
    realistic: bool = True
    only: tuple[str, ...] | None = None  # configuration names to run ("stage 3", "mix 4:2:1"); None: all
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stages is not None:
            self.stages = parse_int_list(self.stages, "--stages")
        self.validate()

    @property
    def real_tokens(self) -> int:
        """Real tokens of each caption: `prompt_tokens`, or 12 (at most the slot)."""
        return self.prompt_tokens if self.prompt_tokens is not None else min(DEFAULT_PROMPT_TOKENS, self.text_tokens)

    def validate(self) -> None:
        check_fields(self)
        if not 1 <= self.real_tokens <= self.text_tokens:
            raise NamiError(f"--prompt-tokens must be between 1 and --text-tokens ({self.text_tokens}), "
                            f"got {self.real_tokens}")
        if self.stages is not None:
            validate_resolutions(self.stages, "--stages")
        stages = self.stages if self.stages is not None else get_preset(self.preset or DEFAULT_PRESET).resolutions
        self.stage_mix = parse_weights(self.stage_mix, "--stage-mix", len(stages))
