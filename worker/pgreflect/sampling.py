"""Token selection and log-probabilities from raw logits (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# top_p without top_k: look at the 1,000 most likely tokens first; only when their mass is below top_p is
# the whole vocabulary sorted (argsort of 151k floats costs ~8 ms, argpartition ~1 ms).
_NUCLEUS_PREFILTER = 1000


def log_softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64, copy=False)
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def token_logprob(logits: npt.NDArray[np.floating], token: int) -> float:
    """log P(token) under the model's unmodified distribution (temperature 1, no truncation)."""
    x = logits.astype(np.float64, copy=False)
    m = float(np.max(x))
    return float(x[token] - (m + np.log(np.sum(np.exp(x - m)))))


def top_alternatives(logits: npt.NDArray[np.floating], k: int) -> list[tuple[int, float]]:
    """The k most likely next tokens with their log-probabilities (unmodified distribution), most likely first."""
    x = logits.astype(np.float64, copy=False)
    k = min(k, x.shape[0])
    ids = np.argpartition(-x, k - 1)[:k]
    ids = ids[np.argsort(-x[ids], kind="stable")]
    m = float(np.max(x))
    norm = m + float(np.log(np.sum(np.exp(x - m))))
    return [(int(i), float(x[i] - norm)) for i in ids]


def choose_token(
    logits: npt.NDArray[np.floating],
    temperature: float,
    top_k: int,
    top_p: float,
    rng: np.random.Generator,
) -> int:
    """Greedy when temperature is 0; otherwise samples after temperature, top-k and top-p."""
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64, copy=False) / temperature
    n = x.shape[0]
    if 0 < top_k < n:
        candidates = np.argpartition(-x, top_k - 1)[:top_k]
    elif top_p < 1.0 and n > _NUCLEUS_PREFILTER:
        candidates = np.argpartition(-x, _NUCLEUS_PREFILTER - 1)[:_NUCLEUS_PREFILTER]
    else:
        candidates = np.arange(n)
    z = x[candidates]
    probs = np.exp(z - np.max(z))
    if top_p < 1.0:
        full_mass = np.sum(np.exp(x - np.max(x)))
        if top_k <= 0 and candidates.shape[0] < n and np.sum(probs) / full_mass < top_p:
            candidates = np.arange(n)
            z = x
            probs = np.exp(z - np.max(z))
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order]) / np.sum(probs)
        keep = int(np.searchsorted(cumulative, top_p) + 1)
        order = order[:keep]
        candidates = candidates[order]
        probs = probs[order]
    probs = probs / np.sum(probs)
    return int(candidates[rng.choice(probs.shape[0], p=probs)])
