"""TunnelScope: which CONNECT tunnels regular mode opens without connecting to their host."""

from __future__ import annotations

import pytest

from backworks_core.tunnels import TunnelScope


def test_named_hosts_only_under_passthrough() -> None:
    scope = TunnelScope.build(["api.example.com", None, "*.Shop.test", "api.example.com"], "passthrough")
    assert scope and not scope.every_host
    assert scope.globs == ("api.example.com", "*.shop.test")
    assert scope.serves("api.example.com")
    assert scope.serves("API.Example.COM.")  # case and a trailing dot, as the router compares
    assert scope.serves("eu.shop.test")
    assert not scope.serves("shop.test")  # `*.` needs a label before it
    assert not scope.serves("example.com")
    assert not scope.serves("api.example.com.evil.test")


def test_host_less_endpoints_alone_serve_no_tunnel() -> None:
    """Other sites keep working normally through a debugging proxy."""
    scope = TunnelScope.build([None, None], "passthrough")
    assert not scope
    assert not scope.serves("api.example.com")


@pytest.mark.parametrize("hosts", [[None], [], ["api.example.com"]])
def test_not_found_answers_every_host(hosts: list[str | None]) -> None:
    """server.unmatched: not_found (generated blueprints): every request is the blueprint's to answer."""
    scope = TunnelScope.build(hosts, "not_found")
    assert scope.every_host and scope.serves("anything.example") and scope.serves("127.0.0.1")
    assert "every host" in scope.describe()


def test_ip_literals_and_ipv6() -> None:
    scope = TunnelScope.build(["127.0.0.1", "::1"], "passthrough")
    assert scope.serves("127.0.0.1") and scope.serves("[::1]") and not scope.serves("127.0.0.2")


def test_describe_names_a_few_hosts() -> None:
    scope = TunnelScope.build([f"h{n}.test" for n in range(8)], "passthrough")
    assert scope.describe() == "the hosts its endpoints name (h0.test, h1.test, h2.test, h3.test, h4.test and 3 more)"
