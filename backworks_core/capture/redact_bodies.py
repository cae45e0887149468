"""How a structured body is redacted in place, for the `Redactor`: a JSON document string by
string with its formatting kept (only what changes is rewritten), a multipart body part by part
(fields by their names, files as bodies of their type).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from backworks_core.bodies import DEFAULT_MAX_DEPTH
from backworks_core.capture.sensitive import JSON_SCAN, JSON_SCAN_ALL, MIN_SECRET_LENGTH

if TYPE_CHECKING:
    from backworks_core.capture.redact import Redactor


def json_text(redactor: Redactor, text: str) -> str | None:
    """A JSON document, redacted string by string in place (formatting kept); None if it is
    not JSON (or nested past 64 levels: then it is redacted as text)."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return None
    # Strings (a key when a `:` follows) and brackets; numbers and literals only when a
    # configured field may name one. Everything between matches is skipped at C speed, and
    # `findall` hands over plain tuples: positions are looked up only for what changes.
    scan = JSON_SCAN_ALL if redactor.rules.fields else JSON_SCAN
    changes: dict[int, tuple[str, str]] = {}  # index of the match → (its value, its new value)
    stack: list[list[Any]] = []  # [is_object, name]: a list's items take the list's name
    for index, (raw, colon, bracket, *literal) in enumerate(scan.findall(text)):
        if bracket:
            if bracket == "{":
                stack.append([True, None])
            elif bracket == "[":
                stack.append([False, stack[-1][1] if stack else None])
            elif stack:
                stack.pop()
            if len(stack) > DEFAULT_MAX_DEPTH:
                return None  # hostile nesting: redacted as text
            continue
        if literal and literal[0]:
            name = stack[-1][1] if stack else None
            if name is not None and name.lower() in redactor.rules.fields and literal[0] not in ("true", "false", "null"):
                changes[index] = (literal[0], redactor.secret(literal[0]))  # a configured field: numbers go too
            continue
        value = raw if "\\" not in raw else json.loads(f'"{raw}"')
        if colon:
            if stack:
                stack[-1][1] = value
            continue
        new = redactor.named_value(stack[-1][1] if stack else None, value)
        if new != value or (redactor.remembers and len(value) >= MIN_SECRET_LENGTH):
            changes[index] = (value, new)
    if redactor.remembers:  # everything remembered, including what this body taught
        changes = {index: (value, redactor.scrub(new)) for index, (value, new) in changes.items()}
    changes = {index: (value, new) for index, (value, new) in changes.items() if new != value}
    if not changes:
        return text
    out: list[str] = []
    at = 0
    for index, m in enumerate(scan.finditer(text)):
        change = changes.get(index)
        if change is None:
            continue
        new = change[1]
        begin, finish = (m.start(1) - 1, m.end(1) + 1) if m.group(1) is not None else (m.start(), m.end())
        out.append(text[at:begin])
        out.append(json.dumps(new, ensure_ascii=False))
        at = finish
    if not out:
        return text
    out.append(text[at:])
    return "".join(out)


def multipart(redactor: Redactor, body: bytes, content_type: str) -> bytes:
    """Each part by its own name and type; file parts keep their names and types, their
    contents are redacted as bodies of their type (binary stays)."""
    found = re.search(r'boundary="?([^";,]{1,200})"?', content_type, re.I)
    if not found:
        return body
    delimiter = b"--" + found.group(1).encode("latin-1")
    chunks = body.split(delimiter)
    out = [chunks[0]]
    for chunk in chunks[1:]:
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            out.append(chunk)
            continue
        headers = head.decode("latin-1")
        trail = b"\r\n" if content.endswith(b"\r\n") else b""
        content = content[: len(content) - len(trail)]
        disposition = re.search(r'(?im)^content-disposition:[^\r\n]*?\bname="([^"]{0,200})"', headers)
        is_file = re.search(r"(?im)^content-disposition:[^\r\n]*?\bfilename", headers) is not None
        part_type = re.search(r"(?im)^content-type:\s*([^\r\n]{0,200})", headers)
        if is_file or disposition is None:
            content = redactor.body(content, part_type.group(1) if part_type else None)
        else:
            try:
                value = content.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                content = redactor.scrub(redactor.pair(disposition.group(1), value)).encode("utf-8")
        out.append(head + sep + content + trail)
    return delimiter.join(out)
