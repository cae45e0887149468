"""Upstream credentials (backworks_core.credentials, TargetConfig) and the names error answers use
for mitmproxy's own upstream connections (addons.upstream_connect)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from addons.proxy import Pool, PoolConfig, Target, TargetConfig
from addons.upstream_connect import PASSTHROUGH_NAME, UpstreamConnectGuard, target_names, try_connect, upstream_name
from backworks_core.credentials import CredentialsError, redact, split_credentials, with_authorization


def decoded(authorization: str | None) -> bytes:
    assert authorization is not None and authorization.startswith("Basic ")
    return base64.b64decode(authorization[len("Basic ") :])


@pytest.mark.parametrize(
    ("url", "clean", "credentials"),
    [
        ("http://user:p%40ss@h:81/base", "http://h:81/base", b"user:p@ss"),
        ("https://us%65r:p%3Ass@h", "https://h", b"user:p:ss"),  # a colon in the password is fine
        ("http://user:p@ss@h", "http://h", b"user:p@ss"),  # a raw "@": the last one ends the userinfo
        ("http://user@h", "http://h", b"user:"),
        ("http://:secret@h", "http://h", b":secret"),
        ("http://u:p%C3%A9@h", "http://h", b"u:p\xc3\xa9"),  # percent-encoded UTF-8: those bytes
        ("http://u:p%E9@h", "http://h", b"u:p\xe9"),  # percent-encoded Latin-1: that byte
        ("http://u:pé@h", "http://h", b"u:p\xc3\xa9"),  # written as is: UTF-8 (RFC 7617's charset)
    ],
)
def test_credentials_are_parsed_out_and_percent_decoded(url: str, clean: str, credentials: bytes) -> None:
    without, authorization = split_credentials(url)
    assert without == clean
    assert decoded(authorization) == credentials


def test_a_url_without_credentials_is_left_as_it_is() -> None:
    assert split_credentials("http://h:1/x") == ("http://h:1/x", None)


@pytest.mark.parametrize("url", ["http://a%3Ab:secret@h", "http://u:se%0Acret@h", "http://u%00:secret@h", "http://u:se%7Fcret@h"])
def test_what_rfc_7617_forbids_is_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(CredentialsError) as info:
        split_credentials(url)
    assert "secret" not in str(info.value) and "cret" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("got 'http://user:hunter2@h:1/x'", "got 'http://user:***@h:1/x'"),
        ("http://tok3n@h and https://a:b@c/d", "http://***@h and https://a:***@c/d"),
        ("HTTPS://U:P@H", "HTTPS://U:***@H"),
        ("mail alice@example.com, see http://h/x", "mail alice@example.com, see http://h/x"),
        ("no url here", "no url here"),
    ],
)
def test_redact_masks_every_urls_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_the_targets_authorization_replaces_every_client_field_of_any_case() -> None:
    headers = [("authorization", "Bearer a"), ("X-Other", "1"), ("AUTHORIZATION", "Bearer b")]
    assert with_authorization(headers, "Basic xyz") == [("X-Other", "1"), ("Authorization", "Basic xyz")]


def test_a_target_config_keeps_no_credentials_in_its_url_repr_or_describe() -> None:
    config = TargetConfig(name="api", url="http://svc:s3cr%40t@127.0.0.1:9000/v1")
    assert config.url == "http://127.0.0.1:9000/v1"
    assert decoded(config.authorization) == b"svc:s3cr@t"
    target = Target.from_config(config)
    assert target.origin == "http://127.0.0.1:9000" and target.authorization == config.authorization
    pool = Pool("default", PoolConfig(targets=[config]))
    shown = f"{config!r} {config} {target!r} {pool.describe()} {config.model_dump()}"
    assert "s3cr" not in shown and "svc" not in shown and config.authorization not in shown
    assert pool.describe()[0]["url"] == "http://127.0.0.1:9000/v1"
    assert pool.probe_authorizations == {"http://127.0.0.1:9000": config.authorization}


def test_a_changed_password_is_a_changed_config() -> None:
    assert TargetConfig(name="a", url="http://u:one@h") != TargetConfig(name="a", url="http://u:two@h")


def test_a_refused_target_url_is_echoed_without_its_password(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: creds
        plugins:
          proxy:
            config:
              targets:
                - {name: a, url: "ftp://svc:hunter2@h"}
                - {name: b, url: "http://svc:hunter2@h?x=1"}
                - {name: c, url: "http://a%3Ab:hunter2@h"}
              upstreams:
                other: {targets: ["http://svc:hunter2@h"]}
        endpoints:
          - {path: /x, handler: proxy}
        """
    )
    errors = load_errors(path)
    rendered = "\n".join(str(d) for d in errors)
    assert len(errors) >= 4, rendered
    assert "hunter2" not in rendered, rendered
    assert "svc:***@h" in rendered


