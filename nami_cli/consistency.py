"""Checks that keep the command line declared once (run by tests/test_cli_options.py).

`problems(root, declared)` reads the finished click tree and returns one line per problem:

* an option spelled the same in two commands must come from one declaration in
  `nami_cli/options.py` (same type, metavar, hidden-ness and, unless a factory declared it, help);
  options.py may declare variants of one spelling where commands mean different things by it
  (`--steps`: optimizer steps or Euler steps), each variant once;
* no option carries a default in the CLI (the core's dataclass owns it);
* an option of a closed set of values lists exactly the core's constant as its metavar
  (`CORE_CHOICES`, and the `one_of` checks of the fields it fills), and its help does not restate
  that list by hand;
* every option sits in a help panel.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Any, Iterable, Sequence

from .build import commands, flag_of, options_of, owners_of


def core_choices() -> dict[str, list[tuple[str, ...]]]:
    """flag -> the core constants its metavar may list (one per declared variant)."""
    from nami_core.config import (ATTENTION_BACKENDS, CHECKPOINTING, DEVICES, DTYPE_CHOICES, MODES, PREDICTIONS,
                                  PRESETS, TEXT_PADDINGS, TEXT_POSITIONS, TIMESTEP_ROUNDINGS, TIMESTEP_SAMPLINGS)
    from nami_core.eval.dpg import ANSWER_MATCHES
    from nami_core.model.lora import LORA_TARGETS
    from nami_core.text.prompt_styles import PROMPT_STYLES
    from nami_core.train.config import DTYPES, PRELOADS

    return {
        "--preset": [tuple(PRESETS)], "--mode": [MODES], "--modes": [MODES], "--dtype": [DTYPE_CHOICES, DTYPES],
        "--grad-checkpointing": [CHECKPOINTING], "--attention": [ATTENTION_BACKENDS], "--device": [DEVICES],
        "--lora-targets": [tuple(LORA_TARGETS)], "--timestep-rounding": [TIMESTEP_ROUNDINGS],
        "--prompt-style": [tuple(PROMPT_STYLES)], "--answer-match": [ANSWER_MATCHES],
        "--text-padding": [TEXT_PADDINGS], "--timestep-sampling": [TIMESTEP_SAMPLINGS], "--preload": [PRELOADS],
        "--prediction": [PREDICTIONS], "--text-positions": [TEXT_POSITIONS],
    }


def listed(metavar: str | None) -> tuple[str, ...] | None:
    """The values a metavar lists ("a|b|c", or "a|b|c[,...]" for a comma list); None for a plain type."""
    if not metavar or "|" not in metavar:
        return None
    return tuple(metavar.removesuffix("[,...]").split("|"))


def mentions(text: str, word: str) -> bool:
    """`word` stands in `text` as a word of its own ("exact" is not in "exactly")."""
    return re.search(rf"(?<![\w+-]){re.escape(word)}(?![\w+-])", text) is not None


def annotation_of(param) -> Any:
    return getattr(getattr(param, "type_descriptor", None), "annotation", None)


def declared_help(param) -> str | None:
    """The help as the command declared it, before `build.show_core_bounds` added the bounds."""
    return getattr(param, "declared_help", param.help)


def differences(param, declared) -> list[str]:
    """What in `param` differs from the declaration `declared` (`options.Declared`)."""
    info = declared.info
    found = []
    if annotation_of(param) != declared.annotation:
        found.append(f"type {annotation_of(param)} instead of {declared.annotation}")
    if set(param.opts) | set(param.secondary_opts) != set(declared.spellings):
        found.append(f"spellings {sorted(param.opts + param.secondary_opts)}")
    if bool(param.hidden) != bool(info.hidden):
        found.append("hidden-ness")
    if not param.is_flag and param.metavar != info.metavar:
        found.append(f"metavar {param.metavar!r} instead of {info.metavar!r}")
    if not declared.help_varies and declared_help(param) != info.help:
        found.append("help")
    return found


def field_choices(owners: Iterable[Any]) -> dict[str, tuple[str, ...]]:
    """flag -> the values the `one_of` check of an owner dataclass's field accepts."""
    from nami_core.config import option_of

    found: dict[str, tuple[str, ...]] = {}
    for owner in owners:
        if dataclasses.is_dataclass(owner):
            for f in dataclasses.fields(owner):
                if "one_of" in f.metadata:
                    found.setdefault(option_of(f), f.metadata["one_of"])
    return found


def problems(root, declared: Sequence[Any], choices: dict[str, list[tuple[str, ...]]] | None = None) -> list[str]:
    """Every problem of the click tree `root` against the declarations `declared` (see the module doc)."""
    choices = core_choices() if choices is None else choices
    by_flag: dict[str, list[Any]] = defaultdict(list)
    for d in declared:
        by_flag[d.flag].append(d)
    uses: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    found: list[str] = []
    for path, command in commands(root):
        name = "nami " + " ".join(path)
        checked = field_choices(owners_of(command))
        for param in options_of(command):
            flag = flag_of(param)
            uses[flag].append((name, param))
            if param.default is not None:
                found.append(f"{flag} of `{name}` has the default {param.default!r} in the CLI; the core owns defaults")
            if not getattr(param, "rich_help_panel", None) and not param.hidden:
                found.append(f"{flag} of `{name}` is in no help panel")
            values = listed(param.metavar)
            allowed = [tuple(c) for c in choices.get(flag, [])] + ([checked[flag]] if flag in checked else [])
            if allowed and values not in allowed:
                found.append(f"{flag} of `{name}` lists {values} but the core accepts "
                             + " or ".join(str(c) for c in allowed))
            if values and param.help and all(mentions(param.help, v) for v in values):
                found.append(f"the help of {flag} of `{name}` restates its choices; the metavar lists them")
    for flag, places in uses.items():
        variants = by_flag.get(flag, [])
        if len(places) > 1 and not variants:
            signatures = {(str(annotation_of(p)), declared_help(p), p.default, p.metavar) for _, p in places}
            what = "the same way" if len(signatures) == 1 else "with different help, type or default"
            found.append(f"{flag} is declared {what} in {len(places)} commands ({', '.join(n for n, _ in places)}); "
                         "declare it once in nami_cli/options.py")
            continue
        for name, param in places:
            if variants and all(differences(param, d) for d in variants):
                closest = min((differences(param, d) for d in variants), key=len)
                found.append(f"{flag} of `{name}` differs from its declaration in nami_cli/options.py: "
                             + ", ".join(closest))
    return found
