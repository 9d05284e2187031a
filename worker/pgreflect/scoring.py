"""Scoring an answer against a reference, with one normaliser per kind of reference:

- a number (e.g. "18", "-3.5", "1,000"): the last number in the answer, compared numerically (GSM8K style);
- a single option letter A-J: the option the answer picks ("B", "(B)", "B.", "The answer is B", "B) ...", and the
  last LaTeX box, "\\boxed{B}", which reasoning answers end with);
- anything else, short text: lower-cased, punctuation, articles and extra spaces removed; correct when the
  normalised reference equals the normalised answer or appears in it as whole words.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED_LETTER = re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}")
_LETTER_PATTERNS = [
    re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*:?\s*\**\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"\b([A-J])\s*(?:is correct|is the correct)", re.IGNORECASE),
    # a leading letter counts only when set apart ("B", "B.", "(B)", "B) ..."), not "I think" or "A good"
    re.compile(r"^\s*\(?([A-J])(?:\)|\.|:|\s*$|\s*\n)"),
]
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def kind_of(reference: str) -> str:
    ref = reference.strip()
    if re.fullmatch(r"[A-J]", ref):
        return "choice"
    if re.fullmatch(r"-?[\d,]*\.?\d+", ref.replace(" ", "")):
        return "number"
    return "text"


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def extract_number(answer: str) -> float | None:
    numbers = _NUMBER.findall(answer.replace("$", ""))
    return _to_float(numbers[-1]) if numbers else None


def choice_span(answer: str) -> tuple[int, int] | None:
    """Character span of the option letter the answer picks: its last LaTeX box (a reasoning answer names
    options on the way and boxes its pick at the end), else the first "the answer is B", "B is correct" or
    leading "B."; None when it picks none. Scoring and the signals read the same letter."""
    boxed = list(_BOXED_LETTER.finditer(answer))
    if boxed:
        return boxed[-1].span(1)
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(answer)
        if m:
            return m.span(1)
    return None


def extract_choice(answer: str) -> str | None:
    span = choice_span(answer)
    return answer[span[0]:span[1]].upper() if span else None


def normalise_text(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def is_correct(answer: str, reference: str, aliases: Sequence[str] = ()) -> bool:
    """Whether the answer matches the reference or any of its aliases (other accepted answers)."""
    return any(_matches(answer, ref) for ref in (reference, *aliases))


def _matches(answer: str, reference: str) -> bool:
    kind = kind_of(reference)
    if kind == "number":
        got, want = extract_number(answer), _to_float(reference.replace(" ", ""))
        return got is not None and want is not None and abs(got - want) < 1e-6 * max(1.0, abs(want))
    if kind == "choice":
        return extract_choice(answer) == reference.strip().upper()
    ref, ans = normalise_text(reference), normalise_text(answer)
    return bool(ref) and (ref == ans or f" {ref} " in f" {ans} ")
