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


def last_boxed(answer: str) -> str | None:
    """The content of the answer's last LaTeX box, "\\boxed{...}" (nested braces included), or None."""
    start = answer.rfind("\\boxed{")
    while start >= 0:
        depth, i = 1, start + len("\\boxed{")
        while i < len(answer) and depth:
            depth += {"{": 1, "}": -1}.get(answer[i], 0)
            i += 1
        if depth == 0:
            return answer[start + len("\\boxed{"):i - 1]
        start = answer.rfind("\\boxed{", 0, start)  # an unclosed box (cut off): the one before it
    return None


# "#### 18" (GSM8K's own mark), "the answer is 18", "the final answer is (C)", "Answer: $18".
_STATED = re.compile(r"(?:####|\banswer\s*(?:is|:))\s*:?\s*\**\s*"
                     r"(?:\(?([A-J])\)?(?![A-Za-z])|\\?\$?\s*(-?\d[\d,]*(?:\.\d+)?))", re.IGNORECASE)
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def stated_answer(answer: str) -> str | None:
    """What an answer states as its final answer, whatever its length: the content of its last box, else the
    letter or number of its last "the answer is ..." / "#### ...", else the letter of "C is correct"; None when
    it states none (an explanation, or reasoning cut off before its end)."""
    boxed = last_boxed(answer)
    if boxed is not None:
        return _LATEX_TEXT.sub(r"\1", boxed).replace("\\$", "$").replace("\\%", "%").strip()
    stated = _STATED.findall(answer)
    if stated:
        letter, number = stated[-1]
        return letter.upper() or number
    m = _LETTER_PATTERNS[1].search(answer)
    return m.group(1).upper() if m else None


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
