"""Where a text encoder part keeps its tokenizer and weights.

Two layouts load:

* flat: `PATH/config.json` with the weights, tokenizer files beside them (transformers'
  `save_pretrained`, google/mt5-xxl with only `spiece.model`);
* split: `PATH/tokenizer/` beside `PATH/clip_text_encoder/` (or `PATH/text_encoder/`), as the
  public NAMI-T2I release and HunyuanDiT keep their multilingual CLIP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import NamiError

TOKENIZER_FOLDER = "tokenizer"
MODEL_FOLDERS = ("clip_text_encoder", "text_encoder")
BERT_KINDS = ("mclip", "bert")


@dataclass(frozen=True)
class PartFolders:
    """The folder holding the tokenizer files and the folder holding `config.json` + weights."""

    tokenizer: Path
    model: Path

    @property
    def config_file(self) -> Path:
        return self.model / "config.json"


def locate_part(path: Path) -> PartFolders:
    """The tokenizer and model folders of a text part at `path`, flat or split (module doc)."""
    path = Path(path)
    if not path.is_dir():
        raise NamiError(f"{path}: no text encoder directory")
    if (path / "config.json").is_file():
        model = path
    else:
        found = [path / name for name in MODEL_FOLDERS if (path / name / "config.json").is_file()]
        if not found:
            raise NamiError(
                f"{path}: no config.json; a text encoder folder holds config.json and its tokenizer, or "
                f"{TOKENIZER_FOLDER}/ beside {' or '.join(n + '/config.json' for n in MODEL_FOLDERS)}"
            )
        model = found[0]
    tokenizer = path / TOKENIZER_FOLDER if (path / TOKENIZER_FOLDER).is_dir() else model
    return PartFolders(tokenizer=tokenizer, model=model)


def _names_its_class(folder: Path) -> bool:
    """Whether `AutoTokenizer` can tell the tokenizer class from the folder alone."""
    if (folder / "config.json").is_file():
        return True
    settings = folder / "tokenizer_config.json"
    if not settings.is_file():
        return False
    try:
        return bool(json.loads(settings.read_text()).get("tokenizer_class"))
    except (json.JSONDecodeError, AttributeError):
        return False


def load_tokenizer(folder: Path, kind: str):
    """`AutoTokenizer` from `folder`; a BERT vocabulary folder that names no class (a bare
    `vocab.txt`, as split mCLIP layouts may ship) loads as `BertTokenizer`. An mT5 folder with
    only `spiece.model` is converted by transformers (needs sentencepiece and protobuf)."""
    from transformers import AutoTokenizer, BertTokenizer

    if kind in BERT_KINDS and not _names_its_class(folder) and (folder / "vocab.txt").is_file():
        return BertTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
