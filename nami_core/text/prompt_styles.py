"""Prompt styles: fixed text a sampling front end adds to the user's prompt.

`plain` (the default) passes prompts through. `nami-t2i-demo` is how the public NAMI-T2I
demo script prompts its model: it appends a quality suffix straight after the caption (no
space) and, when no negative prompt is given, guides away from a fixed negative prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NamiError


@dataclass(frozen=True)
class PromptStyle:
    """`suffix` is appended to every prompt; `negative` replaces an absent negative prompt."""

    name: str
    suffix: str = ""
    negative: str | None = None

    def apply(self, prompt: str, negative: str | None) -> tuple[str, str | None]:
        """(prompt the model sees, negative prompt the model sees)."""
        return prompt + self.suffix, negative if negative is not None else self.negative


PROMPT_STYLES = {
    style.name: style
    for style in (
        PromptStyle("plain"),
        PromptStyle(
            "nami-t2i-demo",
            suffix=".extremely detailed,best quality,high quality,perfect composition",
            negative="(face asymmetry, eyes asymmetry, deformed eyes, open mouth)",
        ),
    )
}


def get_prompt_style(name: str) -> PromptStyle:
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        raise NamiError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {name!r}") from None
