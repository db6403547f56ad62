"""The words a model was trained on, kept in its model directory, so that sampling can say when a
prompt goes outside them.

```
MODEL/vocabulary.json   {"words": ["a", "above", ...], "summary": "4 shapes (circle, ...), ..."}
```

Words are runs of letters or digits in any script, lowercased (`words_of`). A model without the
file makes no claim, and sampling says nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import NamiError
from .files import write_json_atomic

VOCABULARY_FILE = "vocabulary.json"
WORD = re.compile(r"[^\W_]+")


def words_of(text: str) -> list[str]:
    """The words of `text`, lowercased, in order (repeats kept)."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """`words`: every word of the training captions; `summary`: what they cover, in one phrase."""

    words: frozenset[str]
    summary: str

    @classmethod
    def of_captions(cls, captions: Iterable[str], summary: str) -> "Vocabulary":
        return cls(frozenset(w for caption in captions for w in words_of(caption)), summary)

    def unknown(self, prompt: str) -> list[str]:
        """The words of `prompt` outside the vocabulary, each once, in the order they appear."""
        return list(dict.fromkeys(w for w in words_of(prompt) if w not in self.words))

    def warning(self, prompt: str) -> str | None:
        """One line naming the prompt's unknown words and what the model knows, or None."""
        unknown = self.unknown(prompt)
        if not unknown:
            return None
        quoted = ", ".join(f'"{w}"' for w in unknown)
        return (f"the model was not trained on {quoted}; it knows {self.summary}. "
                "It draws anyway, but expect those words to be ignored.")

    def with_words_of(self, other: "Vocabulary") -> "Vocabulary":
        """This vocabulary plus `other`'s words (an adapter's fine-tuning captions), same summary."""
        return Vocabulary(self.words | other.words, self.summary)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / VOCABULARY_FILE
        write_json_atomic(path, {"summary": self.summary, "words": sorted(self.words)})
        return path


def read_vocabulary(model_dir: str | Path) -> Vocabulary | None:
    """The vocabulary saved in `model_dir`, None when it has none."""
    path = Path(model_dir) / VOCABULARY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        words, summary = data["words"], data["summary"]
        if not (isinstance(words, list) and all(isinstance(w, str) for w in words) and isinstance(summary, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise NamiError(f"{path} is not a vocabulary file (expected JSON with a word list and a summary)") from None
    return Vocabulary(frozenset(words), summary)


def combined_vocabulary(model_dir: str | Path, adapters: Iterable[Path] = ()) -> Vocabulary | None:
    """The model's vocabulary plus the words of each adapter folder's; None (no claim) when the model
    or any adapter carries none."""
    vocabulary = read_vocabulary(model_dir)
    for folder in adapters:
        taught = read_vocabulary(folder)
        if vocabulary is None or taught is None:
            return None
        vocabulary = vocabulary.with_words_of(taught)
    return vocabulary
