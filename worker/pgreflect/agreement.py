"""Do two answers to the same question agree? For the agreement signal (share of extra samples that agree
with the main answer).

Each answer is read as what it answers: what it states as its final answer at any length (its last
"\\boxed{...}", "the answer is C", "#### 18": a worked solution or reasoned choice agrees with another when
both reach the same answer, however differently they argue), else, for a short answer (up to 8 words), the
answer itself. Two readings agree on the option letter when both pick one, else on the number when both are
one, else on the normalised text. A sample that reasons at length and states no answer (cut off before its
end) does not agree with an answer that states one. Two long answers that state none are compared by the
cosine similarity of their sentence embeddings (>= 0.85 agrees), or by word overlap (Jaccard >= 0.5) when no
embedding model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgreflect.scoring import extract_choice, extract_number, normalise_text, stated_answer

SHORT_WORDS = 8
COSINE_AGREE = 0.85
JACCARD_AGREE = 0.5
_STATED_NUMBER = re.compile(r"\s*(-?[\d,]*\.?\d+)\s*[A-Za-z ]*")


@dataclass(frozen=True)
class Reading:
    letter: str | None
    number: float | None
    text: str

    def agrees(self, other: Reading) -> bool:
        if self.letter and other.letter:
            return self.letter == other.letter
        if self.number is not None and other.number is not None:
            return abs(self.number - other.number) < 1e-9 * max(1.0, abs(self.number))
        return self.text == other.text


def _read(text: str, normalised: str) -> Reading:
    return Reading(extract_choice(text), extract_number(text), normalised)


def _read_stated(stated: str) -> Reading:
    # A number, with a unit or not ("$18", "18 dollars"); a date ("05/01/2021") or an expression ("\\frac{1}{2}")
    # holds several numbers and is compared as text, not by its last number.
    number = _STATED_NUMBER.fullmatch(stated.replace("$", "").replace("%", ""))
    return Reading(extract_choice(stated), float(number.group(1).replace(",", "")) if number else None,
                   normalise_text(stated))


def answers_agree(a: str, b: str, embedder: Any = None) -> bool:
    sa, sb = stated_answer(a), stated_answer(b)
    na, nb = normalise_text(a), normalise_text(b)
    ra = _read_stated(sa) if sa is not None else _read(a, na) if len(na.split()) <= SHORT_WORDS else None
    rb = _read_stated(sb) if sb is not None else _read(b, nb) if len(nb.split()) <= SHORT_WORDS else None
    if ra is not None and rb is not None:
        return ra.agrees(rb)
    if sa is not None or sb is not None:
        return False  # one reached a final answer, the other reasoned at length and reached none
    if embedder is not None:
        va, vb = embedder.embed([a, b])
        return float(np.dot(va, vb)) >= COSINE_AGREE
    wa, wb = set(na.split()), set(nb.split())
    return len(wa & wb) / max(1, len(wa | wb)) >= JACCARD_AGREE


def agreement(main: str, samples: list[str], embedder: Any = None) -> float:
    return sum(answers_agree(main, s, embedder) for s in samples) / len(samples) if samples else 1.0
