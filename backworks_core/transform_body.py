"""The `body` block of a request or response transform, compiled (`CompiledBody`): the body read
through its Content-Encoding and charset, JSON operations and regex replacements applied, and
the result encoded again the same way; a body that cannot be read so is left alone with one
INFO line saying why (never the body). The rules are in `backworks_core.transforms`.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from mitmproxy.net import encoding as mitm_encoding
from mitmproxy.net.http.headers import parse_content_type

from backworks_core import bodies, jsonpath
from backworks_core.templates import CompiledValue, TemplateContext, compile_value

if TYPE_CHECKING:
    from backworks_core.transforms import BodyTransform

# Every transform decision logs under one name, whichever module makes it.
logger = logging.getLogger("backworks_core.transforms")


def _codings(content_encoding: str | None) -> list[str] | None:
    """The codings applied, in order; None when one is unknown. `x-gzip` is gzip (RFC 9110)."""
    try:
        return bodies.parse_codings([content_encoding] if content_encoding else [])
    except bodies.UnsupportedEncoding:
        return None


def _charset(content_type: str | None) -> str | None:
    """The declared charset, normalised; "" when it names no codec Python knows."""
    if not content_type:
        return None
    parsed = parse_content_type(content_type)
    if parsed is None:
        return None
    name = parsed[2].get("charset")
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip('"')).name
    except LookupError:
        return ""


def _why_not_text(err: UnicodeDecodeError) -> str:
    return f"{err.reason} at byte {err.start}"


class CompiledBody:
    """A transform's `body` block, compiled: JSON remove/rename/set, then regex replace, applied to
    the body decoded (Content-Encoding, charset) and encoded again the same way."""


    __slots__ = ("remove", "rename", "set", "replace", "has_json")

    def __init__(self, spec: BodyTransform) -> None:
        self.remove = [(text, jsonpath.parse_path(text)) for text in spec.remove]
        self.rename = [
            (f"{a} -> {b}", jsonpath.parse_path(a), jsonpath.parse_path(b)) for a, b in spec.rename.items()
        ]
        self.set: list[tuple[str, jsonpath.Path, CompiledValue]] = [
            (text, jsonpath.parse_path(text), compile_value(value)) for text, value in spec.set.items()
        ]
        self.replace = [(re.compile(r.pattern), r.replacement) for r in spec.replace]
        self.has_json = bool(self.remove or self.rename or self.set)

    def render(self, tctx: TemplateContext) -> list[Any]:
        return [value.render(tctx) for _, _, value in self.set]

    def apply(
        self,
        raw: bytes,
        content_encoding: str | None,
        content_type: str | None,
        tctx: TemplateContext,
        values: list[Any] | None,
        label: str,
        limit: int = bodies.DEFAULT_LIMIT,
        strict: bool = False,
    ) -> bytes | None:
        """The new wire bytes, or None. Decoding is bounded (backworks_core.bodies): past `limit`
        once decoded, or JSON nested too deep, raises BodyError; so do an unknown or broken
        Content-Encoding when `strict` (a request: what the upstream decodes must be what was
        transformed), else the body is left unchanged and the reason logged."""
        if not raw:
            logger.debug("%s is empty: body transform skipped", label)
            return None
        codings = _codings(content_encoding)
        if codings is None:
            if strict:
                bodies.parse_codings([content_encoding or ""])  # raises UnsupportedEncoding
            logger.info("%s left unchanged: unsupported Content-Encoding %r", label, content_encoding)
            return None
        try:
            body = bodies.decode(raw, codings, limit)
        except bodies.CorruptBody:
            if strict:
                raise
            logger.info("%s left unchanged: it does not decode as %s (ValueError)", label, content_encoding)
            return None
        charset = _charset(content_type)
        if charset == "":
            logger.info("%s left unchanged: unknown charset in Content-Type %r", label, content_type)
            return None
        changed = False
        if self.has_json:
            new = self._json(body, charset, tctx, values, label)
            if new is not None:
                body, changed = new, True
        if self.replace:
            new = self._replace(body, charset, label)
            if new is not None:
                body, changed = new, True
        if not changed:
            return None
        for coding in codings:
            body = mitm_encoding.encode(body, coding)
        return body

    def _json(
        self, body: bytes, charset: str | None, tctx: TemplateContext, values: list[Any] | None, label: str
    ) -> bytes | None:
        try:
            # Bytes let json detect UTF-8 (with or without a BOM), UTF-16 and UTF-32 itself.
            doc = bodies.loads_json(body if charset in (None, "utf-8") else body.decode(charset))
        except UnicodeDecodeError as err:
            logger.info("%s left unchanged: body is not JSON: not %s text (%s)", label, charset or "UTF-8", _why_not_text(err))
            return None
        except json.JSONDecodeError as err:
            logger.info("%s left unchanged: body is not JSON: %s at %d:%d", label, err.msg, err.lineno, err.colno)
            return None
        changed = 0
        for text, path in self.remove:
            changed += jsonpath.remove(doc, path)
        for text, source, target in self.rename:
            outcome = jsonpath.rename(doc, source, target)
            changed += outcome.changed
            if outcome.problems:
                logger.info("%s: body.rename %s: %s", label, text, "; ".join(outcome.problems))
        if self.set:
            rendered = values if values is not None else self.render(tctx)
            for (text, path, _), value in zip(self.set, rendered):
                outcome = jsonpath.set_value(doc, path, value)
                changed += outcome.changed
                if outcome.problems:
                    logger.info("%s: body.set %s: %s", label, text, "; ".join(outcome.problems))
        if not changed:
            return None
        if charset is None or charset == "utf-8":
            return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        # ASCII-only JSON fits any declared charset.
        return json.dumps(doc, separators=(",", ":")).encode(charset)

    def _replace(self, body: bytes, charset: str | None, label: str) -> bytes | None:
        try:
            text = body.decode(charset or "utf-8")
        except UnicodeDecodeError as err:
            logger.info("%s: replace skipped: body is not %s text (%s)", label, charset or "UTF-8", _why_not_text(err))
            return None
        original = text
        for pattern, replacement in self.replace:
            text = pattern.sub(replacement, text)
        if text == original:
            return None
        try:
            return text.encode(charset or "utf-8")
        except UnicodeEncodeError:
            logger.info("%s: replace skipped: the result does not fit the charset %s", label, charset)
            return None
