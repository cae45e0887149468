"""One canonical request path, and path globs that match in linear time. No mitmproxy dependency.

A gateway that routes and authorizes one reading of a path while its upstream resolves another
can be walked around: `/public/../admin/secret` passes a filter written for `/admin*` and an
upstream that resolves dot segments serves `/admin/secret`. So every request the blueprint
handles is reduced to one form, and that form is what the router, the middleware filters, the
rate limiter and the upstream all see. The rule is Envoy's with `normalize_path: true`,
`merge_slashes: true` and `path_with_escaped_slashes_action: REJECT_REQUEST`, and a little
stricter where upstream servers are known to disagree with each other (see `canonical_path`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["PathGlob", "PathRefused", "canonical_path", "filter_forms", "lenient_path", "upstream_path_problem"]


class PathRefused(ValueError):
    """The request path has no single meaning every upstream agrees on: answer 400 with the message."""


# RFC 3986 §2.3: the only characters whose escapes mean the same decoded (§6.2.2.2).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters a path may hold as they are and that need no look: unreserved, sub-delims but `;`
# (path parameters, which some servers strip), ':' '@' and '/'.
_PLAIN = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
# Bytes whose escape is refused outright: '/' and '\' (a segment boundary to some servers and
# not to others), and the controls.
# `;` starts path parameters, which Tomcat, Jetty and Spring strip before they resolve the path and
# other servers keep: `/admin/secret;x` would route to a catch-all beside an endpoint that guards
# `/admin/secret`, and such an upstream serves the guarded file. Refused, as Spring's
# StrictHttpFirewall does by default, raw and escaped.
_SEMICOLON = "a ';' in the path (path parameters are read differently by different servers)"
_ESCAPED_SEPARATOR = {0x2F: "an escaped slash (%2F)", 0x5C: "an escaped backslash (%5C)"}
# Behind `%25`, an escape of these is double encoding: a server that decodes twice sees them.
_DOUBLE_DANGEROUS = frozenset(b"./\\%;") | frozenset(range(0x20)) | {0x7F}
# UTF-8 lead bytes that only ever start an overlong form (`%C0%AE` is '.' to a lax decoder).
_OVERLONG_LEAD = frozenset({0xC0, 0xC1})


def _hex_byte(text: str, at: int) -> int | None:
    """The byte of the escape `%XY` whose `%` is at `at`, or None if there is no full escape there."""
    if at + 2 < len(text) and text[at + 1] in _HEX and text[at + 2] in _HEX:
        return int(text[at + 1 : at + 3], 16)
    return None


def _overlong(lead: int, second: int | None) -> bool:
    """`%E0%80..%9F` and `%F0%80..%8F` begin overlong forms (`%E0%80%AE` is '.' to a lax decoder)."""
    return second is not None and ((lead == 0xE0 and second < 0xA0) or (lead == 0xF0 and second < 0x90))


def _decode_unreserved(path: str) -> str:
    """Decode escapes of unreserved characters, upper-case the others; refuse what is ambiguous."""
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%":
            byte = _hex_byte(path, i)
            if byte is None:
                raise PathRefused(f"a malformed percent escape {path[i : i + 3]!r} ('%' must be followed by two hex digits)")
            if byte in _UNRESERVED:
                out.append(chr(byte))
            elif byte in _ESCAPED_SEPARATOR:
                raise PathRefused(f"{_ESCAPED_SEPARATOR[byte]} in the path")
            elif byte == 0x3B:
                raise PathRefused(_SEMICOLON + " (escaped as %3B)")
            elif byte < 0x20 or byte == 0x7F:
                raise PathRefused(f"an escaped control character (%{byte:02X}) in the path")
            elif byte in _OVERLONG_LEAD or _overlong(byte, _hex_byte(path, i + 3) if path[i + 3 : i + 4] == "%" else None):
                raise PathRefused(f"an overlong UTF-8 sequence ({path[i : i + 6]!r}) in the path")
            else:
                out.append(f"%{byte:02X}")
            i += 3
            continue
        if c == ";":
            raise PathRefused(_SEMICOLON)
        if c == "\\":
            raise PathRefused("a backslash in the path (a separator to some servers and not to others)")
        if c == "#":
            raise PathRefused("a '#' in the path (a fragment is never sent to a server)")
        if c <= " " or c == "\x7f":
            raise PathRefused(f"a control or space character ({ord(c):#04x}) in the path")
        out.append(c)
        i += 1
    return "".join(out)


def _check_double_encoding(path: str) -> None:
    """`%25` starting another escape of a dot, slash, backslash, '%', ';' or a control: refused.

    Checked on the decoded form, so `%25%32%65` (which decodes to `%252e`) is caught too.
    """
    start = path.find("%25")
    while start != -1:
        byte = _hex_byte(path, start + 2)
        if byte is not None and byte in _DOUBLE_DANGEROUS:
            raise PathRefused(f"a double-encoded character ({path[start : start + 5]!r}) in the path")
        start = path.find("%25", start + 3)


_NAME_END = re.compile(r"[;?#]")


def _suspicious_segment(segment: str) -> str | None:
    """Why a segment that is not exactly `.` or `..` still names one to some server, if it does.

    Servers that strip `;params` (Tomcat, Jetty, Spring) read `..;x` as `..` and `;x` as an empty
    segment; Windows drops trailing dots and spaces, so `.. ` and `...` are no plain names either.
    """
    if ";" not in segment and "%" not in segment and not segment.startswith("."):
        return None
    name = _NAME_END.split(unquote(segment, errors="surrogateescape"), 1)[0]  # `..%3F` too: see filter_forms
    if not name:
        return f"a segment {segment!r} with an empty name before its ';' parameters"
    if not name.strip(". "):
        return f"a dot segment in disguise ({segment!r})"
    return None


def canonical_path(raw_path: str) -> str:
    """The one form of a request path (no query) that routing, filters and the upstream share.

    - escapes of unreserved characters are decoded (`%2e` is `.`, `%41` is `A`), other escapes
      upper-cased (`%c3%a9` is `%C3%A9`);
    - `.` and `..` segments are resolved per RFC 3986 §5.2.4 (`..` at the root stays there) and
      empty segments merged (`//a` is `/a`); a trailing slash is kept;
    - refused (PathRefused, a 400): an escaped slash or backslash, a raw backslash, a '#', a ';'
      (raw or escaped),
      double encoding of a dot, slash, backslash, '%', ';' or control, control characters and
      spaces (raw or escaped), malformed escapes, overlong UTF-8 (`%C0`, `%C1`), and segments
      that are dot segments or empty once their `;params` are stripped (`..;x`, `.;`, `;x`) or
      hold only dots and spaces (`...`, `.. `).

    Anything that is not an origin-form path (`*`) is returned unchanged: no route matches it.
    """
    if _PLAIN.fullmatch(raw_path) and "//" not in raw_path and "/." not in raw_path:
        return raw_path  # the common case: nothing to decode, merge or resolve
    if not raw_path:
        return "/"
    if raw_path[0] != "/":
        if raw_path == "*":
            return raw_path
        raise PathRefused("the path does not start with '/'")
    decoded = _decode_unreserved(raw_path)
    if "%25" in decoded:
        _check_double_encoding(decoded)
    segments = decoded[1:].split("/")
    kept: list[str] = []
    trailing = False
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "" or segment == ".":
            trailing = index == last
            continue
        if segment == "..":
            if kept:
                kept.pop()
            trailing = index == last
            continue
        problem = _suspicious_segment(segment)
        if problem is not None:
            raise PathRefused(problem)
        kept.append(segment)
        trailing = False
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing else "")


def lenient_path(raw_path: str) -> str:
    """The most any server might read into a refused path: for deciding whether it is the
    blueprint's at all (traffic passed on untouched is refused only when it is).

    Decoded until stable (double encoding), backslashes as slashes, `;params` stripped, cut at
    a decoded '?' or '#', dot segments (and dots-and-spaces ones) resolved, empty ones merged.
    """
    path = raw_path
    for _ in range(4):
        decoded = unquote(path, errors="surrogateescape")
        if decoded == path:
            break
        path = decoded
    path = path.partition("#")[0].partition("?")[0].replace("\\", "/")
    kept: list[str] = []
    for segment in path.split("/"):
        name = segment.split(";", 1)[0]
        core = name.strip(" ")
        if core in ("", "."):
            continue
        if not core.strip("."):
            if kept:
                kept.pop()
            continue
        kept.append(name)
    return "/" + "/".join(kept)


def filter_forms(canonical: str) -> tuple[str, ...]:
    """The forms a middleware path filter is matched against: any match applies the middleware.

    The decoded path without its trailing slash (the router's reading), and the readings of
    servers that do more with it: with `;params` stripped (Tomcat, Spring serve `/admin;x/secret`
    as `/admin/secret`), and cut at a decoded '?' or '#' (an application that decodes the path
    and parses it again reads `/config.txt%3F.txt` as `/config.txt`). So a filter for
    `/admin/*` or `/config.txt` applies to all of them; a filter only ever applies more often.
    """
    if "%" not in canonical and ";" not in canonical and "?" not in canonical and "#" not in canonical:  # the common case
        return (canonical[:-1] if len(canonical) > 1 and canonical[-1] == "/" else canonical,)
    segments = canonical[1:].split("/") if canonical.startswith("/") else []
    if segments and segments[-1] == "":
        segments.pop()
    decoded = [unquote(s, errors="surrogateescape") if "%" in s else s for s in segments]
    form = "/" + "/".join(decoded)
    if ";" not in form and "?" not in form and "#" not in form:
        return (form,)
    forms = [form]
    if ";" in form:
        forms.append("/" + "/".join(s.split(";", 1)[0] for s in decoded))
    for reading in list(forms):
        cut = min((i for i in (reading.find("?"), reading.find("#")) if i != -1), default=-1)
        if cut != -1:
            forms.append(reading[:cut].rstrip("/") or "/")
    return tuple(dict.fromkeys(forms))


def upstream_path_problem(path: str, prefix: str = "") -> str | None:
    """Why a path built for the upstream (a template rendered, prefixes, transforms) must not go.

    It must be canonical as it stands (no dot or empty segment once decoded, nothing refused by
    `canonical_path`), so that no substituted value climbs out of its place, and start with
    `prefix`, the literal start of the template it was rendered from. None: it may go. The
    reason names no path: it is the client's answer, and the upstream's layout is not theirs.
    """
    if prefix and not path.startswith(prefix):
        return f"the path sent upstream would leave its template's prefix {prefix!r}"
    if _PLAIN.fullmatch(path) and "//" not in path and "/." not in path:
        return None  # nothing to decode and no empty or dot segment: the common case
    if not path.startswith("/"):
        return "the path sent upstream would not start with '/'"
    try:
        canonical_path(path)
    except PathRefused as exc:
        return f"the path sent upstream would hold {exc}"
    segments = path[1:].split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "":
            if index == last:
                continue  # a trailing slash, or the root
            return "the path sent upstream would have an empty segment ('//')"
        if unquote(segment, errors="surrogateescape") in (".", "..") or _suspicious_segment(segment) is not None:
            return "the path sent upstream would have a dot segment"
    return None


class PathGlob:
    """A middleware path glob: `*` matches any run of characters (across segments), all else literal.

    Matched without regular expressions, in time linear in the path: the parts between stars
    are a prefix, a suffix and, between them, substrings found left to right with `str.find`.
    For globs whose only wildcard is `*`, the leftmost match of each middle part is always a
    right choice, so there is no backtracking (`re` took seconds on `/api/*/users/*/delete`
    against a 100 KB path).
    """

    __slots__ = ("glob", "_first", "_last", "_middle", "_exact", "_min")

    def __init__(self, glob: str) -> None:
        self.glob = glob
        parts = glob.split("*")
        self._exact = len(parts) == 1
        self._first = parts[0]
        self._last = parts[-1] if len(parts) > 1 else ""
        self._middle = tuple(p for p in parts[1:-1] if p)
        self._min = len(self._first) + len(self._last) + sum(len(p) for p in self._middle)

    def match(self, path: str) -> bool:
        if self._exact:
            return path == self._first
        if len(path) < self._min or not path.startswith(self._first) or not path.endswith(self._last):
            return False
        at = len(self._first)
        end = len(path) - len(self._last)
        for part in self._middle:
            found = path.find(part, at, end)
            if found == -1:
                return False
            at = found + len(part)
        return True

    def __repr__(self) -> str:
        return f"PathGlob({self.glob!r})"
