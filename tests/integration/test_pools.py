"""Upstream pools through a real mitmdump: balancing over real servers, retries and failover."""

from __future__ import annotations

import asyncio
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.harness import mitmweb_options, Proxy, ResettingServer, Upstream, free_port

pytestmark = pytest.mark.integration


def pool_blueprint(folder: Path, targets: list[tuple[str, str, float]], extra: str = "", endpoint: str = "") -> Path:
    lines = "\n".join(f'        - {{name: {n}, url: "{u}", weight: {w}}}' for n, u, w in targets)
    text = textwrap.dedent(
        """
        name: pools
        plugins:
          proxy:
            config:
              targets:
        {lines}
        {extra}
        endpoints:
          - path: /{{rest:path}}
            method: ANY
            handler: proxy
        {endpoint}
        """
    ).format(lines=lines, extra=textwrap.indent(textwrap.dedent(extra).strip(), " " * 6) if extra else "", endpoint=endpoint)
    path = folder / "blueprint.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def three(make_upstream) -> list[Upstream]:  # type: ignore[no-untyped-def]
    return [make_upstream(f"b{i}") for i in (1, 2, 3)]


def served_by(proxy: Proxy, count: int, path: str = "/x", **kwargs: object) -> list[str]:
    names = []
    for _ in range(count):
        reply = proxy.get(path, **kwargs)  # type: ignore[arg-type]
        assert reply.status == 200, reply.body
        names.append(reply.json["upstream"])
    return names


