"""A labelled PII corpus, generated: sentences that carry one PII item of a known kind and span, in the
formats people paste (spaced and dashed card numbers, national and international phone numbers, IBANs
with and without spaces, IPv4 and IPv6, provider API keys, JWTs, assigned secrets). Used by the redaction
tests and by bench/pii_bench.py; the clean side of the benchmark is real text (the packaged QA datasets)."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn


@dataclass(frozen=True)
class Sample:
    kind: str
    text: str
    value: str  # the PII as it appears in text


TEMPLATES = [
    "Please contact me at {} if anything changes.",
    "My details: {} (use this for the refund).",
    "Can you check why {} was rejected yesterday?",
    "Forwarding from the ticket: customer wrote '{}' in the form.",
    "{} is what I entered, is that the right format?",
    "Summarise this note: the account holder gave {} as reference and asked for a callback.",
]

_NAMES = ["anna", "j.smith", "maria_garcia", "li.wei", "o.brien", "dev+alerts", "k.nakamura", "pat"]
_DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "uni-bonn.example.de", "shop.example.fr"]
_PHONE_REGIONS = ["US", "GB", "DE", "FR"]
_CARD_PREFIXES = ["4", "51", "55", "2221", "34", "37", "6011", "65", "3528"]
_IBAN_FORMATS = {"DE": "8n10n", "GB": "4a6n8n", "NL": "4a10n", "AT": "5n11n", "CH": "5n12c"}


def _email(rng: random.Random) -> str:
    return f"{rng.choice(_NAMES)}{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    region = rng.choice(_PHONE_REGIONS)
    kind = rng.choice([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    example = phonenumbers.example_number_for_type(region, kind)
    national = str(example.national_number)
    for _ in range(100):  # vary the subscriber digits until the number is still valid
        digits = national[:3] + "".join(rng.choice(string.digits) for _ in national[3:])
        n = phonenumbers.parse(digits, region)
        if phonenumbers.is_valid_number(n):
            break
    else:
        n = example
    fmt = rng.choice([phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.NATIONAL,
                      phonenumbers.PhoneNumberFormat.E164])
    return phonenumbers.format_number(n, fmt)


def _card(rng: random.Random) -> str:
    prefix = rng.choice(_CARD_PREFIXES)
    length = 15 if prefix in ("34", "37") else 16
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    style = rng.choice(["plain", "spaced", "dashed"])
    if style == "plain":
        return number
    groups = [number[i:i + 4] for i in range(0, len(number), 4)]
    return (" " if style == "spaced" else "-").join(groups)


def _iban(rng: random.Random) -> str:
    # Countries whose account part has no national check digit of its own, so any digits make a valid IBAN
    # once the ISO 13616 check digits are computed.
    for _ in range(100):
        country, fmt = rng.choice(list(_IBAN_FORMATS.items()))
        bban = ""
        for part in fmt.replace("n", "n ").replace("a", "a ").replace("c", "c ").split():
            count, cls = int(part[:-1]), part[-1]
            alphabet = {"n": string.digits, "a": string.ascii_uppercase,
                        "c": string.ascii_uppercase + string.digits}[cls]
            bban += "".join(rng.choice(alphabet) for _ in range(count))
        number = country + iban.calc_check_digits(country + "00" + bban) + bban
        if iban.is_valid(number):
            return iban.format(number) if rng.random() < 0.5 else number
    raise RuntimeError("could not make a valid IBAN")


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + groups[-1]


def _token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _secret(rng: random.Random) -> str:
    choice = rng.randrange(7)
    if choice == 0:
        return "sk-" + _token(rng, 48)
    if choice == 1:
        return "ghp_" + _token(rng, 36)
    if choice == 2:
        return "AKIA" + _token(rng, 16, string.ascii_uppercase + string.digits)
    if choice == 3:
        return "xoxb-" + "-".join(_token(rng, 12, string.digits) for _ in range(2)) + "-" + _token(rng, 24)
    if choice == 4:
        return "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx" + _token(rng, 20) + "." + _token(rng, 43)
    if choice == 5:
        return "hf_" + _token(rng, 34)
    return "api_key=" + _token(rng, 32)


GENERATORS = {"email": _email, "phone": _phone, "card": _card, "iban": _iban, "ip": _ip, "secret": _secret}


def generate(n_per_kind: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for kind, make in GENERATORS.items():
        for _ in range(n_per_kind):
            shown = make(rng)
            value = shown.split("=", 1)[1] if kind == "secret" and "=" in shown else shown  # the name is no secret
            out.append(Sample(kind, rng.choice(TEMPLATES).format(shown), value))
    return out
