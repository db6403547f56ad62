"""Configuration as data: model shape, stage plan, flow windows, named presets.

Every dataclass validates itself on construction and raises `ConfigError` naming
the bad field, so the CLI can print one line and exit.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import MISSING, Field, asdict, dataclass, fields, replace
from typing import Any, Iterable, Sequence

from .errors import ConfigError


@dataclass(frozen=True)
class ModeRule:
    """What a mode runs: every stage window or only the full-resolution one (`single_window`), and
    each stage's block prefix or all blocks (`nested_blocks`). `flow.plan.FlowPlan` applies it."""

    single_window: bool
    nested_blocks: bool


MODE_RULES = {
    "nami": ModeRule(single_window=False, nested_blocks=True),
    "flow-only": ModeRule(single_window=False, nested_blocks=False),
    "flux-base": ModeRule(single_window=True, nested_blocks=False),
}
MODES = tuple(MODE_RULES)
DTYPE_NAMES = ("fp32", "bf16", "fp16")  # the dtypes a tensor is kept in
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)  # --dtype where the device decides: bf16 on CUDA, fp32 on the CPU
DEVICES = ("auto", "cpu", "cuda")  # "cuda:N" names one GPU
ATTENTION_BACKENDS = ("auto", "native", "xformers", "flash")
CHECKPOINTING = ("none", "full", "last-stage", "auto")  # train/checkpointing.py says what each recomputes
TIMESTEP_SAMPLINGS = ("logit-normal", "uniform")  # how training draws the local ratio r
BASELINE_MODE = "flux-base"  # what `nami info` and `nami bench` measure reductions against
PAPER_TOTAL_STEPS = 30  # Euler steps per image in the paper's comparisons, split evenly over the stages
STEPS_PER_STAGE = 10  # Euler steps per stage a model samples with unless it records others
PREDICTIONS = ("velocity", "sample")
TEXT_POSITIONS = ("none", "ordered")
TEXT_PADDINGS = ("mask", "none")
GRIDS = ("exact", "public")
TIMESTEP_ROUNDINGS = ("none", "fp16")
JUMPS = ("renoise", "bridge")


# -- checks that request and config dataclasses declare on their fields ------------------------------
#
# `field(default=8, metadata=at_least(1))`, `metadata=within(1, MAX_BATCH_SIZE)`, `metadata=one_of(MODES)`
# or `metadata=in_range(0.0, 1.0, high_open=True)`: `check_fields(obj)` applies them and names the
# option (`--batch-size`, or `option=` given here), so every caller, the CLI and Python alike, gets the
# same check and the same message. A text field refuses an empty value unless `empty_means(...)` says
# what the empty string means. The help of an option shows its field's bounds (`bounds_text`).

MAX_BATCH_SIZE = 4096  # samples or images of one batch (a larger one is a typo, not a batch)
MAX_TEXT_TOKENS = 4096  # tokens of a text slot (T5 reads 512; the release pads to 256)
MAX_SIDE = 65536  # pixels of an image side or a stage resolution (a larger one is a typo, not an image)
MAX_STEP_COUNT = 1_000_000_000  # optimizer steps of a run, and the step counts tied to them (--save-every, ...)
MAX_REPEATS = 10_000  # timed or untimed rounds of a benchmark
MAX_SEED = 2**63 - 1  # seeds are 64-bit: 0 to 2^63 - 1
MAX_WEIGHT = 1e6  # a relative weight (stage mix, window ratio, loss weight, scene mix): larger ones are typos


def at_least(low: int, option: str | None = None) -> dict[str, Any]:
    """Field metadata: the value (each value of a tuple) is an integer of at least `low`."""
    return {"at_least": low, **({"option": option} if option else {})}


def within(low: int, high: int, option: str | None = None) -> dict[str, Any]:
    """Field metadata: the value (each value of a tuple) is an integer from `low` to `high`."""
    return {"at_least": low, "at_most": high, **({"option": option} if option else {})}


def in_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False, option: str | None = None) -> dict[str, Any]:
    """Field metadata: the value is a finite number in the interval from `low` to `high` (None: no
    bound on that side; `*_open`: the bound itself is excluded)."""
    return {"range": (low, high, low_open, high_open), **({"option": option} if option else {})}


def one_of(choices: Sequence[str], option: str | None = None) -> dict[str, Any]:
    """Field metadata: the value (each value of a tuple) is one of `choices`; for `DEVICES`,
    "cuda:N" too."""
    return {"one_of": tuple(choices), **({"option": option} if option else {})}


