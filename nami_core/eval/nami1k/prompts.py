"""The NAMI-1K prompt-set format: JSON lines of {"id", "prompt", "source", "topic", "words"}.

* id: unique string (the build writes "0000".."0999");
* prompt: the text given to the model;
* source: "open" (short prompts from open benchmarks such as GenEval), "human" (written by people)
  or "generated" (long captions written by a language model);
* topic: one of `topics.TOPICS`;
* words: number of whitespace-separated words of the prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from ...errors import NamiError
from ...files import write_jsonl_atomic
from ...output_targets import Inputs, check_out_file
from ...user_files import read_jsonl
from .topics import TOPICS

SOURCES = ("open", "human", "generated")
FIELDS = ("id", "prompt", "source", "topic", "words")


def word_count(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    source: str
    topic: str
    words: int


def validate_record(obj: dict, where: str) -> PromptRecord:
    """One JSON object -> PromptRecord, or NamiError naming `where` and the bad field."""
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise NamiError(f"{where}: missing field(s) {', '.join(missing)} (a NAMI-1K line has {', '.join(FIELDS)})")
    if not isinstance(obj["id"], str) or not obj["id"].strip():
        raise NamiError(f"{where}: id must be a non-empty string")
    if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        raise NamiError(f"{where}: prompt must be a non-empty string")
    if obj["source"] not in SOURCES:
        raise NamiError(f"{where}: source must be one of {', '.join(SOURCES)}, got {obj['source']!r}")
    if obj["topic"] not in TOPICS:
        raise NamiError(f"{where}: topic must be one of {', '.join(TOPICS)}, got {obj['topic']!r}")
    if isinstance(obj["words"], bool) or not isinstance(obj["words"], int) or obj["words"] != word_count(obj["prompt"]):
        raise NamiError(f"{where}: words must be the prompt's word count {word_count(obj['prompt'])}, "
                        f"got {obj['words']!r}")
    return PromptRecord(obj["id"], obj["prompt"], obj["source"], obj["topic"], obj["words"])


def read_prompt_set(path: str | Path) -> list[PromptRecord]:
    """A NAMI-1K JSONL file, validated (unique ids)."""
    records = [validate_record(obj, f"{path}:{n}") for n, obj in enumerate(read_jsonl(path, "prompt set"), start=1)]
    if not records:
        raise NamiError(f"prompt set {path} has no prompts")
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise NamiError(f"prompt set {path}: id {record.id!r} appears twice")
        seen.add(record.id)
    return records


def write_prompt_set(path: str | Path, records: Iterable[PromptRecord], inputs: Inputs | None = None) -> None:
    """Write the set as JSON lines to `path`, a `.jsonl` file that is none of `inputs` (the output
    policy, `output_targets`: the source files are never overwritten)."""
    path = check_out_file(path, (".jsonl",), "NAMI-1K prompt set", inputs)
    write_jsonl_atomic(path, (asdict(r) for r in records))
