"""Generating a model's NAMI-1K images: `<out>/<id>_<j>.png` plus `<out>/manifest.jsonl`.

Image j of prompt i (prompt-set order) has seed `seed + i * images_per_prompt + j`
(`generation.image_seed`). The manifest, one line per image with the file name, the prompt
record's fields, the seed and the model, is written after the last image, so a folder with a
manifest is complete; `annotate` reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import NamiError
from ...input_paths import FILE, reads
from ..generation import GenerationSettings
from ...files import write_jsonl_atomic
from ...output_names import safe_name
from ...output_targets import NAMI1K_IMAGES, Inputs, check_out_folder
from ...png import save_png
from ...user_files import read_jsonl
from .prompts import FIELDS, PromptRecord, validate_record

MANIFEST_NAME = "manifest.jsonl"


@dataclass(kw_only=True)
class Nami1kGeneration(GenerationSettings):
    """`nami eval nami1k generate`: the prompt set (`prompts`, from `build`) and the empty folder
    the images and the manifest go to (`out`)."""

    prompts: Path | str = field(metadata=reads(FILE))
    out: Path | str

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prompts, self.out = Path(self.prompts), Path(self.out)

    def inputs(self) -> dict[str, Any]:
        return {"--prompts": self.prompts, **super().inputs()}


def image_name(record_id: str, j: int) -> str:
    """`<id>_<j>.png`, the id made a safe file name first (`output_names.safe_name`): an id from a
    prompt file such as `../../x` never names a file outside the folder."""
    return f"{safe_name(record_id)}_{j:02d}.png"


def check_image_folder(out: str | Path, inputs: Inputs | None = None) -> Path:
    """`out` may receive a model's NAMI-1K images (the output policy, `output_targets`): a new or
    empty folder, not the prompt set or the model, nor around them."""
    out = check_out_folder(out, NAMI1K_IMAGES, inputs)
    if out.is_dir() and (any(out.glob("*.png")) or (out / MANIFEST_NAME).exists()):
        raise NamiError(f"{out} already holds generated images; choose an empty --out")
    return out


def generate_set(generator, records: Sequence[PromptRecord], out: str | Path, images_per_prompt: int = 1,
                 seed: int = 0, batch_size: int = 8, on_image: Callable[[int, int], None] | None = None,
                 inputs: Inputs | None = None) -> list[dict]:
    """Generate every prompt's images into `out` and write the manifest; returns its lines.
    `inputs` (option -> path): what `out` may not be, hold or lie inside."""
    out = check_image_folder(out, inputs)
    names = [image_name(r.id, 0) for r in records]
    if len(set(names)) != len(names):
        twice = next(r.id for r, name in zip(records, names) if names.count(name) > 1)
        raise NamiError(f"the prompt set's id {twice!r} gives the file name of another id; make the ids distinct")
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    total = len(records) * images_per_prompt
    for made in generator.images([r.prompt for r in records], images_per_prompt, seed, batch_size):
        record = records[made.index]
        name = image_name(record.id, made.j)
        save_png(made.image, out / name, generator.info(record.prompt, made.seed, id=record.id))
        manifest.append({"file": name, **asdict(record), "image": made.j, "seed": made.seed,
                         "model": generator.model_name})
        if on_image is not None:
            on_image(len(manifest), total)
    write_jsonl_atomic(out / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder: str | Path) -> list[dict]:
    """The manifest lines of a generated folder; NamiError when the folder is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NamiError(f"--images {folder} is not a folder of generated NAMI-1K images")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise NamiError(f"{folder} has no {MANIFEST_NAME}; expected the output of `nami eval nami1k generate` "
                        f"(<id>_<j>.png images + {MANIFEST_NAME})")
    lines = read_jsonl(path, "manifest")
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        validate_record({k: line.get(k) for k in FIELDS if k in line}, where)
        name = line.get("file")
        if not isinstance(name, str) or Path(name).name != name or not (folder / name).is_file():
            raise NamiError(f"{where}: image file {name!r} is not in {folder}")
    if not lines:
        raise NamiError(f"{path} lists no images")
    return lines