def empty_means(meaning: str) -> dict[str, Any]:
    """Field metadata: an empty text value is allowed and means `meaning` (as the help says)."""
    return {"empty": meaning}


def when_empty(hint: str) -> dict[str, Any]:
    """Field metadata: what the refusal of an empty text value tells to give instead."""
    return {"when_empty": hint}


def needs(other: str) -> dict[str, str]:
    """Field metadata: the option means something only when the field `other` is given too."""
    return {"needs": other}


def excludes(other: str) -> dict[str, str]:
    """Field metadata: the option and the field `other` say the same thing; give one of them."""
    return {"excludes": other}


def check_relations(obj: Any) -> None:
    """ConfigError for a field declared with `needs` given without its partner, or with `excludes`
    given beside it (None: not given); the error names both options."""
    by_name = {f.name: f for f in fields(obj)}
    for f in fields(obj):
        if getattr(obj, f.name) is None:
            continue
        other = f.metadata.get("needs")
        if other is not None and getattr(obj, other) is None:
            raise ConfigError(f"{option_of(f)} applies only with {option_of(by_name[other])}; give "
                              f"{option_of(by_name[other])} too, or leave {option_of(f)} out")
        other = f.metadata.get("excludes")
        if other is not None and getattr(obj, other) is not None:
            raise ConfigError(f"give {option_of(f)} or {option_of(by_name[other])}, not both")


def option_of(field: Field) -> str:
    """The command-line spelling of a request field: `batch_size` -> `--batch-size`."""
    return field.metadata.get("option") or "--" + field.name.replace("_", "-")


def is_choice(value: Any, choices: Sequence[str]) -> bool:
    if choices == DEVICES and isinstance(value, str) and re.fullmatch(r"cuda:[0-9]+", value):
        return True
    return value in choices


def check_fields(obj: Any) -> None:
    """Apply the checks `obj`'s dataclass fields declare (`at_least`, `within`, `in_range`,
    `one_of`) and refuse empty text (each item of a repeated option too) where no meaning is
    declared; None passes (it means "not given")."""
    for f in fields(obj):
        check_field(obj, f.name)


def check_field(obj: Any, name: str) -> None:
    """`check_fields` for the field `name` of `obj` alone (for a value needed before the others)."""
    f = obj.__dataclass_fields__[name]
    value = getattr(obj, name)
    if value is None:
        return
    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, str) and not item.strip() and "empty" not in f.metadata:
            hint = f.metadata.get("when_empty", "give a value, or leave it out for the default")
            raise ConfigError(f"{option_of(f)} is empty; {hint}")
        if "at_least" in f.metadata:
            check_at_least(option_of(f), item, f.metadata["at_least"])
        if "at_most" in f.metadata:
            check_at_most(option_of(f), item, f.metadata["at_most"])
        if "range" in f.metadata:
            check_range(option_of(f), item, *f.metadata["range"])
        if "one_of" in f.metadata:
            check_choice(option_of(f), item, f.metadata["one_of"])


def check_choice(option: str, value: Any, choices: Sequence[str]) -> None:
    """ConfigError unless `value` is one of `choices` (for `DEVICES`, "cuda:N" too), naming `option`."""
    if not is_choice(value, choices):
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def check_at_least(option: str, value: Any, low: int) -> None:
    """ConfigError unless `value` is an integer of at least `low`, naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        bound = "0 or more" if low == 0 else f"at least {low}"
        raise ConfigError(f"{option} must be {bound}, got {value!r}")


def check_at_most(option: str, value: Any, high: int | float) -> None:
    """ConfigError unless `value` is a number of at most `high`, naming `option`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value <= high:
        raise ConfigError(f"{option} must be at most {bound_text(high)}, got {value!r}")


def check_range(option: str, value: Any, low: float | None, high: float | None, low_open: bool = False,
                high_open: bool = False) -> None:
    """ConfigError unless `value` is a finite number in the interval `in_range` declares, naming `option`."""
    fits = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and (low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high)))
    if not fits:
        shown = number_text(float(value)) if isinstance(value, (int, float)) else repr(value)
        raise ConfigError(f"{option} must be {interval_text(low, high, low_open, high_open)}, got {shown}")


