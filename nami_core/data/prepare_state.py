"""`prepare.json`: the settings and the source listing a prepared folder was started with.

A re-run may only add units made the same way from the same items. While the folder holds
finished units, other settings or a changed source listing are refused: the new units would
disagree with the old ones, and items would be lost or doubled. A folder with no finished unit
yet takes the new settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import NamiError

STATE_FILE = "prepare.json"
# Settings that shape every unit: a re-run must keep them.
CHECKED_SETTINGS = ("stages", "codec", "text_encoder", "max_text_tokens", "shard_size")


def check_previous(out: Path, settings: dict, has_units: bool) -> None:
    """Refuse `settings` (with their `source_fingerprint`) if they differ from those the finished
    units of `out` were made with."""
    path = out / STATE_FILE
    if not has_units or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise NamiError(f"{path} is unreadable ({why}), so the settings of {out} are unknown; "
                        "use another --out") from None
    for key in CHECKED_SETTINGS:
        if previous.get(key) != settings[key]:
            raise NamiError(
                f"{out} was prepared with {key}={previous.get(key)!r}, not {settings[key]!r}; "
                "use another --out or the same settings to resume"
            )
    check_source(out, previous.get("source_fingerprint"), settings["source_fingerprint"])


def check_source(out: Path, was: dict | None, now: dict) -> None:
    """Refuse a source whose listing changed since `out` was started (`was`: None when the folder
    predates fingerprints, which cannot be checked)."""
    if was is None or was == now:
        return
    if was.get("items") is not None and now.get("items") is not None and was["items"] != now["items"]:
        what = f"{now['items']} items, was {was['items']}"
    else:
        what = "other item names or sizes"
    raise NamiError(f"the source changed since {out} was started ({what}); restore it, or use another --out "
                    "to prepare it anew")
