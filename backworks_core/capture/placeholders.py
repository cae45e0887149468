"""What a redacted secret is written as, and how a recorded value with placeholders still matches.

The same secret always becomes the same placeholder, `[REDACTED:<12 hex>]`, so that a recorded
request still matches its own mock (the mock handler compares the fingerprint of what a client
sends against the placeholder) and two flows that shared a credential still look alike. The
fingerprint is 48 bits of SHA-256 over a fixed prefix and the value: it tells equal values apart
but, like any offline check, lets someone holding the file confirm a guessed weak password.
"""

from __future__ import annotations

import hashlib
import re


REDACTED = "[REDACTED]"  # where no value exists to stand for (JSON nested past 64 levels)

# The same secret always becomes the same placeholder, `[REDACTED:<12 hex>]`, so that a recorded
# request still matches its own mock (the mock handler compares the fingerprint of what a client
# sends against the placeholder) and two flows that shared a credential still look alike. The
# fingerprint is 48 bits of SHA-256 over a fixed prefix and the value: it tells equal values apart
# but, like any offline check, lets someone holding the file confirm a guessed weak password.
PLACEHOLDER = re.compile(r"\[REDACTED:([0-9a-f]{12})\]")


def fingerprint(value: str) -> str:
    """12 hex digits that stand for `value` in a placeholder."""
    return hashlib.sha256(b"backworks-redaction:" + value.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def placeholder(value: str) -> str:
    """What a secret `value` is written as: equal secrets, equal placeholders."""
    return f"[REDACTED:{fingerprint(value)}]"


def matches_placeholder(recorded: str, value: str) -> bool:
    """A recorded value matches what a client sends now: equal, or equal around its placeholders,
    each of which stands for the text in its place (`Bearer [REDACTED:…]` matches `Bearer <the
    token>`, `sid=[REDACTED:…]; lang=en` the cookie header it came from) or for itself (a client
    that replays a recorded `Set-Cookie` sends the placeholder back)."""
    if recorded == value:
        return True
    pieces = PLACEHOLDER.split(recorded)  # literal, fingerprint, literal, …, literal
    if len(pieces) == 1 or len(pieces) > 17:
        return False
    literals, prints = pieces[0::2], pieces[1::2]
    found = re.fullmatch("(.*?)".join(re.escape(literal) for literal in literals), value, re.S)
    if found is None:
        return False
    return all(text == f"[REDACTED:{fp}]" or fingerprint(text) == fp for text, fp in zip(found.groups(), prints))


def is_redacted(value: str) -> bool:
    """Already a placeholder (or the plain marker): redacting it again changes nothing."""
    return value.startswith("[REDACTED") and (value == REDACTED or PLACEHOLDER.fullmatch(value) is not None)