# -- mitmproxy's own upstream connections ------------------------------------------------------


def pools(*targets: tuple[str, str], name: str = "default") -> list[Pool]:
    return [Pool(name, PoolConfig(targets=[TargetConfig(name=n, url=u) for n, u in targets]))]


def test_target_names_are_by_address_and_name_pools() -> None:
    names = target_names(pools(("api-1", "http://u:p@Svc.Local:8080/x"), ("api-2", "https://h2")) + pools(("o-1", "http://h3"), name="orders"))
    assert names == {("svc.local", 8080): "target api-1", ("h2", 443): "target api-2", ("h3", 80): "target o-1 of pool orders"}


@pytest.mark.parametrize(
    ("address", "reverse", "expected"),
    [
        (("127.0.0.1", 9000), False, "target api"),  # a Forward to a pool target, in any mode
        (("127.0.0.1", 9000), True, "target api"),
        (("127.0.0.1", 9001), True, PASSTHROUGH_NAME),  # reverse mode: every upstream is the gateway's
        (("example.org", 80), False, None),  # regular-mode passthrough: a debugging proxy, mitmproxy's text
        (("127.0.0.1", 7000), True, None),  # the in-process relay
    ],
)
def test_which_connections_are_checked(address: tuple[str, int], reverse: bool, expected: str | None) -> None:
    targets = {("127.0.0.1", 9000): "target api"}
    assert upstream_name(address, reverse, targets, skipped=[("127.0.0.1", 7000)]) == expected


def guard_for(live: list[Pool], failure: tuple[str, str] | None) -> tuple[UpstreamConnectGuard, list[Any]]:
    calls: list[Any] = []

    async def connect(address: Any, local: Any, timeout: float) -> tuple[str, str] | None:
        calls.append(address)
        return failure

    core = SimpleNamespace(relay=SimpleNamespace(host="127.0.0.1", port=None), live_pools=lambda: live)
    return UpstreamConnectGuard(core, connect=connect), calls  # type: ignore[arg-type]


async def test_a_failed_check_kills_the_connection_with_the_targets_name_and_logs_the_detail(caplog) -> None:  # type: ignore[no-untyped-def]
    guard, calls = guard_for(pools(("ws-2", "http://127.0.0.1:9000")), ("connect failed", "[Errno 111] Connect call failed ('127.0.0.1', 9000)"))
    flow = tflow.tflow()
    flow.server_conn.address = ("127.0.0.1", 9000)
    flow.server_conn.error = None
    await guard.server_connect(server_hooks.ServerConnectionHookData(server=flow.server_conn, client=flow.client_conn))
    assert calls == [("127.0.0.1", 9000)]
    assert flow.server_conn.error == "upstream connect failed (target ws-2)"
    with caplog.at_level(logging.WARNING):
        guard.error(flow)
    assert "upstream connect to target ws-2 (127.0.0.1:9000) failed: [Errno 111]" in caplog.text
    assert "] upstream connect" in caplog.text  # under the request id


async def test_a_passing_check_or_a_foreign_host_leaves_the_connection_alone() -> None:
    guard, calls = guard_for(pools(("api", "http://127.0.0.1:9000")), None)
    flow = tflow.tflow()
    flow.server_conn.address = ("127.0.0.1", 9000)
    await guard.server_connect(server_hooks.ServerConnectionHookData(server=flow.server_conn, client=flow.client_conn))
    assert calls and flow.server_conn.error is None
    guard, calls = guard_for(pools(("api", "http://127.0.0.1:9000")), ("connect failed", "x"))
    flow.server_conn.address = ("example.org", 80)  # regular mode, not a target: mitmproxy's business
    await guard.server_connect(server_hooks.ServerConnectionHookData(server=flow.server_conn, client=flow.client_conn))
    assert calls == [] and flow.server_conn.error is None


async def test_every_upstream_of_a_reverse_mode_client_is_checked() -> None:
    guard, calls = guard_for([], ("connect timeout", "no connection within 15s"))
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:1")
    flow.server_conn.address = ("127.0.0.1", 1)
    await guard.server_connect(server_hooks.ServerConnectionHookData(server=flow.server_conn, client=flow.client_conn))
    assert flow.server_conn.error == f"upstream connect timeout ({PASSTHROUGH_NAME})"


async def test_try_connect_says_what_failed() -> None:
    import socket

    with socket.socket() as listening:  # bound, not listening: connections are refused
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        failure = await try_connect(("127.0.0.1", port), None, 2.0)
    assert failure is not None and failure[0] == "connect failed"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert await try_connect(server.getsockname(), None, 2.0) is None
