"""Assembling a NAMI-1K prompt set from source files, deterministically.

Each source ("open", "human", "generated") takes one or more files (UTF-8; a byte-order mark is
dropped), by suffix:
  * `.txt`: one prompt per non-blank line;
  * `.jsonl`: objects with a "prompt" (GenEval's `evaluation_metadata.jsonl` works as is) and
    optionally a "topic" from `topics.TOPICS` (otherwise `topics.topic_of` assigns one);
  * `.csv`: a header row naming a `prompt` (or `text`, or `caption`) column and optionally `topic`,
    then one prompt per row; the header is never read as a prompt.
Any other suffix is refused.
Per source, prompts are de-duplicated (case- and space-insensitive, across all sources, first
occurrence wins), prompts longer than `max_words` words are dropped, and `count` prompts are
drawn without replacement by a generator seeded with (seed, source); they keep their order in
the files. The paper's counts are 360 open / 320 human / 320 generated, up to 120 words.
Ids are "0000", "0001", ... over the set (open first, then human, then generated).
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Sequence

from ...config import check_at_least
from ...errors import NamiError
from ...user_files import read_jsonl, read_text
from .prompts import SOURCES, PromptRecord, word_count
from .topics import TOPICS, topic_of

DEFAULT_COUNTS = {"open": 360, "human": 320, "generated": 320}
MAX_WORDS = 120


SOURCE_SUFFIXES = (".txt", ".jsonl", ".csv")
PROMPT_COLUMNS = ("prompt", "text", "caption")


def read_source_file(path: str | Path) -> list[tuple[str, str | None]]:
    """(prompt, topic or None) pairs of one source file: `.txt`, `.jsonl` or `.csv` (module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SOURCE_SUFFIXES:
        raise NamiError(f"source file {path}: unknown kind {suffix or '(no suffix)'}; use .txt (one prompt per "
                        "line), .jsonl (objects with \"prompt\") or .csv (a header with a prompt column)")
    text = read_text(path, "source file")
    if suffix == ".txt":
        return [(line.strip(), None) for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        return _csv_prompts(path, text)
    pairs = []
    for number, obj in enumerate(read_jsonl(path, "source file"), start=1):
        pairs.append(_prompt_and_topic(obj, f"{path}:{number}"))
    return pairs


def _prompt_and_topic(obj: dict, where: str) -> tuple[str, str | None]:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise NamiError(f"{where}: expected an object with a non-empty \"prompt\"")
    topic = obj.get("topic")
    if topic is not None and topic not in TOPICS:
        raise NamiError(f"{where}: topic must be one of {', '.join(TOPICS)}, got {topic!r}")
    return prompt.strip(), topic


def _csv_prompts(path: Path, text: str) -> list[tuple[str, str | None]]:
    """A `.csv` source: its first row is a header naming a prompt column (`prompt`, `text` or
    `caption`, the first found) and optionally `topic`; every other row gives one prompt."""
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    column = next((c for c in PROMPT_COLUMNS if c in columns), None)
    if column is None:
        raise NamiError(f"source file {path}: a .csv needs a header row with a {' / '.join(PROMPT_COLUMNS)} column, "
                        f"got {', '.join(columns) or 'no header'}")
    reader.fieldnames = columns
    pairs = []
    try:
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                topic = (row.get("topic") or "").strip() or None
                pairs.append(_prompt_and_topic({"prompt": value, "topic": topic}, f"{path}:{reader.line_num}"))
    except csv.Error as exc:
        raise NamiError(f"source file {path}: not valid csv ({exc})") from None
    return pairs


def _key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def parse_counts(text: str) -> dict[str, int]:
    """"360,320,320" -> prompts per source (open, human, generated)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != len(SOURCES) or any(v < 0 for v in values):
        raise NamiError(f"--counts takes {len(SOURCES)} non-negative numbers ({','.join(SOURCES)}), got {text!r}")
    return dict(zip(SOURCES, values))


def build_prompt_set(sources: dict[str, Sequence[str | Path]], counts: dict[str, int] | str | None = None,
                     seed: int = 0, max_words: int = MAX_WORDS) -> list[PromptRecord]:
    """The prompt set drawn from `sources` (source -> files) with `counts` prompts per source
    ("360,320,320" is parsed; None: `DEFAULT_COUNTS`)."""
    counts = parse_counts(counts) if isinstance(counts, str) else dict(DEFAULT_COUNTS if counts is None else counts)
    check_at_least("--max-words", max_words, 1)
    unknown = sorted(set(sources) - set(SOURCES)) + sorted(set(counts) - set(SOURCES))
    if unknown:
        raise NamiError(f"unknown source {unknown[0]!r}; sources are {', '.join(SOURCES)}")
    seen: set[str] = set()
    records: list[PromptRecord] = []
    for source in SOURCES:
        count = counts.get(source, 0)
        if count < 0:
            raise NamiError(f"the count of {source} prompts must be >= 0, got {count}")
        files = sources.get(source, [])
        if count and not files:
            raise NamiError(f"{count} {source} prompts were asked for but no {source} source file was given")
        pool: list[tuple[str, str | None]] = []
        for path in files:
            for prompt, topic in read_source_file(path):
                key = _key(prompt)
                if key in seen or word_count(prompt) > max_words:
                    continue
                seen.add(key)
                pool.append((prompt, topic))
        if len(pool) < count:
            raise NamiError(f"{count} {source} prompts were asked for but the {source} files hold only {len(pool)} "
                            f"distinct prompts of at most {max_words} words")
        chosen = sorted(random.Random(f"nami1k:{seed}:{source}").sample(range(len(pool)), count))
        for index in chosen:
            prompt, topic = pool[index]
            records.append(PromptRecord(f"{len(records):04d}", prompt, source, topic or topic_of(prompt),
                                        word_count(prompt)))
    if not records:
        raise NamiError("the prompt set would be empty; give source files and counts")
    return records
