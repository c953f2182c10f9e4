"""Scrub personal data from chat training text, leaving typed placeholders.

``scrub`` replaces e-mail addresses, secrets in URLs, IBANs, card numbers, IP addresses and phone
numbers with ``<EMAIL>``, ``<URL_SECRET>``, ``<IBAN>``, ``<CREDIT_CARD>``, ``<IPV4>``, ``<IPV6>``
and ``<PHONE>``, and counts what it replaced. Candidates that carry a checksum or a strict syntax
are validated before they are replaced (IBAN mod-97; card length, network digit and Luhn;
``ipaddress`` for IPv6; octet range for IPv4), so order numbers, versions, times, dates and prices
survive.

The types run in the order of ``PII_TYPES``, each on the output of the one before:

1. ``URL_SECRET`` before ``EMAIL``: ``https://user:pass@host`` would otherwise read as the
   address ``pass@host``.
2. ``EMAIL`` before the numeric types: a local part such as ``john.2024`` or ``+15550143`` is
   part of the address, not a number.
3. ``IBAN`` before ``CREDIT_CARD``: the digit groups of an IBAN (``1234 5698 7654 32``) can pass
   the Luhn check by chance (one in ten).
4. ``CREDIT_CARD``, ``IPV6`` and ``IPV4`` before ``PHONE``: a 13-15 digit card and a dotted quad
   are phone-shaped; ``IPV6`` before ``IPV4`` so that ``::ffff:192.0.2.1`` goes whole.

Replacing one type can expose another (a card glued to a phone number is one digit run until the
phone is taken out), so the passes repeat until one changes nothing. A replacement never includes
a placeholder's characters and each one shrinks the unscrubbed text, so this ends, and it makes
``scrub`` idempotent by construction. Text without PII costs one pass, and each type is skipped
outright when the text lacks the characters it needs (``@``, ``::``, ``=``, enough digits).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable

PII_TYPES: tuple[str, ...] = (
    "URL_SECRET",
    "EMAIL",
    "IBAN",
    "CREDIT_CARD",
    "IPV6",
    "IPV4",
    "PHONE",
)

# `user:password` in `scheme://user:password@host`; the password may hold a stray `@`, so the
# greedy run backs off to the last `@` of the authority.
_URL_USERINFO_RE = re.compile(r"(?<=://)[^\s/?#@:<>]*:[^\s/?#<>]+(?=@[^\s/?#@<>])")

# A query (or fragment) parameter whose name says secret; group 1 is `name=`, kept as is. A name
# may carry prefixes (`x-amz-signature`, `refresh_token`); only token/secret/password/apikey may
# be glued to one (`accessToken`), so `monkey=` is not a key. The value stops at a delimiter and
# does not end in sentence punctuation; it cannot start with `<`, so placeholders stay put.
_URL_QUERY_SECRET_RE = re.compile(
    r"""
    (?<=[?&#;])
    (
        (?:[a-z0-9]+[_.-])*
        (?:
            [a-z0-9]*(?:token|secret|password|passwd|apikey)
          | api_key | key | pwd | sig | signature | auth | credential
        )
        =
    )
    [^\s&#<>"'()\[\]]*[^\s&#<>"'()\[\].,;:!?]
    """,
    re.IGNORECASE | re.VERBOSE,
)

# Starts at the start of the local part (the lookbehind) so a long run costs one attempt; the
# domain needs a letter TLD, so `root@192.168.1.1` is left to IPV4.
_EMAIL_RE = re.compile(
    r"""
    (?<![A-Za-z0-9._%+-])
    [A-Za-z0-9._%+-]+
    @
    (?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+
    [A-Za-z]{2,63}
    (?![A-Za-z0-9-])
    """,
    re.VERBOSE,
)

# Country code, two check digits, then up to 30 upper-case alphanumerics: one word, or groups of
# four separated by single spaces with a shorter last group. A grouped match may run on into the
# next word (`... 7034 THEN`), so the check backs off group by group.
# This pattern and those for cards and IPv4 consume their first character before looking behind
# it (here `(?<!\w[A-Z])` is `\b` before the first letter): `re` scans for a leading character
# class in C, which makes the search two to three times faster than a leading lookbehind.
_IBAN_RE = re.compile(
    r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)\b",
    re.ASCII,
)

# A whole run of digits joined by single spaces or dashes (possessive: never a piece of a longer
# run), not glued to a word, a decimal point, a `+` (phone) or another number. The length and the
# Luhn check are done on the match.
_CARD_RE = re.compile(r"\d(?<![\w+.,]\d)(?<!\d[ -]\d)(?:[ -]?\d)*+(?!\w|[.,]\d)", re.ASCII)

# Colon-separated hex groups, at least two colons, optionally ending in an embedded IPv4 and a
# zone id; `ipaddress` decides. Not after `x[` so that a slice such as `a[::2]` is left alone
# (`http://[::1]` still matches).
_IPV6_RE = re.compile(
    r"""
    (?<![\w:.%])(?<![\w\])]\[)
    (?:[0-9A-Fa-f]{0,4}:){2,8}
    (?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?
    (?:%[0-9A-Za-z_.]+)?
    (?![\w:]|\.\d)
    """,
    re.VERBOSE | re.ASCII,
)

# Four dotted numbers, not part of a longer dotted number (`1.2.3.4.5`) or a word (`v1.2.3.4`).
_IPV4_RE = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\w|\.\d)", re.ASCII)

# Phone shapes: international (`+` and groups), and national ones with separators. Those that
# start with a digit must be a whole run of digit groups (not after or before `digit +
# separator`), so a long order number never loses a phone-shaped tail; none may be glued to a
# word, a currency sign, a path or a decimal point. National shapes end in a group of four, which
# keeps out dates (2024-01-15), thousands (12.345.678) and versions.
_PHONE_RE = re.compile(
    r"""
    (?<![\w.,/$€£¥+-])
    (?:
        \+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){1,6}        # +44 20 7946 0958, +1-202-555-0143
      | (?:(?<!\d[ .-])1[ .-]?)?\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{4}  # (202) 555-0143
      | (?<!\d[ .-])(?:1([ .-]))?\d{2,5}([ .-])\d{3,4}\2\d{4}     # 202-555-0143, 020 7946 0958
      | (?<!\d[ .-])0\d{4}[ -]\d{6}                               # 07700 900123
      | (?<!\d[ .-])0\d([ .-])\d{2}(?:\3\d{2}){3}                 # 06 12 34 56 78
    )
    (?!\w|[ .,-]?\d)
    """,
    re.VERBOSE | re.ASCII,
)

_DIGIT_RE = re.compile(r"\d", re.ASCII)
_NON_DIGIT_RE = re.compile(r"\D")


def luhn_valid(number: str) -> bool:
    """Whether ``number`` passes the Luhn check; spaces and dashes are ignored.

    Anything else that is not a digit, or fewer than two digits, is not a valid number.
    """
    digits = number.replace(" ", "").replace("-", "")
    if len(digits) < 2 or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _iban_valid(compact: str) -> bool:
    """ISO 13616 IBAN check: length, check digits 02-98, and ISO 7064 mod-97 == 1."""
    if not 15 <= len(compact) <= 34 or not 2 <= int(compact[2:4]) <= 98:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# A check gets the match and returns the end (an index into the text) of the span to replace, or
# None to keep the match as it is.
_Check = Callable[[re.Match[str]], int | None]


def _check_iban(m: re.Match[str]) -> int | None:
    """The longest valid IBAN that starts the match, cut at a group boundary."""
    text = m.group()
    cuts = [len(text)] + [i for i in range(len(text) - 1, 4, -1) if text[i] == " "]
    for cut in cuts:
        if _iban_valid(text[:cut].replace(" ", "")):
            return m.start() + cut
    return None


def _check_card(m: re.Match[str]) -> int | None:
    """13-19 digits, a major network's leading digit (2-6: Mastercard, Amex, Diners, JCB, Visa,
    Discover, UnionPay, Maestro) and the Luhn check; the prefix halves chance hits on ids."""
    digits = _NON_DIGIT_RE.sub("", m.group())
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return None
    return m.end() if luhn_valid(digits) else None


def _check_ipv6(m: re.Match[str]) -> int | None:
    text = m.group()
    if not any(ch.isalnum() for ch in text.partition("%")[0]):
        return None  # a bare `::` is punctuation far more often than an address
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return m.end()


def _check_ipv4(m: re.Match[str]) -> int | None:
    return m.end() if all(int(octet) <= 255 for octet in m.group().split(".")) else None


def _check_phone(m: re.Match[str]) -> int | None:
    digits = len(_DIGIT_RE.findall(m.group()))
    return m.end() if 7 <= digits <= 15 else None


def _sub(pattern: re.Pattern[str], text: str, placeholder: str, check: _Check) -> tuple[str, int]:
    """``pattern.sub`` where ``check`` may keep a match or shorten the replaced span."""
    parts: list[str] = []
    count = 0
    done = 0  # text[:done] is in parts
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        end = check(m)
        if end is None:
            pos = m.end()
            continue
        parts.append(text[done : m.start()])
        parts.append(placeholder)
        count += 1
        done = pos = end
    if not count:
        return text, 0
    parts.append(text[done:])
    return "".join(parts), count


def _scrub_url_secret(text: str) -> tuple[str, int]:
    count = 0
    if "://" in text:
        text, count = _URL_USERINFO_RE.subn("<URL_SECRET>", text)
    if "=" in text:
        text, n = _URL_QUERY_SECRET_RE.subn(r"\1<URL_SECRET>", text)
        count += n
    return text, count


def _scrub_email(text: str) -> tuple[str, int]:
    return _EMAIL_RE.subn("<EMAIL>", text)


def _scrub_iban(text: str) -> tuple[str, int]:
    return _sub(_IBAN_RE, text, "<IBAN>", _check_iban)


def _scrub_card(text: str) -> tuple[str, int]:
    return _sub(_CARD_RE, text, "<CREDIT_CARD>", _check_card)


def _scrub_ipv6(text: str) -> tuple[str, int]:
    return _sub(_IPV6_RE, text, "<IPV6>", _check_ipv6)


def _scrub_ipv4(text: str) -> tuple[str, int]:
    return _sub(_IPV4_RE, text, "<IPV4>", _check_ipv4)


def _scrub_phone(text: str) -> tuple[str, int]:
    return _sub(_PHONE_RE, text, "<PHONE>", _check_phone)


def _may_hold_url_secret(text: str) -> bool:
    return "://" in text or "=" in text


def _may_hold_email(text: str) -> bool:
    return "@" in text


def _may_hold_ipv6(text: str) -> bool:
    """Compressed forms hold `::`; full ones (embedded IPv4 included) at least six colons."""
    return "::" in text or text.count(":") >= 6


def _may_hold_ipv4(text: str) -> bool:
    return "." in text


# (type, fewest digits it can hold, cheap pre-check or None, scrubber), in PII_TYPES order. A type
# is skipped when the text has too few digits or fails its pre-check (one C-level scan each), so
# clean text costs a few scans and no pattern search.
_Step = tuple[str, int, Callable[[str], bool] | None, Callable[[str], tuple[str, int]]]
_STEPS: tuple[_Step, ...] = (
    ("URL_SECRET", 0, _may_hold_url_secret, _scrub_url_secret),
    ("EMAIL", 0, _may_hold_email, _scrub_email),
    ("IBAN", 2, None, _scrub_iban),
    ("CREDIT_CARD", 13, None, _scrub_card),
    ("IPV6", 0, _may_hold_ipv6, _scrub_ipv6),
    ("IPV4", 4, _may_hold_ipv4, _scrub_ipv4),
    ("PHONE", 7, None, _scrub_phone),
)
assert tuple(step[0] for step in _STEPS) == PII_TYPES


def _steps(types: Iterable[str]) -> tuple[_Step, ...]:
    """The steps for ``types``, in ``PII_TYPES`` order."""
    wanted = set(types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII types {sorted(unknown)}; known: {', '.join(PII_TYPES)}")
    return tuple(step for step in _STEPS if step[0] in wanted)


def scrub(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, Counter[str]]:
    """Replace PII with typed placeholders (<EMAIL>, <PHONE>, <CREDIT_CARD>, <IPV4>, <IPV6>,
    <IBAN>, <URL_SECRET>); return the new text and counts per type.

    ``types`` picks a subset of ``PII_TYPES``; they always run in ``PII_TYPES`` order.
    """
    steps = _STEPS if types is PII_TYPES else _steps(types)
    counts: Counter[str] = Counter()
    digits = len(_DIGIT_RE.findall(text))  # replacements only ever remove digits
    while True:
        replaced = 0
        for name, min_digits, precheck, scrubber in steps:
            if digits < min_digits or (precheck is not None and not precheck(text)):
                continue
            text, n = scrubber(text)
            if n:
                counts[name] += n
                replaced += n
        if not replaced:
            return text, counts