def bound_text(value: int | float) -> str:
    """A bound as the help and the errors show it: 4096 -> "4,096", 1e6 -> "1,000,000"."""
    return f"{int(value):,}" if float(value).is_integer() else number_text(value)


def interval_text(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """`in_range`'s interval in words: "in [0, 1)", "above 0", "at most 1"."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{number_text(low)}, {number_text(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"above {number_text(low)}" if low_open else f"at least {number_text(low)}"
    if high is not None:
        return f"below {number_text(high)}" if high_open else f"at most {number_text(high)}"
    return "a finite number"


def bounds_text(metadata: Any) -> str | None:
    """What the help says about a field's bounds: "1 to 4,096", "in [0, 1)"; None when it declares
    no upper bound (a lower bound of 0 or 1 goes without saying)."""
    if "at_most" in metadata:
        return f"{bound_text(metadata.get('at_least', 0))} to {bound_text(metadata['at_most'])}"
    if "range" in metadata:
        low, high, low_open, high_open = metadata["range"]
        words = [f"{'above' if low_open else 'at least'} {number_text(low)}" if low is not None else None,
                 f"{'below' if high_open else 'at most'} {number_text(high)}" if high is not None else None]
        return ", ".join(w for w in words if w) or None
    return None


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name` (for callers that must say what it is)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not MISSING else f.default


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def integers(name: str, values: Any) -> tuple[int, ...]:
    """`values` as a tuple of ints; ConfigError naming `name` for anything else in it (3.5, "3",
    true): a list of integers is never rounded or parsed into one."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a list of integers, got {values!r}")
    values = tuple(values)
    exact = [v for v in values if isinstance(v, numbers.Integral) and not isinstance(v, bool)
             or isinstance(v, float) and v.is_integer()]
    if len(exact) != len(values):
        raise ConfigError(f"{name} must be a list of integers, got {list(values)!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a NAMI transformer (FLUX MM-DiT blocks cut into nested stage modules).

    `stage_ends` are cumulative block counts over the ordered list
    [double blocks..., single blocks...]: stage k runs blocks `[0, stage_ends[k])`.
    `text_positions` gives the text tokens' rotary ids: "none" puts them all at zero (FLUX, the
    public NAMI weights), "ordered" puts token k at (k, 0, 0) on the first rope axis, which image
    tokens leave at zero, so attention can tell the words' order apart.
    `text_padding` says how attention treats the padded end of the text sequence: "mask" (padded
    keys are masked, native nami models) or "none" (every token of the padded sequence is attended
    to, as the public NAMI-2B release does).
    """

    width: int
    heads: int
    double_blocks: int
    single_blocks: int
    stage_ends: tuple[int, ...]
    in_channels: int = 64
    text_dim: int = 4096
    pooled_dim: int = 768
    rope_axes: tuple[int, ...] = (16, 56, 56)
    prediction: str = "velocity"
    text_positions: str = "none"
    text_padding: str = "mask"

    def __post_init__(self) -> None:
        for name in ("width", "heads", "in_channels", "text_dim", "pooled_dim"):
            positive_int(name, getattr(self, name))
        for name in ("double_blocks", "single_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.depth == 0:
            raise ConfigError("double_blocks + single_blocks must be at least 1")
        if self.width % self.heads != 0:
            raise ConfigError(f"heads ({self.heads}) must divide width ({self.width})")
        object.__setattr__(self, "stage_ends", integers("stage_ends", self.stage_ends))
        object.__setattr__(self, "rope_axes", integers("rope_axes", self.rope_axes))
        validate_stage_ends(self.stage_ends, self.depth)
        if sum(self.rope_axes) != self.head_dim:
            raise ConfigError(
                f"rope_axes {list(self.rope_axes)} must sum to the head dim "
                f"width/heads = {self.head_dim}"
            )
        if any(a % 2 for a in self.rope_axes):
            raise ConfigError(f"rope_axes {list(self.rope_axes)} must all be even")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.text_positions not in TEXT_POSITIONS:
            raise ConfigError(
                f"text_positions must be one of {', '.join(TEXT_POSITIONS)}, got {self.text_positions!r}"
            )
        if self.text_padding not in TEXT_PADDINGS:
            raise ConfigError(f"text_padding must be one of {', '.join(TEXT_PADDINGS)}, got {self.text_padding!r}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def depth(self) -> int:
        return self.double_blocks + self.single_blocks

    @property
    def num_stages(self) -> int:
        return len(self.stage_ends)

    def transformer_kwargs(self) -> dict[str, Any]:
        """Arguments for `NamiTransformer(**kwargs)` (FluxTransformer2DModel names + stage plan)."""
        return dict(
            patch_size=1,
            in_channels=self.in_channels,
            out_channels=None,
            num_layers=self.double_blocks,
            num_single_layers=self.single_blocks,
            attention_head_dim=self.head_dim,
            num_attention_heads=self.heads,
            joint_attention_dim=self.text_dim,
            pooled_projection_dim=self.pooled_dim,
            axes_dims_rope=tuple(self.rope_axes),
            stage_ends=tuple(self.stage_ends),
            prediction=self.prediction,
            text_positions=self.text_positions,
            text_padding=self.text_padding,
        )

    @classmethod
    def from_transformer_config(cls, cfg: dict[str, Any]) -> "ModelConfig":
        """Inverse of `transformer_kwargs` (reads a saved `transformer/config.json`)."""
        heads = int(cfg["num_attention_heads"])
        return cls(
            width=heads * int(cfg["attention_head_dim"]),
            heads=heads,
            double_blocks=int(cfg["num_layers"]),
            single_blocks=int(cfg["num_single_layers"]),
            stage_ends=tuple(cfg.get("stage_ends") or (int(cfg["num_layers"]) + int(cfg["num_single_layers"]),)),
            in_channels=int(cfg["in_channels"]),
            text_dim=int(cfg["joint_attention_dim"]),
            pooled_dim=int(cfg["pooled_projection_dim"]),
            rope_axes=tuple(cfg.get("axes_dims_rope", (16, 56, 56))),
            prediction=cfg.get("prediction", "velocity"),
            text_positions=cfg.get("text_positions", "none"),
            text_padding=cfg.get("text_padding", "mask"),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(unknown)}")
        missing = sorted(
            name
            for name, f in cls.__dataclass_fields__.items()
            if name not in data and f.default is MISSING and f.default_factory is MISSING
        )
        if missing:
            raise ConfigError(f"model config is missing field(s): {', '.join(missing)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stage_ends"] = list(self.stage_ends)
        data["rope_axes"] = list(self.rope_axes)
        return data


def validate_stage_ends(stage_ends: Sequence[int], depth: int, name: str = "stage_ends") -> None:
    """Stage ends must be strictly increasing, start above 0 and end at the full depth; errors name `name`."""
    if len(stage_ends) == 0:
        raise ConfigError(f"{name} must list at least one stage")
    previous = 0
    for k, end in enumerate(stage_ends):
        if end <= previous:
            raise ConfigError(
                f"{name} {list(stage_ends)} must be strictly increasing and positive "
                f"(stage {k + 1} ends at {end})"
            )
        previous = end
    if stage_ends[-1] > depth:
        raise ConfigError(f"{name} {list(stage_ends)} exceed the model depth of {depth} blocks")
    if stage_ends[-1] != depth:
        raise ConfigError(
            f"{name} {list(stage_ends)} must end at the model depth of {depth} blocks "
            "(the last stage runs every block)"
        )


@dataclass(frozen=True)
class FlowConfig:
    """The piecewise flow: one window per stage, low to high resolution (docs/method.md §3).

    `grid` "exact" computes the windows from the ratios; "public" reads them off the public
    NAMI-T2I scheduler's integer grid (`nami_core.flow.plan.PublicWindows`), whose Euler grid
    `NamiFlowScheduler` then lays inside them.

    Stages are square (`resolutions`: their sides) unless `widths` is given: then `resolutions`
    are the stages' heights and `widths` their widths, both doubling (`ending_at_size`).
    """

    resolutions: tuple[int, ...]
    window_ratios: tuple[float, ...] = ()
    gamma: float = 1.0 / 3.0
    grid: str = "exact"
    jump: str = "renoise"
    widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        validate_resolutions(self.resolutions)
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.widths:
            validate_resolutions(self.widths)
            if len(self.widths) != len(self.resolutions):
                raise ConfigError(f"widths has {len(self.widths)} entries but there are {len(self.resolutions)} stages")
        ratios = tuple(float(w) for w in self.window_ratios) or (1.0,) * len(self.resolutions)
        object.__setattr__(self, "window_ratios", ratios)
        if len(ratios) != len(self.resolutions):
            raise ConfigError(
                f"window_ratios has {len(ratios)} entries but there are {len(self.resolutions)} stages"
            )
        if any(not (w > 0) or math.isinf(w) for w in ratios):
            raise ConfigError(f"window_ratios must be positive, got {list(ratios)}")
        if any(w > MAX_WEIGHT for w in ratios):  # their sum would overflow: the rule of every relative weight
            raise ConfigError(f"window_ratios are relative, each at most {bound_text(MAX_WEIGHT)}, got {list(ratios)}")
        if not (0.0 < float(self.gamma) <= 1.0 / 3.0 + 1e-12):
            raise ConfigError(f"gamma must be in (0, 1/3], got {self.gamma}")
        if self.grid not in GRIDS:
            raise ConfigError(f"grid must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        if self.jump not in JUMPS:
            raise ConfigError(f"jump must be one of {', '.join(JUMPS)}, got {self.jump!r}")

    @property
    def num_stages(self) -> int:
        return len(self.resolutions)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """(height, width) of every stage in pixels, low to high resolution."""
        return tuple(zip(self.resolutions, self.widths or self.resolutions))

    def ending_at(self, final: int) -> "FlowConfig":
        """This flow with square stages ending at side `final`, each half the next."""
        if final == self.resolutions[-1] and not self.widths:
            return self
        return replace(self, resolutions=self._halvings(final, "resolution"), widths=())

    def ending_at_size(self, height: int, width: int) -> "FlowConfig":
        """This flow with stages of the final size `height` x `width` (pixels), each half the next;
        square sizes give a square flow."""
        if height == width:
            return self.ending_at(height)
        return replace(self, resolutions=self._halvings(height, "height"), widths=self._halvings(width, "width"))

    def _halvings(self, final: int, what: str) -> tuple[int, ...]:
        K = self.num_stages
        if final <= 0 or final % 2 ** (K - 1):
            raise ConfigError(f"{what} {final} cannot be halved {K - 1} times into integer stage sides")
        return tuple(final // 2 ** (K - 1 - k) for k in range(K))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "resolutions": list(self.resolutions),
            "window_ratios": list(self.window_ratios),
            "gamma": self.gamma,
            "grid": self.grid,
            "jump": self.jump,
        }
        if self.widths:
            out["widths"] = list(self.widths)
        return out


def validate_resolutions(resolutions: Sequence[int], name: str = "stage resolutions") -> None:
    """Stage resolutions: positive, at most `MAX_SIDE`, each twice the last; errors name `name`."""
    if len(resolutions) == 0:
        raise ConfigError(f"{name} must list at least one resolution")
    for r in resolutions:
        if r <= 0:
            raise ConfigError(f"{name} must be positive, got {list(resolutions)}")
        if r > MAX_SIDE:
            raise ConfigError(f"{name} must be at most {bound_text(MAX_SIDE)} pixels, got {list(resolutions)}")
    for low, high in zip(resolutions, resolutions[1:]):
        if high != 2 * low:
            raise ConfigError(
                f"{name} must double from one stage to the next, got {list(resolutions)} "
                f"({low} -> {high})"
            )


def list_items(text: str, name: str, separators: str = ",") -> list[str]:
    """The items of a list option ("256,512,1024"; with `separators` ",:" also "4:2:1"), stripped;
    a `ConfigError` naming `name` when it is empty or has an empty item ("1,,2", "16,32,")."""
    if not text.strip():
        raise ConfigError(f"{name} is empty")
    items = [p.strip() for p in re.split("|".join(map(re.escape, separators)), text)]
    if not all(items):
        raise ConfigError(f"{name} has an empty item in {text!r}; separate the values by single commas")
    return items


def parse_int_list(text: str | Iterable[int], name: str) -> tuple[int, ...]:
    """Parse "256,512,1024" into (256, 512, 1024); errors name the option."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    parts = list_items(text, name)
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers, got {text!r}") from None
    return values


