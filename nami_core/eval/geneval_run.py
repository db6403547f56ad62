"""Running GenEval: metadata lines -> GenEval's folder layout of samples -> detections -> scores.

`GenevalRequest` holds what `nami eval geneval` was asked for and is checked at construction,
before a model or detector loads. `generate_samples` writes `<out>/<i:05d>/metadata.jsonl` and
`samples/<j:04d>.png` (image j of prompt i has seed `seed + i * images_per_prompt + j`); the
rules and the folder layout are `geneval.py`'s, as DPG-Bench's are `dpg.py`'s beside `dpg_run.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..config import within
from ..input_paths import FILE, reads
from .weights import clip_folder
from ..errors import NamiError
from .generation import MAX_IMAGES_PER_PROMPT, GenerationSettings, Generator

if TYPE_CHECKING:
    from .geneval import PromptFolder


def default_suite() -> Path:
    """The bundled GenEval-schema suite in the shapes vocabulary (300 prompts, 50 per tag)."""
    return Path(__file__).resolve().parent.parent / "assets" / "geneval" / "shapes_suite.jsonl"


@dataclass(kw_only=True)
class GenevalRequest(GenerationSettings):
    """`nami eval geneval`: where the samples go (`out`), the prompts (`metadata`; the bundled
    suite when None), the detector ("shapes" or "mask2former:PATH", with a CLIP folder naming
    colours) and whether to score the images already in `out` (`skip_generation`)."""

    out: Path | str
    metadata: Path | None = field(default=None, metadata={**reads(FILE), "shown": "the bundled 300-prompt shapes suite"})
    detector: str = "shapes"
    clip: str | None = field(default=None, metadata=reads(clip_folder))
    skip_generation: bool = False
    images_per_prompt: int = field(default=4, metadata=within(1, MAX_IMAGES_PER_PROMPT))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out = Path(self.out)

    def suite_lines(self) -> list[tuple[str, dict]] | None:
        """(where, metadata line) of the prompts to generate or to compare with; None when only
        the folder's own prompts are scored."""
        from .geneval import read_metadata_lines

        if self.metadata is None and self.skip_generation:
            return None
        return read_metadata_lines(self.metadata if self.metadata is not None else default_suite())

    def generating(self) -> bool:
        return not self.skip_generation

    def inputs(self) -> dict[str, Any]:
        return {"--metadata": self.metadata, **super().inputs()}

    def check_out(self) -> None:
        """Before generating: `out` may receive GenEval samples (`geneval.check_generation_folder`)."""
        from .geneval import check_generation_folder

        check_generation_folder(self.out, self.inputs())


def check_same_prompts(prompts: Sequence[PromptFolder], suite: list[dict], source: str) -> None:
    """With --skip-generation and --metadata: the folder must hold exactly the file's prompts, in order."""
    if len(prompts) != len(suite):
        raise NamiError(f"{source} has {len(suite)} prompts but the folder has {len(prompts)} prompt folders")
    for number, (prompt, line) in enumerate(zip(prompts, suite), start=1):
        if prompt.metadata != line:
            raise NamiError(f"{prompt.path} holds a different prompt than line {number} of {source}")


def generate_samples(generator: Generator, suite: list[dict], req: GenerationSettings, out: str | Path,
                     on_image: Callable[[int, int], None] | None = None) -> None:
    """Write GenEval's layout for `suite` under `out`: every prompt's folder, then its images."""
    from ..png import save_png
    from . import geneval as ge

    ge.write_prompt_folders(out, suite, req.inputs())
    total = len(suite) * req.images_per_prompt
    images = generator.images([line["prompt"] for line in suite], req.images_per_prompt, req.seed, req.batch_size)
    for done, made in enumerate(images, start=1):
        save_png(made.image, ge.sample_path(out, made.index, made.j),
                 generator.info(suite[made.index]["prompt"], made.seed))
        if on_image is not None:
            on_image(done, total)
