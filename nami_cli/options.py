"""Every option that more than one command takes, declared once.

Each shared option is one `Annotated[type, typer.Option(...)]`: its flag, type, help, help panel
and, for a closed set of values, a metavar listing the core's own constant (`config.MODES`,
`config.PRESETS`, ...). A command lists it as `mode: options.Mode = None` and declares only the
options that are its own. Where the help must say something different per command (what `--out`
holds, what `--batch-size` counts), a factory takes the help and keeps flag and type.

No option has a default here: the command passes None through to the core's request or config
dataclass, which owns the default and the check. `nami_cli.build` shows those defaults in the
help (`defaults_from`). Old spellings are hidden options that `aliases.renamed` folds into the new
one with a one-line note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from nami_core.config import (ATTENTION_BACKENDS, CHECKPOINTING, DEVICES, DTYPE_CHOICES, MODES, PRESETS,
                              TIMESTEP_ROUNDINGS)
from nami_core.model.lora import LORA_TARGETS
from nami_core.train.config import DTYPES as TRAIN_DTYPES

# -- help panels ------------------------------------------------------------------------------------

DATA = "Data and model"
MODEL = "Model"
STAGES = "Stages and flow"
OPTIMISATION = "Optimisation"
PRECISION = "Device, precision and memory"
CHECKPOINTS = "Checkpoints and resume"
LORA = "LoRA"
LOGGING = "Logging and output"
VALIDATION = "Validation images"
SAMPLING = "Sampling"
IMAGE = "Image size"
OUTPUT = "Output"
SOURCE = "Source"
SHAPES = "The shapes source (prepare-data shapes)"
TIMING = "Timing"
WORKLOAD = "Workload"
MEMORY = "Training memory (--train-memory)"
SCORING = "Scoring"
PROMPTS = "Prompts"
CONVERSION = "Conversion"
PAGE = "Page"


def choices(values) -> str:
    """The metavar of a closed set of values: "nami|flow-only|flux-base"."""
    return "|".join(values)


# -- the registry the declaration check reads -------------------------------------------------------

T = TypeVar("T")


class Declared:
    """One declaration: a shared type, or a factory's (`help_varies`: each command gives its help)."""

    def __init__(self, annotation: Any, info: Any, help_varies: bool = False) -> None:
        self.annotation, self.info, self.help_varies = annotation, info, help_varies

    @property
    def spellings(self) -> tuple[str, ...]:
        """Its flags (in `Annotated`, typer takes the first positional argument as a flag too)."""
        first = self.info.default
        return ((first,) if isinstance(first, str) and first.startswith("-") else ()) + tuple(self.info.param_decls)

    @property
    def flag(self) -> str:
        return max(self.spellings, key=len)


DECLARED: list[Declared] = []


def option(annotation: Any, *flags: str, help: str, panel: str, metavar: str | None = None,
           hidden: bool = False, register: str | None = "shared", **settings) -> Any:
    """`Annotated[Optional[annotation], typer.Option(*flags, ...)]`, registered in `DECLARED` as
    `register` says: "shared" (one help everywhere), "help varies" (a factory's), None (not at all)."""
    info = typer.Option(*flags, help=help, rich_help_panel=panel, metavar=metavar, hidden=hidden, **settings)
    if register is not None:
        DECLARED.append(Declared(annotation, info, help_varies=register == "help varies"))
    return Annotated[Optional[annotation], info]


def own(annotation: Any, *flags: str, help: str, panel: str, **settings) -> Any:
    """An option one command alone takes: the same form as a shared one, not registered."""
    return option(annotation, *flags, help=help, panel=panel, register=None, **settings)


def factory(make: Callable[..., Any]) -> Callable[..., Any]:
    """A factory of one option whose help differs by command: every call has the same flag and
    type; one declaration of it is registered for the check."""
    def declare(help: str, panel: str, **settings) -> Any:
        return make(help, panel, register=None, **settings)

    declare.__doc__ = make.__doc__
    make("(the help differs by command)", OUTPUT, register="help varies")
    return declare


def old_spelling(annotation: Any, flag: str, new_flag: str) -> Any:
    """A hidden old spelling of `new_flag`, kept for one release (`aliases.renamed` reads it)."""
    return option(annotation, flag, help=f"Old name of {new_flag}.", panel=OUTPUT, hidden=True)


