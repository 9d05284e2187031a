"""PII redaction with pattern recognisers validated by libraries, before text is shown to people (review,
CLI display, export) or used as memory or training data. The app still gets its own answer unredacted.

Each recogniser finds candidates with a pattern and keeps only those a validator accepts, which is what
keeps false positives down on ordinary text:
  email      RFC-5322-ish address with a dotted domain
  phone      phonenumbers' PhoneNumberMatcher (Google's libphonenumber), valid numbers only; numbers
             written without a country code are read in the configured default regions
  card       13-19 digits (spaces or dashes allowed) that pass the Luhn check (python-stdnum) and have a
             known issuer prefix
  iban       python-stdnum's IBAN validation (country format and mod-97 check)
  ip         IPv4 and IPv6 addresses that Python's ipaddress parses (version-like strings such as 1.2.3
             are not addresses)
  secret     API keys and tokens: known prefixes (sk-, ghp_, xoxb-, AKIA, ...), JWTs, PEM private keys,
             and long high-entropy strings assigned to a name like key/token/secret/password
Person names are not detected: that needs an NER model (spaCy's are not installable here).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import phonenumbers
from stdnum import iban, luhn

KINDS = ("email", "phone", "card", "iban", "ip", "secret")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")
_CARD = re.compile(r"(?<![\w+-])(?:\d[ -]?){12,18}\d(?![\w-])")  # "+49 1517 ..." is a phone number
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_SECRET_PREFIXED = re.compile(
    r"(?<![\w-])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|sk_live_[A-Za-z0-9]{20,}|rk_live_[A-Za-z0-9]{20,}"
    r"|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,})"
)
_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")
_ASSIGNED = re.compile(
    r"(?i)\b(?:api[_-]?key|secret|token|password|passwd|access[_-]?key|auth)\w*\s*[:=]\s*[\"']?([A-Za-z0-9+/_=.-]{16,})"
)
# Issuer prefixes (IIN ranges) of the card networks people paste: Visa, Mastercard, Amex, Discover, Diners,
# JCB, UnionPay, Maestro. A Luhn-valid digit run outside them is more likely an order number.
_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|6(?:011|5|4[4-9]|22)|3(?:0[0-5]|[68])|35|62|5[06-9]|6[0-9])")


def _entropy(s: str) -> float:
    counts = {c: s.count(c) for c in set(s)}
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


def _emails(text: str) -> Iterable[Finding]:
    for m in _EMAIL.finditer(text):
        yield Finding("email", m.start(), m.end())


def _cards(text: str) -> Iterable[Finding]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn.is_valid(digits):
            yield Finding("card", m.start(), m.end())


def _ibans(text: str) -> Iterable[Finding]:
    for m in _IBAN.finditer(text):
        if iban.is_valid(m.group()):
            yield Finding("iban", m.start(), m.end())


def _ips(text: str) -> Iterable[Finding]:
    for rx in (_IPV4, _IPV6):
        for m in rx.finditer(text):
            candidate = m.group()
            if rx is _IPV6 and sum(1 for g in candidate.split(":") if g) < 2:
                continue  # "::2" in b[::2] is an address only on paper
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                continue
            yield Finding("ip", m.start(), m.end())


def _secrets(text: str) -> Iterable[Finding]:
    for rx in (_SECRET_PREFIXED, _JWT, _PEM):
        for m in rx.finditer(text):
            yield Finding("secret", m.start(), m.end())
    for m in _ASSIGNED.finditer(text):
        value = m.group(1)
        mixed = any(c.isdigit() for c in value) or (any(c.isupper() for c in value) and any(c.islower() for c in value))
        if _entropy(value) >= 3.5 and mixed:
            yield Finding("secret", m.start(1), m.end(1))


@dataclass
class Redactor:
    kinds: tuple[str, ...] = KINDS
    regions: tuple[str, ...] = ("US", "GB", "DE", "FR")  # numbers without a country code are read in these
    placeholder: Callable[[str], str] = field(default=lambda kind: f"[{kind.upper()}]")

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {', '.join(KINDS)}")

    def _phones(self, text: str) -> Iterable[Finding]:
        seen: set[tuple[int, int]] = set()
        for region in self.regions:
            for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
                # Short numbers valid in some plans (a German "1689") are years far more often than phones.
                if sum(c.isdigit() for c in m.raw_string) < 7:
                    continue
                if (m.start, m.end) not in seen:
                    seen.add((m.start, m.end))
                    yield Finding("phone", m.start, m.end)

    def find(self, text: str) -> list[Finding]:
        finders: dict[str, Callable[[str], Iterable[Finding]]] = {
            "email": _emails, "card": _cards, "iban": _ibans, "ip": _ips, "secret": _secrets, "phone": self._phones}
        found: list[Finding] = []
        # Order matters where spans overlap: the more specific recognisers claim their span first.
        for kind in ("secret", "email", "iban", "card", "ip", "phone"):
            if kind in self.kinds:
                found.extend(finders[kind](text))
        kept: list[Finding] = []
        taken: list[tuple[int, int]] = []
        for f in found:
            if all(f.end <= s or f.start >= e for s, e in taken):
                kept.append(f)
                taken.append((f.start, f.end))
        return sorted(kept, key=lambda f: f.start)

    def redact(self, text: str | None) -> str | None:
        if not text:
            return text
        out, last = [], 0
        for f in self.find(text):
            out.append(text[last:f.start])
            out.append(self.placeholder(f.kind))
            last = f.end
        out.append(text[last:])
        return "".join(out)


_default = Redactor()


def redact(text: str | None) -> str | None:
    return _default.redact(text)
