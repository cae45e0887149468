"""Load-balancing policies: distributions, exact sequences, stickiness and key movement.

All randomness comes from seeded `random.Random` instances, so every number asserted here is
reproducible; the tolerances are stated next to each table and leave room for other seeds.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from addons.balancing import (
    POLICIES,
    Backend,
    Policy,
    hash_key,
    make_balancer,
    stable_hash,
)

HASHING: tuple[Policy, ...] = ("ip_hash", "consistent_hash")


def pool(*weights: float, names: str = "abcdefghij") -> list[Backend]:
    return [Backend(names[i], float(w)) for i, w in enumerate(weights)]


def longest_run(seq: Sequence[str]) -> dict[str, int]:
    runs: dict[str, int] = {}
    for name, group in itertools.groupby(seq):
        runs[name] = max(runs.get(name, 0), len(list(group)))
    return runs


# ------------------------------------------------------------------------ construction


def test_policies_match_the_literal() -> None:
    assert set(POLICIES) == {"round_robin", "weighted_round_robin", "least_connections", "ip_hash", "consistent_hash", "random"}


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_builds_and_rejects_empty_candidates(policy: Policy) -> None:
    backends = pool(1, 1)
    balancer = make_balancer(policy, backends, random.Random(0))
    assert balancer.choose(backends, "k") in backends
    with pytest.raises(ValueError, match="at least one candidate"):
        balancer.choose([], "k")


@pytest.mark.parametrize("policy", POLICIES)
def test_an_empty_pool_builds(policy: Policy) -> None:
    """A pool may have no targets (e.g. only named upstreams are used); it just has no candidates."""
    balancer = make_balancer(policy, [], random.Random(0))
    with pytest.raises(ValueError, match="at least one candidate"):
        balancer.choose([], "k")


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ([Backend("a", 0.0)], "weight must be"),
        ([Backend("a", -1.0)], "weight must be"),
        ([Backend("a", float("nan"))], "weight must be"),
        ([Backend("a", float("inf"))], "weight must be"),
        ([Backend("a"), Backend("a")], "two backends are named 'a'"),
    ],
)
def test_bad_pools_are_rejected(backends: list[Backend], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_balancer("round_robin", backends)


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown load_balancing policy 'fastest'"):
        make_balancer("fastest", pool(1))  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["round_robin", "weighted_round_robin", "consistent_hash"])
def test_a_backend_from_another_pool_is_an_error(policy: Policy) -> None:
    balancer = make_balancer(policy, pool(1, 1), random.Random(0))
    stranger = Backend("z")
    with pytest.raises(ValueError):
        balancer.choose([stranger, Backend("y")], "k")


def test_backends_compare_by_identity() -> None:
    """Two targets with the same fields are still two targets (and hashable as dict keys)."""
    one, two = Backend("a"), Backend("a")
    assert one != two and len({one, two}) == 2


# ------------------------------------------------------------- only candidates are chosen


@pytest.mark.parametrize("policy", POLICIES)
def test_never_picks_a_non_candidate(policy: Policy) -> None:
    """Candidates change on every pick (health, breakers, already-tried targets)."""
    rng = random.Random(7)
    backends = pool(1, 2, 1, 3, 1)
    balancer = make_balancer(policy, backends, random.Random(8))
    for i in range(10_000):
        candidates = [b for b in backends if rng.random() < 0.6] or [backends[rng.randrange(5)]]
        for b in backends:
            b.in_flight = rng.randrange(4)
        key = None if i % 10 == 0 else f"client-{rng.randrange(500)}"
        assert balancer.choose(candidates, key) in candidates


@pytest.mark.parametrize("policy", POLICIES)
def test_a_retry_goes_to_a_different_target(policy: Policy) -> None:
    """The caller drops tried targets from the candidates; a sticky key must not defeat that."""
    backends = pool(1, 1, 1)
    balancer = make_balancer(policy, backends, random.Random(0))
    tried: list[Backend] = []
    for _ in range(3):
        pick = balancer.choose([b for b in backends if b not in tried], "sticky-client")
        assert pick not in tried
        tried.append(pick)
    assert set(tried) == set(backends)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_single_candidate_is_always_the_answer(policy: Policy) -> None:
    backends = pool(1, 5, 1)
    balancer = make_balancer(policy, backends, random.Random(0))
    for i in range(50):
        assert balancer.choose([backends[0]], f"k{i}") is backends[0]


# ------------------------------------------------------------------------ distributions


def simulate(policy: Policy, backends: list[Backend], picks: int, seed: int) -> Counter[str]:
    """Counts per backend over `picks`, each policy fed the way it is used.

    Hashing policies see a distinct key per pick (many clients); least_connections runs under
    simulated load: 40 requests stay in flight and a uniformly random one completes before each
    new pick, so a backend finishes requests in proportion to what it holds.
    """
    rng = random.Random(seed)
    balancer = make_balancer(policy, backends, random.Random(seed + 1))
    counts: Counter[str] = Counter()
    in_flight: list[Backend] = []
    for i in range(picks):
        if policy == "least_connections" and len(in_flight) >= 40:
            j = rng.randrange(len(in_flight))
            in_flight[j], in_flight[-1] = in_flight[-1], in_flight[j]
            in_flight.pop().in_flight -= 1
        pick = balancer.choose(backends, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        if policy == "least_connections":
            pick.in_flight += 1
            in_flight.append(pick)
        counts[pick.name] += 1
    return counts


# (policy, weights, expected share per backend, absolute tolerance on each share)
DISTRIBUTIONS: list[tuple[Policy, tuple[float, ...], tuple[float, ...], float]] = [
    ("round_robin", (1, 1, 1), (1 / 3, 1 / 3, 1 / 3), 0.0001),
    ("round_robin", (1, 2, 1), (1 / 3, 1 / 3, 1 / 3), 0.0001),  # weights ignored
    ("weighted_round_robin", (1, 2, 1), (0.25, 0.5, 0.25), 0.0001),
    ("weighted_round_robin", (5, 1, 1), (5 / 7, 1 / 7, 1 / 7), 0.0002),
    ("weighted_round_robin", (0.3, 0.7), (0.3, 0.7), 0.0002),
    ("random", (1, 1, 1), (1 / 3, 1 / 3, 1 / 3), 0.02),
    ("random", (1, 2, 1), (0.25, 0.5, 0.25), 0.02),
    ("least_connections", (1, 1, 1), (1 / 3, 1 / 3, 1 / 3), 0.02),
    ("least_connections", (1, 2, 1), (0.25, 0.5, 0.25), 0.02),
    ("ip_hash", (1, 1, 1, 1, 1), (0.2,) * 5, 0.02),
    ("ip_hash", (1, 2, 1), (1 / 3, 1 / 3, 1 / 3), 0.02),  # weights ignored
    ("consistent_hash", (1, 1, 1, 1, 1), (0.2,) * 5, 0.03),
    ("consistent_hash", (1, 2, 1), (0.25, 0.5, 0.25), 0.03),
]


@pytest.mark.parametrize(("policy", "weights", "expected", "tolerance"), DISTRIBUTIONS)
@pytest.mark.parametrize("seed", [1, 2])
def test_distribution(
    policy: Policy, weights: tuple[float, ...], expected: tuple[float, ...], tolerance: float, seed: int
) -> None:
    picks = 12_000
    backends = pool(*weights)
    counts = simulate(policy, backends, picks, seed)
    shares = [counts[b.name] / picks for b in backends]
    for backend, share, want in zip(backends, shares, expected):
        assert abs(share - want) <= tolerance, f"{backend.name}: {share:.4f} vs {want:.4f} ± {tolerance}"


# ---------------------------------------------------------------- weighted_round_robin


def test_swrr_exact_sequence_is_smooth() -> None:
    """1:2:1 serves exactly 1:2:1 in every sliding window of 4, not a a b b ... bursts."""
    a, b, c = backends = pool(1, 2, 1)
    balancer = make_balancer("weighted_round_robin", backends)
    seq = [balancer.choose(backends, None).name for _ in range(400)]
    assert seq[:4] == ["b", "a", "c", "b"]
    for start in range(len(seq) - 3):
        assert Counter(seq[start : start + 4]) == {"a": 1, "b": 2, "c": 1}, start


@pytest.mark.parametrize(
    ("weights", "period"),
    [
        ((5, 1, 1), "aabacaa"),  # the example in nginx's ngx_http_upstream_round_robin.c
        ((1, 2, 1), "bacb"),
        ((0.5, 1, 0.5), "bacb"),  # float weights, same proportions, same sequence
        ((1, 1, 1), "abc"),
        ((3, 1), "aaba"),
    ],
)
def test_swrr_sequences(weights: tuple[float, ...], period: str) -> None:
    backends = pool(*weights)
    balancer = make_balancer("weighted_round_robin", backends)
    seq = "".join(balancer.choose(backends, None).name for _ in range(len(period) * 50))
    assert seq == period * 50


@pytest.mark.parametrize("excluded_at", range(8))
def test_swrr_one_pick_without_a_backend_stays_smooth(excluded_at: int) -> None:
    """c is unavailable for one pick (any phase): that pick goes elsewhere and the rest stays
    smooth: no target serves twice in a row except b (weight 2) at most twice, and the totals
    stay within one pick of 1:2:1."""
    a, b, c = backends = pool(1, 2, 1)
    balancer = make_balancer("weighted_round_robin", backends)
    seq: list[str] = []
    for i in range(400):
        candidates = [a, b] if i == excluded_at else backends
        seq.append(balancer.choose(candidates, None).name)
    assert seq[excluded_at] != "c"
    runs = longest_run(seq)
    assert runs["a"] == 1 and runs["b"] <= 2 and runs["c"] == 1, runs
    counts = Counter(seq)
    assert abs(counts["a"] - 100) <= 1 and abs(counts["b"] - 200) <= 1 and abs(counts["c"] - 100) <= 1


def test_swrr_carries_on_among_the_rest_when_one_is_out() -> None:
    """With c out for good, a:b settles at exactly 1:2 in every window of 3."""
    a, b, c = backends = pool(1, 2, 1)
    balancer = make_balancer("weighted_round_robin", backends)
    for _ in range(6):
        balancer.choose(backends, None)
    seq = [balancer.choose([a, b], None).name for _ in range(300)]
    for start in range(3, len(seq) - 2):  # allow a short transition
        assert Counter(seq[start : start + 3]) == {"a": 1, "b": 2}, start


def test_swrr_reads_weights_live() -> None:
    a, b = backends = pool(1, 1)
    balancer = make_balancer("weighted_round_robin", backends)
    for _ in range(10):
        balancer.choose(backends, None)
    b.weight = 3.0
    seq = [balancer.choose(backends, None).name for _ in range(400)]
    assert Counter(seq[4:]) == {"a": 99, "b": 297}


# ------------------------------------------------------------------------- round_robin


def test_round_robin_skips_an_excluded_backend_in_order() -> None:
    backends = pool(1, 1, 1, 1, 1)
    balancer = make_balancer("round_robin", backends)
    candidates = [b for b in backends if b.name != "c"]
    seq = "".join(balancer.choose(candidates, None).name for _ in range(12))
    assert seq == "abde" * 3


def test_round_robin_is_fair_when_a_backend_flaps() -> None:
    """d is a candidate only every other pick. Indexing candidates with `counter % len` would
    skew a/b/c; a cursor over the pool order keeps them level."""
    a, b, c, d = backends = pool(1, 1, 1, 1)
    balancer = make_balancer("round_robin", backends)
    counts = Counter(balancer.choose(backends if i % 2 == 0 else [a, b, c], None).name for i in range(12_000))
    assert max(counts[n] for n in "abc") - min(counts[n] for n in "abc") <= 1
    assert sum(counts.values()) == 12_000


def test_round_robin_never_serves_another_backend_twice_between_turns() -> None:
    """With a random subset on each pick, between two consecutive picks of an always-available
    backend every other backend is picked at most once: nobody gets ahead in the rotation."""
    rng = random.Random(3)
    backends = pool(1, 1, 1, 1, 1, 1)
    steady = backends[:2]
    balancer = make_balancer("round_robin", backends)
    since_last: dict[str, Counter[str]] = {s.name: Counter() for s in steady}
    for _ in range(10_000):
        candidates = [b for b in backends if b in steady or rng.random() < 0.5]
        name = balancer.choose(candidates, None).name
        for s, seen in since_last.items():
            if name == s:
                seen.clear()
            else:
                seen[name] += 1
                assert seen[name] <= 1, f"{name} served twice between two turns of {s}"


# -------------------------------------------------------------------- least_connections


@pytest.mark.parametrize(
    ("loads", "weights", "expected"),
    [
        ((3, 0, 2), (1, 1, 1), "b"),  # the idle one
        ((1, 5, 0), (1, 1, 1), "c"),
        ((2, 4, 9), (1, 4, 1), "b"),  # 4/4 = 1 beats 2/1 = 2: per unit of weight
        ((0, 1, 1), (1, 100, 100), "a"),  # 0 in flight beats any ratio above 0
    ],
)
def test_least_connections_prefers_the_least_loaded(
    loads: tuple[int, ...], weights: tuple[float, ...], expected: str
) -> None:
    backends = pool(*weights)
    for backend, load in zip(backends, loads):
        backend.in_flight = load
    balancer = make_balancer("least_connections", backends, random.Random(0))
    assert {balancer.choose(backends, None).name for _ in range(200)} == {expected}


def test_least_connections_breaks_ties_at_random_among_the_tied_only() -> None:
    """All idle: spread evenly (first-in-order would pin everything to one target at low load),
    never to the busier one."""
    backends = pool(1, 1, 1, 1)
    backends[3].in_flight = 1
    balancer = make_balancer("least_connections", backends, random.Random(5))
    counts = Counter(balancer.choose(backends, None).name for _ in range(12_000))
    assert "d" not in counts
    for name in "abc":
        assert abs(counts[name] / 12_000 - 1 / 3) <= 0.02


def test_least_connections_ties_are_reproducible_with_a_seed() -> None:
    def run() -> list[str]:
        backends = pool(1, 1, 1)
        balancer = make_balancer("least_connections", backends, random.Random(42))
        return [balancer.choose(backends, None).name for _ in range(100)]

    assert run() == run()


def test_least_connections_evens_out_a_burst() -> None:
    """Requests that never finish: each pick goes where fewest are open, so a 1:2:1 pool holds
    1:2:1 open requests after every 4 picks."""
    backends = pool(1, 2, 1)
    balancer = make_balancer("least_connections", backends, random.Random(1))
    for round_ in range(1, 51):
        for _ in range(4):
            balancer.choose(backends, None).in_flight += 1
        assert [b.in_flight for b in backends] == [round_, 2 * round_, round_]


# ------------------------------------------------------------------------------ ip_hash


def test_ip_hash_is_sticky() -> None:
    backends = pool(1, 1, 1, 1, 1)
    balancer = make_balancer("ip_hash", backends, random.Random(0))
    other = make_balancer("ip_hash", backends, random.Random(99))
    clients = [f"192.168.{i // 256}.{i % 256}" for i in range(1000)]
    first = {ip: balancer.choose(backends, ip) for ip in clients}
    rng = random.Random(1)
    for _ in range(5000):
        ip = rng.choice(clients)
        assert balancer.choose(backends, ip) is first[ip]
        assert other.choose(backends, ip) is first[ip]  # the rng plays no part when there is a key


def test_stable_hash_is_pinned() -> None:
    """Not Python's salted hash(): the same client maps the same way after a restart and on
    every replica. These values must never change."""
    assert stable_hash("") == 0xE4A6A0577479B2B4
    assert stable_hash("10.0.0.1") == 0x538EF646E14D03E6
    backends = pool(1, 1, 1, 1, 1)
    balancer = make_balancer("ip_hash", backends)
    assert balancer.choose(backends, "10.0.0.1").name == "b"  # 0x538E...03E6 % 5 == 1


@pytest.mark.parametrize("policy", HASHING)
def test_hashing_without_a_key_falls_back_to_weighted_random(policy: Policy) -> None:
    backends = pool(1, 3)
    balancer = make_balancer(policy, backends, random.Random(4))
    counts = Counter(balancer.choose(backends, None).name for _ in range(12_000))
    assert abs(counts["b"] / 12_000 - 0.75) <= 0.02


# ---------------------------------------------------------------------- consistent_hash


KEYS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize("removed", range(5))
def test_consistent_hash_moves_only_the_removed_backends_keys(removed: int) -> None:
    """N = 5: the keys of the target that drops out move (its share, 1/5 ± 0.04) and spread
    over all the others; every other key stays put; when it returns they move back."""
    backends = pool(1, 1, 1, 1, 1)
    gone = backends[removed]
    rest = [b for b in backends if b is not gone]
    balancer = make_balancer("consistent_hash", backends, random.Random(0))
    before = {k: balancer.choose(backends, k) for k in KEYS}
    after = {k: balancer.choose(rest, k) for k in KEYS}
    moved = [k for k in KEYS if after[k] is not before[k]]
    assert all(before[k] is gone for k in moved)
    assert all(after[k] is not gone for k in KEYS)
    assert abs(len(moved) / len(KEYS) - 1 / 5) <= 0.04
    receivers = Counter(after[k].name for k in moved)
    assert set(receivers) == {b.name for b in rest}
    assert {k: balancer.choose(backends, k) for k in KEYS} == before


def test_consistent_hash_with_two_out_moves_only_their_keys() -> None:
    backends = pool(1, 1, 1, 1, 1)
    balancer = make_balancer("consistent_hash", backends, random.Random(0))
    before = {k: balancer.choose(backends, k) for k in KEYS}
    rest = backends[1:4]
    for k in KEYS:
        pick = balancer.choose(rest, k)
        if before[k] in rest:
            assert pick is before[k]


def test_consistent_hash_ring_depends_on_names_not_order_or_rng() -> None:
    """Reordering targets in the blueprint, or a different process, maps keys the same way."""
    forward = pool(1, 2, 1, 1)
    backward = [Backend(b.name, b.weight) for b in reversed(forward)]
    one = make_balancer("consistent_hash", forward, random.Random(1))
    two = make_balancer("consistent_hash", backward, random.Random(2))
    for k in KEYS[:2000]:
        assert one.choose(forward, k).name == two.choose(backward, k).name


def test_consistent_hash_adding_a_backend_takes_about_its_share() -> None:
    """Growing the pool (a reload) from 4 to 5 equal targets moves about 1/5 of keys, all to the
    newcomer."""
    four = pool(1, 1, 1, 1)
    five = [Backend(b.name, b.weight) for b in four] + [Backend("e")]
    old = make_balancer("consistent_hash", four)
    new = make_balancer("consistent_hash", five)
    moved = 0
    for k in KEYS:
        was, now = old.choose(four, k).name, new.choose(five, k).name
        if was != now:
            assert now == "e"
            moved += 1
    assert abs(moved / len(KEYS) - 1 / 5) <= 0.04


def test_consistent_hash_tiny_weights_still_get_a_point() -> None:
    """A weight that rounds to zero points still gets one, so the target stays reachable."""
    backends = [Backend("a", 0.0001), Backend("b", 1.0)]
    balancer = make_balancer("consistent_hash", backends)
    assert balancer.choose([backends[0]], "anything") is backends[0]
    assert any(balancer.choose(backends, k) is backends[0] for k in KEYS)


# ------------------------------------------------------------------------------ hash_key


def key_of(hash_on: str, **overrides: object) -> str | None:
    request: dict[str, object] = {
        "client_ip": "203.0.113.7",
        "path": "/orders/42?expand=items",
        "headers": {"X-Tenant": "acme", "Authorization": "Bearer t"},
        "cookies": {"session": "s-123", "EMPTY": ""},
        "query": {"expand": "items", "shard": "7"},
    }
    request.update(overrides)
    return hash_key(hash_on, **request)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hash_on", "overrides", "expected"),
    [
        ("ip", {}, "203.0.113.7"),
        ("ip", {"client_ip": ""}, None),
        ("path", {}, "/orders/42"),  # without the query string
        ("path", {"path": "/orders/42"}, "/orders/42"),
        ("header:X-Tenant", {}, "acme"),
        ("header:x-tenant", {}, "acme"),  # header names are case-insensitive
        ("header:X-TENANT", {}, "acme"),
        ("header:X-Missing", {}, None),
        ("header:X-Tenant", {"headers": {"x-tenant": ""}}, None),  # empty counts as missing
        ("cookie:session", {}, "s-123"),
        ("cookie:Session", {}, None),  # cookie names are case-sensitive
        ("cookie:missing", {}, None),
        ("cookie:EMPTY", {}, None),
        ("query:shard", {}, "7"),
        ("query:SHARD", {}, None),
        ("query:missing", {}, None),
    ],
)
def test_hash_key(hash_on: str, overrides: dict[str, object], expected: str | None) -> None:
    assert key_of(hash_on, **overrides) == expected


@pytest.mark.parametrize("hash_on", ["", "bogus", "header:", "cookie:", "query:", "body:x", "ip:x"])
def test_hash_key_rejects_unknown_forms(hash_on: str) -> None:
    with pytest.raises(ValueError, match="hash_on"):
        key_of(hash_on)


def test_hash_key_reads_mitmproxy_requests() -> None:
    """What the proxy plugin will pass: mitmproxy's Headers and MultiDictViews are Mappings."""
    from mitmproxy.test import tutils

    request = tutils.treq(path=b"/a/b?shard=9&shard=10")
    request.headers["X-Tenant"] = "acme"
    request.headers["Cookie"] = "session=s-1; theme=dark"

    def key(hash_on: str) -> str | None:
        return hash_key(
            hash_on,
            client_ip="198.51.100.1",
            path=request.path,
            headers=request.headers,
            cookies=request.cookies,
            query=request.query,
        )

    assert key("header:x-tenant") == "acme"
    assert key("cookie:session") == "s-1"
    assert key("query:shard") == "9"
    assert key("path") == "/a/b"
    assert key("ip") == "198.51.100.1"