def test_round_robin_rotates(tmp_path: Path, three: list[Upstream], start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(pool_blueprint(tmp_path, [(u.name, u.url, 1) for u in three]))
    names = served_by(proxy, 30)
    assert names[:3] in (["b1", "b2", "b3"],)
    assert Counter(names) == {"b1": 10, "b2": 10, "b3": 10}


def test_smooth_weighted_round_robin_exact_in_every_window(tmp_path: Path, three: list[Upstream], start_proxy) -> None:  # type: ignore[no-untyped-def]
    weights = {"b1": 1, "b2": 2, "b3": 1}
    blueprint = pool_blueprint(tmp_path, [(u.name, u.url, weights[u.name]) for u in three], "load_balancing: weighted_round_robin")
    names = served_by(proxy := start_proxy(blueprint), 40)
    for start in range(len(names) - 3):
        assert Counter(names[start : start + 4]) == {"b1": 1, "b2": 2, "b3": 1}, names
    assert proxy.get("/x").status == 200


@pytest.mark.parametrize("policy", ["random", "least_connections"])
def test_weighted_distribution_over_a_thousand_requests(policy: str, tmp_path: Path, three: list[Upstream], start_proxy) -> None:  # type: ignore[no-untyped-def]
    weights = {"b1": 1, "b2": 2, "b3": 1}
    proxy = start_proxy(pool_blueprint(tmp_path, [(u.name, u.url, weights[u.name]) for u in three], f"load_balancing: {policy}"))
    counts = Counter(served_by(proxy, 1000))
    # random: weighted 1:2:1 within ±6 points; least_connections with sequential requests never
    # has a request in flight, so every pick is a tie: spread evenly within ±6 points
    expected = {"b1": 0.25, "b2": 0.5, "b3": 0.25} if policy == "random" else {"b1": 1 / 3, "b2": 1 / 3, "b3": 1 / 3}
    for name, share in expected.items():
        assert abs(counts[name] / 1000 - share) < 0.06, counts


def test_ip_hash_and_header_hash_are_sticky(tmp_path: Path, three: list[Upstream], start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(pool_blueprint(tmp_path, [(u.name, u.url, 1) for u in three], "load_balancing: ip_hash"))
    assert len(set(served_by(proxy, 20))) == 1
    proxy.stop()
    blueprint = pool_blueprint(tmp_path, [(u.name, u.url, 1) for u in three], 'load_balancing: consistent_hash\nhash_on: "header:X-User"')
    proxy = start_proxy(blueprint)
    owners = {user: set(served_by(proxy, 5, headers={"X-User": user})) for user in [f"u{i}" for i in range(30)]}
    assert all(len(o) == 1 for o in owners.values())
    assert len({next(iter(o)) for o in owners.values()}) == 3  # 30 users spread over all three


def test_consistent_hash_moves_only_the_removed_targets_keys(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    servers = [make_upstream(f"b{i}") for i in range(1, 6)]
    extra = 'load_balancing: consistent_hash\nhash_on: "query:user"'
    before_proxy = start_proxy(pool_blueprint(tmp_path, [(u.name, u.url, 1) for u in servers], extra))
    users = [f"user-{i}" for i in range(300)]
    before = {u: before_proxy.get(f"/x?user={u}").json["upstream"] for u in users}
    before_proxy.stop()
    after_proxy = start_proxy(pool_blueprint(tmp_path, [(u.name, u.url, 1) for u in servers if u.name != "b3"], extra))
    after = {u: after_proxy.get(f"/x?user={u}").json["upstream"] for u in users}
    moved = [u for u in users if before[u] != after[u]]
    assert all(before[u] == "b3" for u in moved)  # only the removed target's keys move
    assert abs(len(moved) / len(users) - 1 / 5) < 0.08


@pytest.fixture
def resetting() -> Iterator[ResettingServer]:
    server = ResettingServer()
    yield server
    server.stop()


def test_failover_from_refusing_resetting_and_hanging_targets(tmp_path: Path, make_upstream, resetting: ResettingServer, start_proxy) -> None:  # type: ignore[no-untyped-def]
    good = make_upstream("good")
    hanging = make_upstream("hanging", delay=5.0)
    refused = f"http://127.0.0.1:{free_port()}"
    extra = """
        retries: {attempts: 3, retry_on: [connect_failure, reset, timeout], per_try_timeout: 0.5, backoff: 0.01}
    """
    targets = [("refused", refused, 1), ("reset", resetting.url, 1), ("hanging", hanging.url, 1), ("good", good.url, 1)]
    proxy = start_proxy(pool_blueprint(tmp_path, targets, extra))
    for _ in range(4):  # round robin starts each request on a different failing target
        reply = proxy.get("/x")
        assert reply.status == 200
        assert reply.json["upstream"] == "good"
    assert resetting.accepted >= 1 and hanging.received  # the bad targets really were tried


def test_post_is_not_retried_after_a_reset_unless_allowed(tmp_path: Path, make_upstream, resetting: ResettingServer, start_proxy) -> None:  # type: ignore[no-untyped-def]
    good = make_upstream("good")
    extra = "retries: {attempts: 2, retry_on: [reset, connect_failure]}"
    proxy = start_proxy(pool_blueprint(tmp_path, [("reset", resetting.url, 1), ("good", good.url, 1)], extra))
    first = proxy.send("POST", "/x", body=b"pay once")  # round robin: the resetting target first
    assert first.status == 502
    assert good.received == []
    proxy.stop()
    allowed = "retries: {attempts: 2, retry_on: [reset], retry_non_idempotent: true}"
    proxy = start_proxy(pool_blueprint(tmp_path, [("reset", resetting.url, 1), ("good", good.url, 1)], allowed))
    assert proxy.send("POST", "/x", body=b"again").json["upstream"] == "good"


def test_default_failover_skips_a_refusing_target(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    good = make_upstream("good")
    proxy = start_proxy(pool_blueprint(tmp_path, [("down", f"http://127.0.0.1:{free_port()}", 1), ("good", good.url, 1)]))
    # even a POST: nothing reached the refusing target
    assert [proxy.send("POST", "/x").json["upstream"] for _ in range(4)] == ["good"] * 4


def test_retry_on_status_and_the_flow_comment(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    import json


    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response({"upstream": "busy"}, status=503)

    busy = make_upstream("busy", routes={"/x": unavailable})
    good = make_upstream("good")
    web_port = free_port()
    extra_args, headers = mitmweb_options(web_port)
    blueprint = pool_blueprint(tmp_path, [("busy", busy.url, 1), ("good", good.url, 1)], "retries: {attempts: 1, retry_on: [503]}")
    proxy = start_proxy(blueprint, *extra_args, tool="mitmweb")
    assert proxy.get("/x").json["upstream"] == "good"
    from tests.integration.harness import request, wait_for_port

    wait_for_port(web_port)
    flows = json.loads(request("GET", "/flows", port=web_port, headers=headers).body)
    comment = flows[-1]["comment"]
    assert "target=good" in comment and "attempts=2" in comment and "failover=busy>good" in comment, comment


def test_the_path_and_query_reach_the_upstream_byte_for_byte(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    async def raw(req: web.Request) -> web.StreamResponse:
        return web.json_response({"raw": req.raw_path})

    upstream = make_upstream("raw", raw_routes={"/raw/a\u00e9b": raw})
    proxy = start_proxy(pool_blueprint(tmp_path, [(upstream.name, upstream.url, 1)]))
    # The path goes on in its one canonical form (docs/security.md §1): escapes of unreserved
    # characters decoded, others upper-cased; the query string byte for byte.
    reply = proxy.get("/r%61w/a%c3%a9b?q=%2F&x=%41+b")
    assert reply.status == 200, reply.body
    assert reply.json == {"raw": "/raw/a%C3%A9b?q=%2F&x=%41+b"}
    # An encoded slash means a segment boundary to some upstreams and not to others: refused.
    assert proxy.get("/raw/a%2Fb").status == 400


def test_max_connections_holds_through_mitmdump(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """Eight clients at once on a target that takes two connections: all answered, two at a time."""
    in_flight = {"now": 0, "peak": 0}
    peers: set[object] = set()

    async def slow(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        try:
            await asyncio.sleep(0.2)
            return web.json_response({"upstream": "capped"})
        finally:
            in_flight["now"] -= 1

    capped = make_upstream("capped", routes={"/slow": slow})
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(
        textwrap.dedent(
            f"""
            name: capped
            plugins:
              proxy:
                config:
                  targets: [{{name: capped, url: "{capped.url}", max_connections: 2}}]
            endpoints:
              - {{path: /slow, method: GET, handler: proxy}}
            """
        )
    )
    proxy = start_proxy(blueprint)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: proxy.get("/slow", timeout=20), range(8)))
    assert [r.status for r in replies] == [200] * 8
    assert in_flight["peak"] == 2  # without the cap the eight arrive together
    assert len(peers) == 2