def parse_float_list(text: str, name: str) -> tuple[float, ...]:
    parts = list_items(text, name, ",:")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{name} must hold finite numbers, got {text!r}")
    return values


def parse_weights(text: str | Sequence[float], name: str, count: int | None = None,
                  positive: bool = False) -> tuple[float, ...]:
    """Relative weights ("4:2:1" or "1,1,1", or a sequence): finite, at least 0 (above 0 with
    `positive`), at most `MAX_WEIGHT`, not all 0, and `count` of them when given; errors name `name`."""
    weights = parse_float_list(text, name) if isinstance(text, str) else tuple(float(w) for w in text)
    shown = ":".join(number_text(w) for w in weights)
    if count is not None and len(weights) != count:
        raise ConfigError(f"{name} has {len(weights)} weight{'s' * (len(weights) != 1)} for {count} stage"
                          f"{'s' * (count != 1)}, got {shown}")
    if not all(math.isfinite(w) and (w > 0 if positive else w >= 0) for w in weights):
        raise ConfigError(f"{name} must be {'positive' if positive else 'non-negative'}, got {shown}")
    if any(w > MAX_WEIGHT for w in weights):
        raise ConfigError(f"{name}: the weights are relative, each at most {bound_text(MAX_WEIGHT)}, got {shown}")
    if not any(w > 0 for w in weights):
        raise ConfigError(f"{name} {shown}: the weights are all 0; give at least one positive weight")
    return weights


