"""Do two answers to the same question agree? For the agreement signal (share of extra samples that agree
with the main answer).

Short answers are compared after normalisation: the option letter when both pick one, the final number when
both end in one, else the normalised text. Long answers (more than 8 words) are compared by the cosine
similarity of their sentence embeddings (>= 0.85 agrees), or by word overlap (Jaccard >= 0.5) when no
embedding model is loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgreflect.scoring import extract_choice, extract_number, normalise_text

SHORT_WORDS = 8
COSINE_AGREE = 0.85
JACCARD_AGREE = 0.5


def answers_agree(a: str, b: str, embedder: Any = None) -> bool:
    na, nb = normalise_text(a), normalise_text(b)
    if len(na.split()) <= SHORT_WORDS and len(nb.split()) <= SHORT_WORDS:
        ca, cb = extract_choice(a), extract_choice(b)
        if ca and cb:
            return ca == cb
        xa, xb = extract_number(a), extract_number(b)
        if xa is not None and xb is not None:
            return abs(xa - xb) < 1e-9 * max(1.0, abs(xa))
        return na == nb
    if embedder is not None:
        va, vb = embedder.embed([a, b])
        return float(np.dot(va, vb)) >= COSINE_AGREE
    wa, wb = set(na.split()), set(nb.split())
    return len(wa & wb) / max(1, len(wa | wb)) >= JACCARD_AGREE


def agreement(main: str, samples: list[str], embedder: Any = None) -> float:
    return sum(answers_agree(main, s, embedder) for s in samples) / len(samples) if samples else 1.0
