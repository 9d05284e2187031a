"""Checks the parent's rewordings of corrected prompts before the gate asks them (part r): a rewording must be
a different text, must not give the answer away, and must not ramble. What the parent wrote is kept as it is
otherwise: a poor but fair rewording is still a question the fact should answer."""

from __future__ import annotations

import re
from typing import Any

from pgreflect.scoring import is_correct, normalise_text

_LABEL = re.compile(r"^\s*(rewritten|reworded|rephrased|new)?\s*(question|message|version)?\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’"


def clean(original: str, rephrasing: str) -> str:
    """The rewording without a leading label ("Rewritten question:") or quotes; a one-line prompt keeps only
    the first line of its rewording (a model often adds an answer or a note after it)."""
    text = rephrasing.strip()
    if "\n" not in original.strip():
        text = next((line for line in text.splitlines() if line.strip()), "")
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def rejection(original: str, rephrasing: str, reference: str) -> str | None:
    """Why a cleaned rewording cannot be asked, or None when it can."""
    if not rephrasing:
        return "empty"
    if normalise_text(rephrasing) == normalise_text(original):
        return "same as the original"
    if is_correct(rephrasing, reference) or _new_mention(reference, rephrasing, original):
        return "contains the answer"
    if len(rephrasing) > 3 * len(original) + 50:
        return "too long"
    return None


def _new_mention(reference: str, rephrasing: str, original: str) -> bool:
    """The reference, as words, is in the rewording and was not in the original (the scorer reads one number
    from a text, so "5 + 5 = 10. What is 5 + 5?" would not count as giving 10 away)."""
    ref = f" {normalise_text(reference)} "
    return ref.strip() != "" and ref in f" {normalise_text(rephrasing)} " and ref not in f" {normalise_text(original)} "


def accepted(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """gate_rephrase rows (example_request_id, state, prompt, rephrasing, reference) -> the rewordings to ask."""
    out = []
    for example_id, state, prompt, rephrasing, reference in rows:
        if state != "succeeded" or prompt is None or rephrasing is None or reference is None:
            continue
        text = clean(prompt, rephrasing)
        if rejection(prompt, text, reference) is None:
            out.append({"example_request_id": example_id, "prompt": text})
    return out
