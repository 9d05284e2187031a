"""Model backends: what turns a claimed request into text plus per-token log-probabilities."""

from pgreflect.backends.base import Backend, BackendError, Cancelled, Generation, GenerationRequest

__all__ = ["Backend", "BackendError", "Cancelled", "Generation", "GenerationRequest"]
