"""Load-balancing policies for the proxy plugin's upstream pools.

A pure module: no mitmproxy, no I/O, no clock. Randomness comes from an injectable
`random.Random` so tests (and anyone reproducing a pick sequence) are deterministic.

The caller owns target health. On every pick it passes `candidates`: the pool's backends that
can take this attempt (healthy, not ejected, breaker closed or admitting, not already tried by
this request), a non-empty subset in pool order. A policy never returns a non-candidate, so a
retry lands on a different target whenever there is one left to try.

Balancers keep mutable state between picks and do no locking: mitmproxy runs addons on a single
event-loop thread, and a pick is a short synchronous call.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

__all__ = [
    "POLICIES",
    "Backend",
    "Balancer",
    "ConsistentHash",
    "IpHash",
    "LeastConnections",
    "Policy",
    "RoundRobin",
    "SmoothWeightedRoundRobin",
    "WeightedRandom",
    "hash_key",
    "make_balancer",
    "stable_hash",
]

Policy = Literal["round_robin", "weighted_round_robin", "least_connections", "ip_hash", "consistent_hash", "random"]
POLICIES: tuple[str, ...] = get_args(Policy)

# Ring points per unit of weight for consistent_hash. Fixed (not normalised to the pool) so that
# adding or removing a target on reload does not reshuffle the other targets' points.
VNODES_PER_WEIGHT = 160  # as in ketama; ~±10% share spread per target with a handful of targets


@dataclass(eq=False)
class Backend:
    """Runtime state of one target, shared by the policy and the caller.

    `eq=False` keeps identity equality and hashing: two targets with equal fields are still two
    targets, and backends can key dicts and sets cheaply.
    """

    name: str
    weight: float = 1.0
    in_flight: int = 0  # the caller increments/decrements around each upstream attempt


class Balancer(Protocol):
    def choose(self, candidates: Sequence[Backend], key: str | None) -> Backend:
        """Pick one of `candidates` (a non-empty subset of the pool, in pool order).

        `key` is the request's hash key (see `hash_key`); only ip_hash and consistent_hash use
        it, and they fall back to a weighted random pick when it is None.
        """
        ...


def stable_hash(value: str) -> int:
    """A 64-bit hash that is the same in every process and release.

    Python's `hash()` is salted per process, which would move sticky clients on every restart
    and disagree between gateway replicas.
    """
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _weighted_random(rng: random.Random, candidates: Sequence[Backend]) -> Backend:
    """Probability proportional to weight: one `rng.random()` and a linear scan (cheaper than
    `rng.choices` for the handful of targets a pool has)."""
    if len(candidates) == 1:
        return candidates[0]
    total = 0.0
    for backend in candidates:
        total += backend.weight
    point = rng.random() * total
    for backend in candidates:
        point -= backend.weight
        if point < 0:
            return backend
    return candidates[-1]  # float rounding left `point` a hair above zero


def _no_candidates() -> ValueError:
    return ValueError("choose() needs at least one candidate")


class RoundRobin:
    """Rotate over the pool in order, skipping backends that are not candidates.

    The cursor lives in *pool* order, not candidate order: with a changing subset, the pick is
    the first candidate at or after the cursor, so a target that drops out and comes back
    neither loses nor gains turns, and nobody is favoured by `counter % len(candidates)`
    re-indexing. Weights are ignored.
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._size = len(backends)
        self._position = {b: i for i, b in enumerate(backends)}
        self._next = 0

    def choose(self, candidates: Sequence[Backend], key: str | None = None) -> Backend:
        if not candidates:
            raise _no_candidates()
        position, start, size = self._position, self._next, self._size
        best = candidates[0]
        best_distance = size
        best_position = 0
        for backend in candidates:
            try:
                p = position[backend]
            except KeyError:
                raise ValueError(f"backend {backend.name!r} is not in this pool") from None
            distance = (p - start) % size
            if distance < best_distance:
                best, best_distance, best_position = backend, distance, p
                if distance == 0:
                    break
        self._next = (best_position + 1) % size
        return best


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin.

    Each pick adds every candidate's weight to its `current` score, takes the highest (first in
    pool order on a tie) and subtracts the candidates' total weight from it. A 1:2:1 pool gives
    B A C B, B A C B, ...: exactly 1:2:1 in every window of 4, with no bursts to one target.
    Scores persist across picks; a backend that is not a candidate keeps its score frozen, so
    the rest carry on smoothly among themselves and it resumes where it was when it returns.
    Weights are read on every pick, so changing `Backend.weight` at runtime takes effect.
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._current: dict[Backend, float] = {b: 0.0 for b in backends}

    def choose(self, candidates: Sequence[Backend], key: str | None = None) -> Backend:
        if not candidates:
            raise _no_candidates()
        if len(candidates) == 1:
            return candidates[0]
        current = self._current
        total = 0.0
        best: Backend | None = None
        best_score = -math.inf
        for backend in candidates:
            try:
                score = current[backend] + backend.weight
            except KeyError:
                raise ValueError(f"backend {backend.name!r} is not in this pool") from None
            current[backend] = score
            total += backend.weight
            if score > best_score:
                best, best_score = backend, score
        assert best is not None
        current[best] = best_score - total
        return best


