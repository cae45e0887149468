"""Whose bucket a request takes from: `ip:…`, `header:…` or `claim:…`."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from mitmproxy import http

from backworks_core.context import RequestContext
from backworks_core.forwarding import client_ip as forwarded_client_ip

MAX_KEY_TEXT = 64  # longer key values are hashed

_PLAIN_TEXT = re.compile(r"^[\x21-\x7e]+$")


def _key_text(value: str) -> str:
    if len(value) <= MAX_KEY_TEXT and _PLAIN_TEXT.match(value):
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def client_ip(flow: http.HTTPFlow) -> str:
    """The client's address by the gateway's one rule (server.trusted_proxies; default: the peer)."""
    return forwarded_client_ip(flow)


def _claim_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def request_key(ctx: RequestContext, key: str) -> str:
    """The bucket's client key: `ip:…`, `header:…` or `claim:…` (falling back to `ip:…`)."""
    if key == "ip":  # the default, on every request: the client the trust boundary decided
        state = ctx.flow_state
        client = state.client if state is not None else None
        return "ip:" + (client.address if client is not None else client_ip(ctx.flow))
    kind, _, name = key.partition(":")
    if kind == "header":
        values = [v.strip() for v in ctx.flow.request.headers.get_all(name)]
        joined = ", ".join(v for v in values if v)
        if joined:
            return "header:" + _key_text(joined)
    elif kind == "claim" and ctx.user is not None:
        from addons.auth import claim_value

        claim = _claim_text(claim_value(ctx.user.claims, name))
        if claim:
            return "claim:" + _key_text(claim)
    return "ip:" + client_ip(ctx.flow)
