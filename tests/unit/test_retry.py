"""Retry rules of the proxy plugin: what is retried, the backoff, and the budget."""

from __future__ import annotations

import random

import pytest

from addons.proxy.settings import RetryConfig, retry_policy
from addons.retry import RetryBudget, RetryPolicy

POLICY = RetryPolicy(
    attempts=2,
    conditions=frozenset({"connect_failure", "timeout", "reset"}),
    statuses=frozenset({502, 503}),
    per_try_timeout=None,
    backoff=0.1,
    retry_non_idempotent=False,
)


@pytest.mark.parametrize(
    ("outcome", "method", "expected"),
    [
        ("connect_failure", "GET", True),
        ("connect_failure", "POST", True),  # nothing reached the upstream: safe for any method
        ("reset", "GET", True),
        ("reset", "POST", False),
        ("timeout", "PUT", True),
        ("timeout", "PATCH", False),
        (502, "GET", True),
        (502, "POST", False),
        (500, "GET", False),  # not listed
        ("protocol", "GET", False),
    ],
)
def test_retryable(outcome: str | int, method: str, expected: bool) -> None:
    assert POLICY.retryable(outcome, method) is expected


def test_non_idempotent_retries_when_allowed() -> None:
    allowed = RetryPolicy(1, frozenset({"reset"}), frozenset({503}), None, 0, True)
    assert allowed.retryable("reset", "POST") and allowed.retryable(503, "PATCH")


def test_backoff_is_full_jitter_capped_at_ten_times_the_base() -> None:
    rng = random.Random(7)
    for retry in range(1, 12):
        ceiling = min(0.1 * 2 ** (retry - 1), 1.0)
        samples = [POLICY.delay(retry, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # it does use the whole range
    assert RetryPolicy(1, frozenset(), frozenset(), None, 0.0, False).delay(3, rng) == 0.0


def test_budget_allows_min_concurrency_then_a_share_of_requests() -> None:
    budget = RetryBudget(percent=20, min_concurrency=3, active_requests=10)
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert budget.refused == 1
    budget.active_requests = 50  # 20% of 50 = 10 retries in flight
    assert sum(budget.try_acquire() for _ in range(10)) == 7
    budget.release()
    assert budget.try_acquire() is True


def test_policy_resolution_order() -> None:
    endpoint, pool = RetryConfig(attempts=4), RetryConfig(attempts=1, retry_on=[503])
    assert retry_policy(endpoint, pool, 9, 3).attempts == 4
    chosen = retry_policy(None, pool, 9, 3)
    assert (chosen.attempts, chosen.statuses, chosen.conditions) == (1, frozenset({503}), frozenset())
    # the original per-target retry_attempts, with the default conditions
    per_target = retry_policy(None, None, 3, 3)
    assert (per_target.attempts, per_target.conditions) == (3, frozenset({"connect_failure", "timeout", "reset"}))  # nginx: error timeout
    # nothing configured: fail over from a refusing target, up to two more targets
    default = retry_policy(None, None, None, 3)
    assert (default.attempts, default.conditions) == (2, frozenset({"connect_failure"}))
    assert retry_policy(None, None, None, 1).attempts == 0


class ScriptedUpstream:
    """Stands in for the network (not for the handler under test): fails the first try, records the budget."""

    def __init__(self, pool, first_failure: str = "reset") -> None:  # type: ignore[no-untyped-def]
        self.pool = pool
        self.first_failure = first_failure
        self.budget_seen: list[int] = []

    async def send(self, method, url, headers, body, *, timeout, ssl_context=None, buffer_limit=None, max_connections=None):  # type: ignore[no-untyped-def]
        from backworks_core.upstream import UpstreamError, UpstreamReply

        self.budget_seen.append(self.pool.budget.active_retries)
        if len(self.budget_seen) == 1:
            raise UpstreamError(self.first_failure, "connection lost")  # type: ignore[arg-type]
        return UpstreamReply(200, "OK", [(b"content-type", b"text/plain")], b"ok", 0.0)


async def test_a_retry_holds_its_budget_slot_while_it_runs(project, compile_gateway, send) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: budget
        plugins:
          proxy:
            config:
              targets: [{name: a, url: "http://127.0.0.1:1"}, {name: b, url: "http://127.0.0.1:2"}]
              retries: {attempts: 1, retry_on: [reset], backoff: 0}
        endpoints:
          - {path: /x, handler: proxy}
        """
    )
    gateway = compile_gateway(path)
    handler = gateway.endpoints[0].handler
    upstream = ScriptedUpstream(handler.pool)
    handler.client = upstream
    flow = await send(gateway, "GET", "/x")
    assert flow.response.status_code == 200
    assert upstream.budget_seen == [0, 1]  # the retry counted while it ran, even with no backoff
    assert handler.pool.budget.active_retries == 0 and handler.pool.budget.active_requests == 0
    assert "failover=a>b" in flow.comment


async def test_failing_over_from_a_refused_connection_is_not_held_to_the_budget(project, compile_gateway, send) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: budget
        plugins:
          proxy:
            config:
              targets: [{name: a, url: "http://127.0.0.1:1"}, {name: b, url: "http://127.0.0.1:2"}]
              retries: {attempts: 1, retry_on: [connect_failure, reset], backoff: 0, min_retry_concurrency: 0}
        endpoints:
          - {path: /x, handler: proxy}
        """
    )
    gateway = compile_gateway(path)
    handler = gateway.endpoints[0].handler
    # A budget with no room: a reset is not retried, a refused connection still fails over.
    upstream = ScriptedUpstream(handler.pool, first_failure="reset")
    handler.client = upstream
    flow = await send(gateway, "GET", "/x")
    assert flow.response.status_code == 502 and upstream.budget_seen == [0]
    upstream = ScriptedUpstream(handler.pool, first_failure="connect_failure")
    handler.client = upstream
    flow = await send(gateway, "GET", "/x")
    assert flow.response.status_code == 200 and upstream.budget_seen == [0, 0]
    assert handler.pool.budget.active_retries == 0


def test_retry_settings_without_effect_are_named() -> None:
    from addons.proxy.settings import RetryConfig, retry_notes

    assert retry_notes(RetryConfig(per_try_timeout=2), 30) == []  # timeout is retried by default
    [(key, note)] = retry_notes(RetryConfig(per_try_timeout=2, retry_on=["connect_failure"]), 30)
    assert key == ("per_try_timeout",) and "add timeout to retry_on" in note
    [(key, note)] = retry_notes(RetryConfig(per_try_timeout=5), 5)
    assert "not shorter than the request's timeout" in note
    [(key, note)] = retry_notes(RetryConfig(attempts=0, per_try_timeout=1), 30)
    assert key == ("attempts",)
