"""Follow-ups on an answer: a grammar-constrained critique, and agreement between extra samples."""

from __future__ import annotations

from typing import Any

from pgreflect.agreement import agreement
from pgreflect.jobs.base import JobContext, JobRun, check_cancel


class CritiqueHandler:
    kind = "critique"

    def run(self, ctx: JobContext, job: JobRun) -> dict[str, Any] | None:
        inp = ctx.input()
        if inp is None:
            return None
        check_cancel(job)
        request = inp.request()
        return {"critique": ctx.backend(job.model_version_id).critique(request, inp.answer or "", cancel=job.cancel)}


def sample_params(params: dict[str, Any], temperature: float, i: int) -> dict[str, Any]:
    """The i-th agreement sample's generation parameters: the request's own (its token budget), sampled, seeded
    by i so that a resumed job draws what it would have drawn."""
    return {**params, "temperature": temperature, "seed": i + 1, "top_p": 0.95, "top_k": 0}


class AgreementHandler:
    """`samples` extra samples at `temperature`; each finished sample is checkpointed, so a worker killed
    half-way leaves the samples it drew to the next claim (`resumed_from` in the result says how many)."""

    kind = "agreement"

    def run(self, ctx: JobContext, job: JobRun) -> dict[str, Any] | None:
        inp = ctx.input()
        if inp is None:
            return None
        backend = ctx.backend(job.model_version_id)
        texts: list[str] = list((job.checkpoint or {}).get("texts", []))
        resumed_from = len(texts)
        samples = int(job.payload.get("samples", 3))
        temperature = float(job.payload.get("temperature", 0.7))
        for i in range(len(texts), samples):
            check_cancel(job)
            sample = inp.request(sample_params(inp.params, temperature, i))
            texts.append(backend.generate(sample, job.cancel).text)
            if len(texts) < samples:
                ctx.checkpoint({"texts": texts})
        return {"signals": {"agreement": agreement(inp.answer or "", texts, ctx.embedder)},
                "resumed_from": resumed_from}