# -- shared types: the same help everywhere ----------------------------------------------------------

Preset = option(str, "--preset", metavar=choices(PRESETS), panel=MODEL,
                help="A named model shape (`nami info --preset NAME` describes it).")
Mode = option(str, "--mode", metavar=choices(MODES), panel=MODEL,
              help="What runs: nami gives stage k its block prefix; the baselines run every block (`nami info` "
                   "compares their FLOPs).")
Stages = option(str, "--stages", panel=STAGES,
                help="Stage resolutions in pixels, low to high, each twice the last, e.g. 256,512,1024.")
EulerSteps = option(str, "--steps", panel=SAMPLING,
                    help="Euler steps: one total, split evenly over the stages (flux-base runs it in its one "
                         "window), or one count per stage, e.g. 10,10,10.")
Guidance = option(str, "--cfg", panel=SAMPLING,
                  help="Classifier-free guidance scale (1 = off, at most 100), or one per stage, e.g. 8,3,3.")
StageMix = option(str, "--stage-mix", panel=STAGES,
                  help="How often training draws each stage: one weight per stage, low to high resolution, "
                       "e.g. 4:2:1, or a schedule of them from given steps, e.g. 0:4:2:1,120000:2:4:1.")
ImageSize = option(str, "--size", panel=IMAGE,
                   help="Final image size WIDTHxHEIGHT in pixels, e.g. 1024x576: every stage at that aspect "
                        "ratio, each half the next.")
Device = option(str, "--device", metavar=choices(DEVICES), panel=PRECISION,
                help="Where to run; auto: the first CUDA GPU, else the CPU; cuda:N: GPU N.")
Dtype = option(str, "--dtype", metavar=choices(DTYPE_CHOICES), panel=PRECISION,
               help="Precision of the transformer; auto: bf16 on CUDA, fp32 on the CPU.")
TrainDtype = option(str, "--dtype", metavar=choices(TRAIN_DTYPES), panel=PRECISION,
                    help="Training precision; a half precision autocasts over full-precision weights.")
Attention = option(str, "--attention", metavar=choices(ATTENTION_BACKENDS), panel=PRECISION,
                   help="Attention backend; auto: xformers on CUDA when installed, else native (PyTorch SDPA).")
AttentionList = option(str, "--attention", metavar=choices(ATTENTION_BACKENDS) + "[,...]", panel=PRECISION,
                       help="Attention backends, each timed in turn, e.g. native,xformers,flash.")
Compile = option(bool, "--compile", panel=PRECISION,
                 help="torch.compile the transformer (static shapes per stage and text bucket when sampling, "
                      "replayed as CUDA graphs on a GPU) and say what ran eagerly; the first steps pay the "
                      "compile time (on the CPU it needs a C++ compiler).")
GradCheckpointing = option(str, "--grad-checkpointing", metavar=choices(CHECKPOINTING), panel=PRECISION,
                           help="Recompute activations in backward: full (also the bare flag) every block, "
                                "last-stage the last stage module's blocks, auto every block of full-resolution "
                                "samples only.")
Fsdp = option(bool, "--fsdp", panel=PRECISION,
              help="Shard the model with FSDP, wrapping transformer blocks (default: DDP).")
EmaDecay = option(float, "--ema-decay", panel=OPTIMISATION, help="EMA decay of the weights (0 = no EMA).")
LoraTargets = option(str, "--lora-targets", metavar=choices(LORA_TARGETS), panel=LORA,
                     help="What the adapter adapts: the attention projections (attn), with +mlp also the "
                          "feed-forward layers.")
LoraAdapters = option(list[str], "--lora", panel=MODEL,
                      help="A LoRA adapter folder (as `nami train --lora` writes RUN/final) with an optional "
                           "scale, ADAPTER[:SCALE] (-100 to 100; 0 applies nothing, a negative scale subtracts the "
                           "adapter); repeat to stack adapters.")
PromptTokens = option(int, "--prompt-tokens", panel=WORKLOAD,
                      help="Real tokens of each prompt in the text slot (the rest is padding).")
