"""Signals from an answer's text and tokens: rule checks (cheap signs that something is wrong, each 0 or 1),
the answer span's probability, and the distribution over a multiple-choice prompt's options.

They need the plaintext, so the worker computes them and reports them with the answer; the database
combines them with the other signals into the calibrated confidence.
"""

from __future__ import annotations

import json
import math
import re

from pgreflect.scoring import choice_span

_REFUSAL = re.compile(
    r"\b(i (?:can(?:not|'t)|am (?:not able|unable)|won't) (?:help|answer|assist|provide|comply)|"
    r"as an ai(?: language model)?|i'm sorry, but i|i do not have (?:access|the ability))",
    re.IGNORECASE,
)
_ONE_WORD = re.compile(r"\b(?:in|with|using) (?:one|a single) word\b", re.IGNORECASE)
_NUMBER_ONLY = re.compile(r"\b(?:answer|reply|respond) with (?:only )?(?:a|the) number\b|\bonly the number\b",
                          re.IGNORECASE)
_YES_NO = re.compile(r"\b(?:answer|reply|respond) (?:with )?(?:only )?(?:yes or no|'yes' or 'no')\b", re.IGNORECASE)
_LETTER = re.compile(r"\b(?:answer|reply|respond) with (?:only )?(?:the |a )?(?:single )?letter\b", re.IGNORECASE)
_JSON = re.compile(r"\b(?:respond|answer|reply|output)\b[^.]{0,30}\bjson\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def repetition_loop(text: str, n: int = 4, threshold: float = 0.5, min_words: int = 24) -> bool:
    """True when most word n-grams of a long answer are repeats (a degenerate loop)."""
    words = text.split()
    if len(words) < min_words:
        return False
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) >= threshold


def format_violated(prompt: str, answer: str) -> bool:
    """True when the prompt asked for a specific short format that the answer does not have."""
    a = answer.strip().strip(".").strip()
    if _JSON.search(prompt):
        try:
            json.loads(answer.strip().removeprefix("```json").removeprefix("```").removesuffix("```"))
        except ValueError:
            return True
    if _YES_NO.search(prompt) and not re.match(r"^(yes|no)\b", a, re.IGNORECASE):
        return True
    if _LETTER.search(prompt) and not re.match(r"^\(?[A-Ja-j]\)?$", a):
        return True
    if _NUMBER_ONLY.search(prompt) and not re.fullmatch(r"-?[\d,]*\.?\d+", a.replace(" ", "")):
        return True
    return bool(_ONE_WORD.search(prompt) and len(a.split()) != 1)


def answer_span(answer: str) -> tuple[int, int] | None:
    """Character span of the answer proper: the option letter picked, else the final number, else the
    whole text when it is short (at most 8 words). None for long free text."""
    span = choice_span(answer)
    if span is not None:
        return span
    numbers = list(_NUMBER.finditer(answer))
    if numbers:
        return numbers[-1].span()
    stripped = answer.strip()
    if stripped and len(stripped.split()) <= 8:
        start = answer.index(stripped)
        return start, start + len(stripped)
    return None


def p_answer(token_texts: list[str], token_logprobs: list[float], answer: str) -> float | None:
    """Probability of the answer tokens: exp of the summed log-probs of the generated tokens that overlap the
    answer span (the letter of "The answer is B", the number at the end of a worked solution). None when the
    answer has no short span or the token texts do not line up with the text."""
    span = answer_span(answer)
    if span is None or "".join(token_texts) != answer:
        return None
    total, pos, hit = 0.0, 0, False
    for text, lp in zip(token_texts, token_logprobs, strict=True):
        start, end = pos, pos + len(text)
        if start < span[1] and end > span[0] and text.strip():
            total += lp
            hit = True
        pos = end
    return math.exp(total) if hit else None


OPTION_LETTERS = "ABCDEFGHIJ"
_OPTION_LINE = re.compile(r"(?:^|\n)\s*\(?([A-J])(?:\.|\)|:)\s+\S")


def prompt_options(prompt: str) -> str | None:
    """The option letters a multiple-choice prompt lists ("A. ...", "(B) ...", "C: ..." at line starts),
    when they run A, B, C, ... without a gap (at least two); None otherwise."""
    found = []
    for letter in _OPTION_LINE.findall(prompt):
        if letter not in found:
            found.append(letter)
    letters = "".join(sorted(found))
    return letters if len(letters) >= 2 and OPTION_LETTERS.startswith(letters) else None


def choice_token(token_texts: list[str], answer: str) -> int | None:
    """Index of the generated token that carries the option letter a choice answer picks ("B", "(B)",
    "The answer is B"); None when the answer picks no letter or the token texts do not line up."""
    if "".join(token_texts) != answer:
        return None
    span = choice_span(answer)
    if span is not None:
        pos = 0
        for i, text in enumerate(token_texts):
            if pos <= span[0] < pos + len(text):
                return i
            pos += len(text)
    return None


def option_signals(probs: dict[str, float]) -> dict[str, float]:
    """From the next-token distribution over the options at the answer's letter (renormalised over the
    options): the top option's probability, its margin over the second, and the entropy divided by log(k)."""
    p = sorted(probs.values(), reverse=True)
    entropy = -sum(x * math.log(x) for x in p if x > 0)
    return {"option_max_prob": p[0], "option_margin": p[0] - (p[1] if len(p) > 1 else 0.0),
            "option_entropy": entropy / math.log(len(p)) if len(p) > 1 else 0.0}


_ASKS_NUMBER = re.compile(r"\bnumber\b|\bhow (?:many|much)\b|\b(?:calculate|compute|solve)\b", re.IGNORECASE)


def question_kind(prompt: str, answer: str) -> str:
    """choice (the prompt lists options or asks for a letter), number (it asks for one), long (a free answer
    of more than 8 words) or short: the calibrator's one-hot kind features, so one fit serves mixed traffic."""
    if prompt_options(prompt) or _LETTER.search(prompt):
        return "choice"
    if _ASKS_NUMBER.search(prompt):
        return "number"
    return "long" if len(answer.split()) > 8 else "short"


def kind_signals(prompt: str, answer: str) -> dict[str, float]:
    kind = question_kind(prompt, answer)
    return {f"kind_{k}": float(kind == k) for k in ("choice", "number", "long")}


def rule_checks(prompt: str, answer: str, finish_reason: str) -> dict[str, float]:
    checks = {
        "rule_empty": not answer.strip(),
        "rule_truncated": finish_reason == "length",
        "rule_repetition": repetition_loop(answer),
        "rule_refusal": bool(_REFUSAL.search(answer)),
        "rule_format": format_violated(prompt, answer),
    }
    return {name: float(hit) for name, hit in checks.items()}
