"""Authorization: may this identity do this (roles, permission wildcards), and the
`WWW-Authenticate` challenge that says why not."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from addons.auth.tokens import safe_text
from backworks_core.context import Identity


def permission_matches(granted: str, required: str) -> bool:
    """Whether one granted permission (maybe with `*`) covers one required permission."""
    if granted == "*" or granted == required:
        return True
    have, want = granted.split(":"), required.split(":")
    if len(have) > len(want):
        return False
    if len(have) < len(want) and have[-1] != "*":
        return False
    for index, pattern in enumerate(have):
        if not _segment_matches(pattern, want[index]):
            return False
    return True


def _segment_matches(pattern: str, value: str) -> bool:
    if "*" not in pattern:
        return pattern == value
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def has_permission(granted: Iterable[str], required: str) -> bool:
    return any(permission_matches(g, required) for g in granted)


@dataclass(frozen=True)
class Denial:
    """A 403: the identity is known but may not do this."""

    detail: str
    scope: tuple[str, ...] = ()


def authorize(identity: Identity, roles: Sequence[str] | None, permissions: Sequence[str] | None) -> Denial | None:
    """Any one of `roles` and all of `permissions`; None means allowed."""
    if roles and not set(roles) & set(identity.roles):
        return Denial(f"requires one of the roles {', '.join(roles)}")
    if permissions:
        missing = [p for p in permissions if not has_permission(identity.permissions, p)]
        if missing:
            return Denial(f"requires the permissions {', '.join(missing)}", tuple(permissions))
    return None


def challenge(error: str, description: str, scope: Sequence[str] = ()) -> str:
    """A `WWW-Authenticate: Bearer ...` value (RFC 6750 §3)."""
    value = f'Bearer error="{error}", error_description="{safe_text(description)}"'
    if scope:
        value += f', scope="{safe_text(" ".join(scope))}"'
    return value
