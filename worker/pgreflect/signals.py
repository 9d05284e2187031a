"""Rule checks on an answer's text: cheap signals that something is wrong, each 0 or 1.

They need the plaintext, so the worker computes them and reports them with the answer; the database
combines them with the other signals into the calibrated confidence.
"""

from __future__ import annotations

import json
import re

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


def rule_checks(prompt: str, answer: str, finish_reason: str) -> dict[str, float]:
    checks = {
        "rule_empty": not answer.strip(),
        "rule_truncated": finish_reason == "length",
        "rule_repetition": repetition_loop(answer),
        "rule_refusal": bool(_REFUSAL.search(answer)),
        "rule_format": format_violated(prompt, answer),
    }
    return {name: float(hit) for name, hit in checks.items()}
