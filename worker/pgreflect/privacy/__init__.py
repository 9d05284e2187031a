"""Privacy: PII redaction before text reaches people or training."""

from pgreflect.privacy.redact import KINDS, Finding, Redactor, redact

__all__ = ["KINDS", "Finding", "Redactor", "redact"]
