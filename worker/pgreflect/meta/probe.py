"""The hidden-state probe: an L2 logistic regression on the model's final-layer state after each answer
(reflect.answer_states), fitted on a version's labelled answers and stored in reflect.state_probes, where the
database applies it to every new answer (the `probe` signal, one pgvector inner product in complete_v2).

Why a fit in Python: the states have ~1,500 dimensions; a Newton step needs a d x d solve that numpy does in
~0.1 s and PL/pgSQL cannot do in reasonable time. What the database stores: one weight per dimension (already
divided by the training states' spread) and a bias.

The fit (pgreflect calibrate --probe):
- the answers the calibrator fit holds out (the same hash rule) are held out here too, for the probe's
  metrics and for the comparison with the active probe: a new probe is activated only when its held-out
  log-loss is lower (or there is none);
- the regularisation strength is chosen by cross-validation on the training answers, holding out whole
  evaluation datasets when at least three are labelled (probes transfer poorly across tasks: the choice should
  reward transfer, not fit), otherwise five folds by a hash of the request id;
- once activated, every labelled answer gets the `probe` signal a calibrator can learn from: on a training
  answer, the value of a probe fitted on the other folds (so the calibrator does not learn to trust a probe on
  the answers it memorised), on a held-out answer the new probe's value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from pgreflect.embeddings import to_pgvector
from pgreflect.errors import InvalidInput
from pgreflect.sql import query

STRENGTHS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # C: inverse L2 strength on standardised states
MIN_PER_CLASS = 20


@dataclass
class Probe:
    weights: np.ndarray  # applied to raw states
    bias: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + self.bias


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, iterations: int = 50) -> Probe:
    """Minimises C * sum(log-loss) + |w|^2 / 2 on standardised x (the intercept unpenalised) by Newton's
    method, and folds the standardisation into the returned weights and bias."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    t = y.astype(float)
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], 1.0 / c)
    penalty[0] = 1e-8
    for _ in range(iterations):
        p = _sigmoid(z @ w)
        grad = z.T @ (p - t) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-7:
            break
    weights = w[1:] / sd
    return Probe(weights, float(w[0] - weights @ mu))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def auroc(p: np.ndarray, y: np.ndarray) -> float | None:
    pos, neg = p[y], p[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def folds(ids: np.ndarray, datasets: list[str | None]) -> tuple[np.ndarray, str]:
    """Fold of each answer: its evaluation dataset when >= 3 datasets are labelled, else one of five by hash;
    and which of the two it is."""
    named = sorted({d for d in datasets if d})
    if len(named) >= 3 and all(datasets):
        return np.array([named.index(d) for d in datasets]), "dataset"
    return np.array([int(hashlib.sha256(str(i).encode()).hexdigest(), 16) % 5 for i in ids]), "hash"


def choose_strength(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> float:
    best, best_loss = STRENGTHS[0], float("inf")
    for c in STRENGTHS:
        loss = 0.0
        for f in np.unique(fold):
            train, test = fold != f, fold == f
            if len(np.unique(y[train])) < 2:
                continue
            loss += log_loss(_sigmoid(fit_logistic(x[train], y[train], c).logits(x[test])), y[test]) * test.sum()
        if loss < best_loss:
            best, best_loss = c, loss
    return best


def out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, c: float) -> np.ndarray:
    out = np.full(len(y), np.nan)
    for f in np.unique(fold):
        train = fold != f
        if len(np.unique(y[train])) == 2:
            out[fold == f] = _sigmoid(fit_logistic(x[train], y[train], c).logits(x[fold == f]))
    return out


def fit(conn: psycopg.Connection, model_version: str) -> dict[str, Any]:
    """Fits, compares, stores (and activates when better) a version's probe; returns what it did."""
    rows = conn.execute(query("probe_training_set"), {"model_version": model_version}).fetchall()
    y = np.array([r[2] for r in rows], dtype=bool)
    if len(rows) == 0 or min(y.sum(), (~y).sum()) < MIN_PER_CLASS:
        raise InvalidInput(f"model version {model_version!r}: {len(rows)} labelled answers with a hidden state "
                           f"({int(y.sum())} right, {int((~y).sum())} wrong); a probe needs at least {MIN_PER_CLASS} "
                           "of each (answers get a state from the llama backend)")
    ids = np.array([r[0] for r in rows])
    x = np.array([r[1] for r in rows], dtype=np.float64)
    if len({len(r[1]) for r in rows}) != 1:
        raise InvalidInput(f"model version {model_version!r}: hidden states of different sizes")
    held = np.array([r[4] for r in rows], dtype=bool)
    train = ~held
    fold, fold_kind = folds(ids[train], [r[3] for r, t in zip(rows, train, strict=True) if t])
    c = choose_strength(x[train], y[train], fold)
    probe = fit_logistic(x[train], y[train], c)
    p_held = _sigmoid(probe.logits(x[held]))
    metrics: dict[str, Any] = {"c": c, "folds": fold_kind,
                               "n_train": int(train.sum()), "n_heldout": int(held.sum()),
                               "heldout": {"log_loss": log_loss(p_held, y[held]), "auroc": auroc(p_held, y[held])}}
    active = conn.execute(query("active_probe"), {"model_version": model_version}).fetchone()
    activate = True
    if active is not None and held.any():
        old_w = np.array(active[1], dtype=np.float64)
        if len(old_w) == x.shape[1]:
            old = _sigmoid(x[held] @ old_w + active[2])
            metrics["replaced"] = {"probe_id": active[0], "heldout_log_loss": log_loss(old, y[held])}
            activate = log_loss(old, y[held]) > metrics["heldout"]["log_loss"]
    pid = conn.execute(query("install_probe"), {
        "model_version": model_version, "weights": to_pgvector(probe.weights),
        "bias": probe.bias, "n_train": int(train.sum()), "metrics": psycopg.types.json.Jsonb(metrics),
        "activate": activate}).fetchone()[0]
    if activate:
        values = np.empty(len(y))
        values[train] = out_of_fold(x[train], y[train], fold, c)
        values[held] = p_held
        keep = ~np.isnan(values)
        conn.execute(query("set_probe_signals"), {"model_version": model_version, "request_ids": ids[keep].tolist(),
                                                  "values": values[keep].tolist()})
    return {"probe": pid, "active": activate, **metrics}