ImagesPerPrompt = option(int, "--images-per-prompt", panel=SAMPLING,
                         help="Images per prompt; image j of prompt i has seed S + i x images-per-prompt + j.")
SkipGeneration = option(bool, "--skip-generation", panel=SCORING,
                        help="Only score the images already in --out (from any model, in the benchmark's layout).")
ImageCount = option(int, "--n", panel=SAMPLING, help="Number of images; image i has seed S+i.")
SceneCount = option(int, "--n", panel=SHAPES, help="Number of scenes.")
PrintJson = option(bool, "--json", panel=OUTPUT, help="Print the result as JSON instead of the summary.")
TimestepRounding = option(str, "--timestep-rounding", metavar=choices(TIMESTEP_ROUNDINGS), panel=SAMPLING,
                          help="fp16: round model timesteps as the public release's float16 pipeline does.")

# -- old spellings -----------------------------------------------------------------------------------

OldDtype = old_spelling(str, "--precision", "--dtype")
OldBatchSize = old_spelling(int, "--batch", "--batch-size")
OldRatioSchedule = old_spelling(str, "--ratio-schedule", "--stage-mix")
OldRatio = old_spelling(str, "--ratio", "--stage-mix")
OldInit = old_spelling(str, "--init", "--model")


# -- factories: the help says what the option means for the command ----------------------------------


@factory
def out(help: str, panel: str, **settings) -> Any:
    """--out: the folder or file a command writes."""
    return option(str, "--out", help=help, panel=panel, **settings)


@factory
def model(help: str, panel: str, **settings) -> Any:
    """--model: a model directory."""
    return option(str, "--model", help=help, panel=panel, **settings)


@factory
def batch_size(help: str, panel: str, **settings) -> Any:
    """--batch-size: what one batch holds."""
    return option(int, "--batch-size", help=help, panel=panel, **settings)


@factory
def seed(help: str, panel: str, **settings) -> Any:
    """--seed: what the seed draws."""
    return option(int, "--seed", help=help, panel=panel, **settings)


@factory
def optimizer_steps(help: str, panel: str, **settings) -> Any:
    """--steps of training: optimizer steps."""
    return option(int, "--steps", help=help, panel=panel, **settings)


@factory
def warmup(help: str, panel: str, **settings) -> Any:
    """--warmup: untimed work before timing."""
    return option(int, "--warmup", help=help, panel=panel, **settings)


@factory
def text_tokens(help: str, panel: str, **settings) -> Any:
    """--text-tokens: the length of the text slot."""
    return option(int, "--text-tokens", help=help, panel=panel, **settings)


@factory
def lora_rank(help: str, panel: str, **settings) -> Any:
    """--lora RANK: a LoRA adapter of this rank trains."""
    return option(int, "--lora", help=help, panel=panel, **settings)


@factory
def json_file(help: str, panel: str, **settings) -> Any:
    """--json PATH: a JSON file to write."""
    return option(Path, "--json", help=help, panel=panel, **settings)


@factory
def plot(help: str, panel: str, **settings) -> Any:
    """--plot PATH: a picture to write."""
    return option(Path, "--plot", help=help, panel=panel, **settings)


@factory
def clip(help: str, panel: str, **settings) -> Any:
    """--clip: a transformers CLIP model folder."""
    return option(str, "--clip", help=help, panel=panel, **settings)


@factory
def prompts(help: str, panel: str, **settings) -> Any:
    """--prompts: where the prompts are."""
    return option(Path, "--prompts", help=help, panel=panel, **settings)


@factory
def overwrite(help: str, panel: str, **settings) -> Any:
    """--overwrite: replace what is there instead of refusing or renaming."""
    return option(bool, "--overwrite", help=help, panel=panel, **settings)


# -- passing what was given through to the core ------------------------------------------------------


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not None), for a core dataclass that owns the defaults."""
    return {name: value for name, value in values.items() if value is not None}


def defaults_from(*owners: Any) -> Callable[[T], T]:
    """Mark a command as filling `owners` (request / config dataclasses, or core functions): its
    help shows their defaults (`nami_cli.build.show_core_defaults`)."""
    def mark(command: T) -> T:
        command.__nami_owners__ = owners  # type: ignore[attr-defined]
        return command

    return mark