MAX_SAMPLING_STEPS = 10_000  # Euler steps of one sampling call, all stages together (usual: 10 to 100)


def step_counts(steps: str | int | Sequence[int], name: str = "steps") -> tuple[int, ...]:
    """The Euler step counts of `steps` (30, "30" or "10,10,10"): positive, and at most
    `MAX_SAMPLING_STEPS` in all, checked before any model is loaded or any grid is built."""
    if isinstance(steps, int):
        counts: tuple[int, ...] = (steps,)
    elif isinstance(steps, str):
        counts = parse_int_list(steps, name)
    else:
        counts = tuple(int(s) for s in steps)
    if any(c <= 0 for c in counts):
        raise ConfigError(f"{name} must be positive, got {list(counts)}")
    if sum(counts) > MAX_SAMPLING_STEPS:
        raise ConfigError(f"{name} must be at most {MAX_SAMPLING_STEPS} in all (usual: 10 to 100), got {sum(counts)}")
    return counts


def number_text(value: float) -> str:
    """A number as short as it reads back exactly: 3.0 -> "3", 1e-4 -> "0.0001", 0.1234567891 as is."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def parse_name_list(text: str | Iterable[str], name: str) -> tuple[str, ...]:
    """Parse "nami,flux-base" into ("nami", "flux-base"); a sequence is taken as it is. A name
    given twice is refused: a list of names (modes, backends, models) names each once."""
    items = tuple(text) if not isinstance(text, str) else tuple(list_items(text, name))
    repeated = next((item for i, item in enumerate(items) if item in items[:i]), None)
    if repeated is not None:
        raise ConfigError(f"{name} lists {repeated!r} twice: {','.join(map(str, items))}")
    return items


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """"1024x576" -> (width 1024, height 576) in pixels; a `ConfigError` naming `option` otherwise."""
    match = re.fullmatch(r"\s*([0-9]+)\s*[x×]\s*([0-9]+)\s*", text, re.IGNORECASE)
    if match is None:
        raise ConfigError(f"{option} must be WIDTHxHEIGHT in pixels, e.g. 1024x576, got {text!r}")
    width, height = int(match[1]), int(match[2])
    if width < 1 or height < 1:
        raise ConfigError(f"{option} sides must be at least 1 pixel, got {text!r}")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ConfigError(f"{option} sides must be at most {bound_text(MAX_SIDE)} pixels, got {text!r}")
    return width, height


def split_steps(steps: str | int | Sequence[int], num_stages: int, name: str = "steps") -> tuple[int, ...]:
    """Per-stage Euler step counts; errors name `name`.

    "10,10,10" is taken as is (one count per stage). A single number is split evenly,
    the remainder going to the earliest (cheapest) stages: 31 over 3 stages -> 11,10,10.
    """
    counts = step_counts(steps, name)
    if len(counts) == 1 and num_stages > 1:
        total = counts[0]
        if total < num_stages:
            raise ConfigError(f"{name}={total} is fewer than the {num_stages} stages")
        base, extra = divmod(total, num_stages)
        return tuple(base + (1 if k < extra else 0) for k in range(num_stages))
    if len(counts) != num_stages:
        raise ConfigError(f"{name} lists {len(counts)} counts but the plan has {num_stages} stages")
    return counts


MAX_GUIDANCE = 100.0  # usual scales are 1 to 20; far larger ones overflow (1e300 draws a black picture)


def guidance_scales(cfg: float | str | Sequence[float], name: str = "cfg") -> tuple[float, ...]:
    """The scales of `cfg` (3.0, "3" or "8,3,3", or a sequence), each finite, above 0 and at most
    `MAX_GUIDANCE`; errors name the option. Callers check the guidance with it before loading a
    model, when the number of stages is not known yet."""
    if isinstance(cfg, str):
        scales = parse_float_list(cfg, name)
    elif isinstance(cfg, (int, float)):
        scales = (float(cfg),)
    else:
        scales = tuple(float(v) for v in cfg)
    shown = ",".join(f"{v:g}" for v in scales)
    if not scales:
        raise ConfigError(f"{name} is empty")
    if not all(math.isfinite(v) and v > 0 for v in scales):
        raise ConfigError(f"{name} must be positive (1 = no guidance), got {shown}")
    if any(v > MAX_GUIDANCE for v in scales):
        raise ConfigError(f"{name} must be at most {MAX_GUIDANCE:g} (usual scales are 1 to 20), got {shown}")
    return scales


def split_guidance(cfg: float | str | Sequence[float], num_stages: int, name: str = "cfg") -> tuple[float, ...]:
    """Per-stage classifier-free guidance scales (1 = off in that stage); errors name the option.

    One scale ("3" or 3.0) applies to every stage; "8,3,3" gives one per stage, for example
    strong guidance only in the first, low-resolution window, where the layout is decided.
    """
    scales = guidance_scales(cfg, name)
    if len(scales) == 1:
        return scales * num_stages
    if len(scales) != num_stages:
        raise ConfigError(f"{name} lists {len(scales)} scales but the plan has {num_stages} stages; "
                          "give one scale, or one per stage")
    return scales


def guidance_record(scales: Sequence[float]) -> float | list[float]:
    """How metadata records guidance: one number when every stage uses the same scale."""
    values = [float(v) for v in scales]
    return values[0] if len(set(values)) == 1 else values


@dataclass(frozen=True)
class Preset:
    """A named model: its shape, the stage resolutions it is meant for, and a description."""

    name: str
    model: ModelConfig
    resolutions: tuple[int, ...]
    description: str
    default_mode: str = "nami"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "nami-2b",
            ModelConfig(
                width=2048, heads=16, double_blocks=8, single_blocks=14, stage_ends=(9, 16, 22),
                in_channels=64, text_dim=4096, pooled_dim=1024, rope_axes=(16, 56, 56),
            ),
            (256, 512, 1024),
            "paper Table 1 / public NAMI-T2I checkpoint: 8 double + 14 single blocks, stages 9:7:6",
        ),
        Preset(
            "nami-0.6b",
            ModelConfig(
                width=1536, heads=12, double_blocks=4, single_blocks=8, stage_ends=(5, 9, 12),
                in_channels=64, text_dim=4096, pooled_dim=1024, rope_axes=(16, 56, 56),
            ),
            (256, 512, 1024),
            "paper Table 1: 4 double + 8 single blocks, stages 5:4:3",
        ),
        Preset(
            "flux-base-2b",
            ModelConfig(
                width=2048, heads=16, double_blocks=8, single_blocks=14, stage_ends=(22,),
                in_channels=64, text_dim=4096, pooled_dim=1024, rope_axes=(16, 56, 56),
            ),
            (1024,),
            "the paper's baseline: nami-2b's blocks, one stage, all 22 blocks at every step",
            default_mode="flux-base",
        ),
        Preset(
            "tiny",
            ModelConfig(
                width=64, heads=2, double_blocks=2, single_blocks=4, stage_ends=(2, 4, 6),
                in_channels=64, text_dim=32, pooled_dim=32, rope_axes=(8, 12, 12),
            ),
            (256, 512, 1024),
            "a few-hundred-thousand-parameter model for tests and smoke runs",
        ),
        Preset(
            "cpu-bench",
            ModelConfig(
                width=256, heads=4, double_blocks=2, single_blocks=4, stage_ends=(2, 4, 6),
                in_channels=64, text_dim=256, pooled_dim=256, rope_axes=(16, 24, 24),
            ),
            (128, 256, 512),
            "a 9M-parameter model wide enough to be compute-bound on a CPU at 256-512 px (`nami bench` there)",
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


__all__ = [
    "MODES",
    "PRESETS",
    "FlowConfig",
    "ModelConfig",
    "Preset",
    "check_mode",
    "get_preset",
    "parse_float_list",
    "parse_int_list",
    "split_steps",
    "validate_resolutions",
    "validate_stage_ends",
]
