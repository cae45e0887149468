"""Chaos under load: three real targets are killed, restarted, slowed, made to answer 500, to
reset connections and to cut answers short, alone and in combinations, while paced clients send idempotent requests
through a real mitmdump, and the blueprint is reloaded (valid, invalid, valid) in the middle.

The property: while at least one target is up and can take traffic, no client sees an error:
every answer is a 200 from a target. Figures (requests, answers per target, statuses, retries and
failovers from /metrics, reloads, latency percentiles, per phase) go to the suite's report.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import Proxy, request, write_atomically
from tests.reliability.load import (
    Behaviour,
    Call,
    ChaosTarget,
    Outcome,
    PacedLoad,
    metric,
    percentile,
    scrape,
    status_json,
    wait_until,
)

pytestmark = [pytest.mark.reliability]

BLUEPRINT = Path(__file__).parent / "blueprints" / "chaos.yaml"
NAMES = ("b1", "b2", "b3")
RATE = 100.0  # requests per second, all clients together
WORKERS = 8
HOLD = 10.0  # seconds each phase lasts once its faults are in place
SLOW = 3.0  # a slow target's answer time: six times the per-try timeout (0.5 s)
RELOADED = "backworks: reloaded blueprint"
REFUSED = "refused, the previous version keeps serving"


class Targets:
    """The three targets by name; a killed one is restarted as a new server on the same port."""

    def __init__(self) -> None:
        self.behaviour = {name: Behaviour(slow_seconds=SLOW) for name in NAMES}
        self.servers = {name: ChaosTarget(name, behaviour=self.behaviour[name]).start() for name in NAMES}
        self.ports = {name: server.port for name, server in self.servers.items()}
        self.restarts = Counter[str]()

    def env(self) -> dict[str, str]:
        return {f"{name.upper()}_URL": server.url for name, server in self.servers.items()}

    def mode(self, name: str, mode: str) -> None:
        self.behaviour[name].mode = mode

    def kill(self, name: str) -> None:
        self.servers[name].stop()

    def restart(self, name: str) -> None:
        self.servers[name].stop()
        self.servers[name] = ChaosTarget(name, port=self.ports[name], behaviour=self.behaviour[name]).start()
        self.restarts[name] += 1

    def stop(self) -> None:
        for name, server in self.servers.items():
            self.behaviour[name].mode = "ok"  # a slow handler would hold the server's shutdown
            server.stop()


@pytest.fixture
def targets() -> Iterator[Targets]:
    running = Targets()
    yield running
    running.stop()


def can_take_traffic(proxy: Proxy, names: tuple[str, ...]) -> bool:
    """Healthy by its checks, not ejected, breaker closed: what the balancer picks from."""
    rows = {t["name"]: t for t in status_json(proxy.admin_port)["pools"][0]["targets"]}
    return all(rows[n]["health"] == "healthy" and not rows[n]["ejected"] and rows[n]["breaker"] == "closed" for n in names)


def plan(index: int) -> Call:
    """Idempotent requests only: GET on a spread of paths, every tenth a HEAD."""
    method = "HEAD" if index % 10 == 9 else "GET"
    return Call("api", method, f"/api/items/{index % 97}?n={index}")


@dataclass
class Phase:
    name: str
    began: float  # monotonic, when its faults were in place
    ended: float = 0.0


def version_text(text: str, version: str, per_try: str = "0.5s", policy: str | None = None) -> str:
    """The blueprint as served at `version`: its version label, its per-try timeout and policy."""
    text = text.replace("v1", version).replace("per_try_timeout: 0.5s", f"per_try_timeout: {per_try}")
    if policy is not None:
        text = text.replace("      targets:\n", f"      load_balancing: {policy}\n      targets:\n", 1)
    return text


def test_zero_client_errors_while_one_target_is_up(tmp_path: Path, targets: Targets, start_proxy: Callable[..., Proxy], report: Callable[[str], None]) -> None:
    original = BLUEPRINT.read_text()
    blueprint = tmp_path / "chaos.yaml"
    blueprint.write_text(original)
    proxy = start_proxy(blueprint, "--set", "blueprint_watch_ms=200", "--set", "flow_detail=0", env=targets.env())
    assert request("GET", "/api/warm", port=proxy.port).status == 200
    phases: list[Phase] = []
    written: dict[str, float] = {}  # version: when its file was written
    live: dict[str, float] = {}  # version: when it was seen answering (or refused)

    def phase(name: str) -> None:
        now = time.monotonic()
        if phases:
            phases[-1].ended = now
        phases.append(Phase(name, now))

    def wait_ready(*names: str) -> None:
        wait_until(lambda: can_take_traffic(proxy, names), 30, f"{', '.join(names)} back in the rotation", step=0.1)

    def reload(text: str, version: str, accepted: bool) -> None:
        offset = len(proxy.log())
        written[version] = time.monotonic()
        write_atomically(blueprint, text)
        proxy.wait_for_log(RELOADED if accepted else REFUSED, timeout=15, after=offset)
        if accepted:  # live for new requests from now on: the next answer says so
            wait_until(lambda: request("GET", "/ping", port=proxy.port).json == {"version": version}, 10, f"{version} answers")
        live[version] = time.monotonic()

    load = PacedLoad(proxy.port, plan, rate=RATE, workers=WORKERS, max_requests=40_000, max_seconds=300)
    started = time.monotonic()
    with load:
        # Each phase is marked before its faults go in, after the waits that end the one before.
        phase("all well")
        time.sleep(6)

        phase("b2 killed (refuses connections)")
        targets.kill("b2")
        time.sleep(HOLD)

        phase("b2 restarted on its port")
        answered = targets.behaviour["b2"].answered
        targets.restart("b2")
        wait_until(lambda: targets.behaviour["b2"].answered > answered + 20, 30, "b2 takes traffic again")
        time.sleep(HOLD / 2)

        phase(f"b3 slow ({SLOW:.0f} s answers, per-try timeout 0.5 s)")
        targets.mode("b3", "slow")
        time.sleep(HOLD)
        targets.mode("b3", "ok")
        wait_ready("b2", "b3")

        phase("b1 answers 500 on the API (its health checks pass)")
        targets.mode("b1", "error500")
        time.sleep(HOLD / 2)
        phase("reloaded v2 (per-try 0.6 s) while b1 answers 500")
        reload(version_text(original, "v2", per_try="0.6s"), "v2", accepted=True)
        time.sleep(HOLD / 2)
        targets.mode("b1", "ok")
        wait_ready("b1")

        phase("b2 resets connections + b3 slow; b1 alone")
        targets.mode("b2", "reset")
        targets.mode("b3", "slow")
        time.sleep(HOLD)

        phase("b2 killed + b3 answers 500; b1 alone")
        targets.mode("b2", "ok")
        targets.kill("b2")
        targets.mode("b3", "error500")
        time.sleep(HOLD / 2)
        phase("invalid blueprint refused (v2 keeps serving); b2 killed + b3 500")
        broken = version_text(original, "v-broken").replace("health_check:", "health_chek:")
        reload(broken, "v-broken", accepted=False)
        time.sleep(HOLD / 2)

        phase("b2 restarted, b3 well; reloaded v3 (least_connections)")
        targets.restart("b2")
        targets.mode("b3", "ok")
        reload(version_text(original, "v3", policy="least_connections"), "v3", accepted=True)
        wait_ready("b1", "b2", "b3")
        time.sleep(HOLD / 2)

        phase("b1 + b3 killed; b2 alone")
        targets.kill("b1")
        targets.kill("b3")
        time.sleep(HOLD)

        phase("b1 + b3 restarted")
        targets.restart("b1")
        targets.restart("b3")
        wait_ready("b1", "b3")

        phase("b2 answers 500; b1 + b3 up")
        targets.mode("b2", "error500")
        time.sleep(HOLD)
        targets.mode("b2", "ok")
        wait_ready("b2")

        phase("b1 cuts answers short (head, part of the body, reset) + b3 slow; b2 alone")
        targets.mode("b1", "cut")
        targets.mode("b3", "slow")
        time.sleep(HOLD)

        phase("all well (tail)")
        targets.mode("b1", "ok")
        targets.mode("b3", "ok")
        wait_ready("b1", "b2", "b3")
        time.sleep(6)
        phases[-1].ended = time.monotonic()
    elapsed = time.monotonic() - started
    outcomes = load.snapshot()
    samples = scrape(proxy.admin_port)
    log = proxy.log()

    # -- figures ------------------------------------------------------------------------------
    errors = [o for o in outcomes if o.status != 200 or o.target not in NAMES]
    latencies = [o.seconds for o in outcomes]
    statuses = Counter(o.status for o in outcomes)
    per_target = Counter(o.target for o in outcomes if o.status == 200)
    retries = metric(samples, "backworks_upstream_retries_total", pool="default")
    failovers = metric(samples, "backworks_upstream_failovers_total", pool="default")
    tries = {
        name: {
            outcome: int(value)
            for (metric_name, labels), value in samples.items()
            if metric_name == "backworks_upstream_requests_total" and ("target", name) in labels
            for outcome in [dict(labels)["outcome"]]
        }
        for name in NAMES
    }
    accepted, refused = log.count(RELOADED), log.count(REFUSED)
    loads = metric(samples, "backworks_blueprint_loads_total")
    report(f"{len(outcomes)} requests in {elapsed:.0f} s ({len(outcomes) / elapsed:.0f}/s, {WORKERS} clients, keep-alive), GET and HEAD")
    report(f"client errors (anything but a 200 from a target): {len(errors)}")
    report(f"statuses: {dict(statuses)}")
    report(f"answers per target: {dict(sorted(per_target.items()))}")
    report(f"latency: p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.0f} ms")
    report(f"retries {retries:.0f}, failovers {failovers:.0f} (backworks_upstream_retries_total / _failovers_total)")
    for name in NAMES:
        report(f"tries on {name}: {dict(sorted(tries[name].items()))}")
    report(f"reloads: {accepted} accepted, {refused} refused; backworks_blueprint_loads_total {loads:.0f}; restarts {dict(targets.restarts)}")
    report(
        "log: "
        + ", ".join(
            f"{label} {len(re.findall(pattern, log))}"
            for label, pattern in [
                ("health unhealthy", r"health check: \S+ is unhealthy"),
                ("healthy again", r"health check: \S+ is healthy"),
                ("ejections", r"outlier detection \[default\]: ejecting"),
                ("breaker opened", r"circuit breaker for \S+: \w+ -> open"),
                ("breaker closed", r"circuit breaker for \S+: half_open -> closed"),
            ]
        )
    )
    report("phase | requests | errors | answers b1/b2/b3 | p99 ms")
    for step in phases:
        inside = [o for o in outcomes if step.began <= o.started < step.ended]
        names = Counter(o.target for o in inside)
        p99 = percentile([o.seconds for o in inside], 99) * 1000 if inside else 0.0
        failed = sum(o.status != 200 for o in inside)
        report(f"{step.name} | {len(inside)} | {failed} | {names['b1']}/{names['b2']}/{names['b3']} | {p99:.0f}")

    # -- the properties -------------------------------------------------------------------------
    assert len(outcomes) >= 0.5 * RATE * (elapsed - 10), "the load fell far behind its pace"
    assert errors == [], f"{len(errors)} client errors, first: {[(phase_of(phases, o), o.status, o.detail) for o in errors[:5]]}"
    assert accepted == 2 and refused == 1 and loads == 3
    assert all(per_target[name] > 0 for name in NAMES)
    versions = Counter(o.version for o in outcomes)
    assert set(versions) == {"v1", "v2", "v3"}, versions  # never the refused one
    between = [o for o in outcomes if live["v2"] <= o.started < written["v3"]]  # the refused one included
    assert between and {o.version for o in between} == {"v2"}, Counter(o.version for o in between)
    after = [o for o in outcomes if o.started >= live["v3"]]
    assert after and {o.version for o in after} == {"v3"}
    assert retries > 0 and failovers > 0


def phase_of(phases: list[Phase], outcome: Outcome) -> str:
    return next((p.name for p in phases if p.began <= outcome.started < (p.ended or float("inf"))), "?")