class LeastConnections:
    """Fewest in-flight requests per unit of weight (`in_flight / weight`).

    When several candidates tie for the lowest load, two distinct ones are drawn at random from
    the tied set and the less loaded of the two wins; as they tie, that is a uniform random
    choice among the tied backends. Random (rather than first-in-order) tie-breaking matters at
    low load, where everything sits at 0 in flight and "first" would send all traffic to one
    target.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[Backend], key: str | None = None) -> Backend:
        if not candidates:
            raise _no_candidates()
        if len(candidates) == 1:
            return candidates[0]
        lowest = math.inf
        tied: list[Backend] = []
        for backend in candidates:
            # Division is correctly rounded, so equal ratios (1/1, 2/2) compare equal.
            load = backend.in_flight / backend.weight
            if load < lowest:
                lowest = load
                tied = [backend]
            elif load == lowest:
                tied.append(backend)
        if len(tied) == 1:
            return tied[0]
        # Two distinct random indexes without the overhead of rng.sample.
        n = len(tied)
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        first, second = tied[i], tied[j]
        return second if second.in_flight / second.weight < first.in_flight / first.weight else first


class IpHash:
    """`stable_hash(key) % len(candidates)`: the same key goes to the same candidate.

    Weights are ignored. It is *not* consistent: when the candidate set changes (a target goes
    unhealthy or is added), most keys move, not just those of the changed target; use
    consistent_hash for that. Requests without a key get a weighted random pick.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[Backend], key: str | None) -> Backend:
        if not candidates:
            raise _no_candidates()
        if key is None:
            return _weighted_random(self._rng, candidates)
        return candidates[stable_hash(key) % len(candidates)]


class ConsistentHash:
    """A hash ring with virtual nodes in proportion to weight.

    Each backend gets `max(1, round(VNODES_PER_WEIGHT * weight))` points, named after the backend
    (`"name#i"`) so the ring is the same in every process. The ring is built once from the full
    pool (later weight changes are not reflected); a pick finds the key's point with bisect and
    walks clockwise to the first point owned by a candidate. Taking one of N backends out of the
    candidates therefore moves only the keys that were on it (about 1/N), and they spread over
    the others. Requests without a key get a weighted random pick.
    """

    def __init__(self, backends: Sequence[Backend], rng: random.Random) -> None:
        self._rng = rng
        points: list[tuple[int, int]] = []
        for index, backend in enumerate(backends):
            for i in range(max(1, round(VNODES_PER_WEIGHT * backend.weight))):
                points.append((stable_hash(f"{backend.name}#{i}"), index))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [backends[i] for _, i in points]

    def choose(self, candidates: Sequence[Backend], key: str | None) -> Backend:
        if not candidates:
            raise _no_candidates()
        if key is None:
            return _weighted_random(self._rng, candidates)
        owners = self._owners
        size = len(owners)
        start = bisect_left(self._points, stable_hash(key))
        # Identity membership (Backend has eq=False); a list is as fast as a set for a few targets.
        allowed: Sequence[Backend] | frozenset[Backend] = candidates if len(candidates) <= 8 else frozenset(candidates)
        for step in range(size):
            owner = owners[(start + step) % size]
            if owner in allowed:
                return owner
        raise ValueError("none of the candidates is in this pool")


class WeightedRandom:
    """A random candidate, with probability proportional to weight."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[Backend], key: str | None = None) -> Backend:
        if not candidates:
            raise _no_candidates()
        return _weighted_random(self._rng, candidates)


def make_balancer(policy: Policy, backends: Sequence[Backend], rng: random.Random | None = None) -> Balancer:
    """The balancer for one pool.

    `backends` is the whole pool in order (it may be empty: a pool without targets simply never
    has candidates). `rng` defaults to a fresh, unseeded `random.Random`, never the global one,
    so seeding elsewhere cannot couple pools together.
    """
    names: set[str] = set()
    for backend in backends:
        if not (isinstance(backend.weight, (int, float)) and math.isfinite(backend.weight) and backend.weight > 0):
            raise ValueError(f"backend {backend.name!r}: weight must be a finite number > 0, got {backend.weight!r}")
        if backend.name in names:
            raise ValueError(f"two backends are named {backend.name!r}")
        names.add(backend.name)
    rng = rng if rng is not None else random.Random()
    if policy == "round_robin":
        return RoundRobin(backends)
    if policy == "weighted_round_robin":
        return SmoothWeightedRoundRobin(backends)
    if policy == "least_connections":
        return LeastConnections(rng)
    if policy == "ip_hash":
        return IpHash(rng)
    if policy == "consistent_hash":
        return ConsistentHash(backends, rng)
    if policy == "random":
        return WeightedRandom(rng)
    raise ValueError(f"unknown load_balancing policy {policy!r} (expected one of {', '.join(POLICIES)})")


def hash_key(
    hash_on: str,
    *,
    client_ip: str,
    path: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    query: Mapping[str, str],
) -> str | None:
    """The value a hashing policy keys on, or None when the request does not carry it.

    `hash_on` is `ip`, `path`, `header:NAME` (case-insensitive name), `cookie:NAME` or
    `query:NAME` (case-sensitive names). `path` is hashed without its query string. An empty
    value counts as missing, so clients without the cookie are spread out rather than all
    pinned to the one target that "" hashes to.
    """
    if hash_on == "ip":
        value: str | None = client_ip
    elif hash_on == "path":
        value = path.partition("?")[0]
    else:
        kind, _, name = hash_on.partition(":")
        if not name:
            raise ValueError(f"hash_on: expected ip, path, header:NAME, cookie:NAME or query:NAME, got {hash_on!r}")
        if kind == "header":
            value = headers.get(name)
            if value is None:
                folded = name.casefold()
                value = next((v for k, v in headers.items() if k.casefold() == folded), None)
        elif kind == "cookie":
            value = cookies.get(name)
        elif kind == "query":
            value = query.get(name)
        else:
            raise ValueError(f"hash_on: expected ip, path, header:NAME, cookie:NAME or query:NAME, got {hash_on!r}")
    return value or None
