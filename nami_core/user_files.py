"""Reading the text files users hand to nami: prompt lists, annotations, metadata, manifests, configs.

One set of rules for all of them:

* text is UTF-8; a byte-order mark at the start (as Windows editors write it) is dropped, never
  read as part of the first line; other bytes, and NUL bytes (no text holds them), are one error
  line naming the file;
* JSON is strict: a key given twice in one object (the second would silently replace the first),
  the non-standard constants NaN / Infinity, numbers beyond a float (1e400, read as infinity) and
  nesting too deep to parse are refused, naming the file (and line);
* each reader names what the file was meant to be, so a refusal says which input is wrong.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import NamiError

BOM = "\ufeff"


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path` without a leading byte-order mark; NamiError naming `what` and the
    file when it is missing, a folder, or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise NamiError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise NamiError(f"{what} {path} is not UTF-8 text") from None
    if "\0" in text:  # UTF-16 without its mark, or a binary file that happens to decode
        raise NamiError(f"{what} {path} is not UTF-8 text (it holds NUL bytes, line {text[:text.index(chr(0))].count(chr(10)) + 1})")
    return text[1:] if text.startswith(BOM) else text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen[key] = value
    return seen


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: a float beyond any float, read as infinity
        raise ValueError(f"{text} is beyond the largest float")
    return value


def is_number(value: Any) -> bool:
    """A JSON number as parsed: int or float, not a boolean (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_json(text: str, where: str) -> Any:
    """`text` as strict JSON (no repeated keys, no NaN/Infinity nor numbers beyond a float, no
    nesting deeper than Python's stack); NamiError prefixed by `where`."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)
    except DuplicateKey as exc:
        raise NamiError(f"{where}: the key {exc.key!r} appears twice in one object (which one is meant?)") from None
    except RecursionError:
        raise NamiError(f"{where}: not valid JSON here (nested too deeply)") from None
    except json.JSONDecodeError as exc:
        at = f"column {exc.colno}" if "\n" not in text.strip() else f"line {exc.lineno} column {exc.colno}"
        raise NamiError(f"{where}: not valid JSON ({exc.msg} at {at})") from None
    except ValueError as exc:
        raise NamiError(f"{where}: not valid JSON ({exc})") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """The strict JSON value of the file `path` (see `parse_json`)."""
    return parse_json(read_text(path, what), f"{what} {path}")


def read_json_object(path: str | Path, what: str = "file") -> dict:
    """`read_json`, which must hold a JSON object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise NamiError(f"{what} {path} must hold a JSON object")
    return data


def read_jsonl(path: str | Path, what: str = "file") -> list[dict]:
    """JSON objects, one per non-blank line; NamiError naming `path:line` for a bad line."""
    records = []
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}:{number}")
        if not isinstance(record, dict):
            raise NamiError(f"{path}:{number}: each line must be a JSON object")
        records.append(record)
    return records
