"""Active health checks for one pool: probe each target's health URL on an interval.

Which targets are checked: a target's own `health_check` keys override the pool's key by key
(`{path: /healthz}` on a target keeps the pool's interval and thresholds); a target with neither,
or whose resulting settings say `enabled: false`, is not checked and always counts as healthy.

Each checked target gets one asyncio task that GETs `target URL (base path included) + path`
with the probe injected at construction, so tests (and other transports) need no network:
- the first probe runs after a random delay of up to 10% of `interval`, so that a pool's targets,
  and several gateways, do not all probe at once; after that the wait between the end of one
  probe and the start of the next (as in Envoy) is `interval` +-10% (uniform);
- a probe passes if it answers within `timeout` with a status in `expected_status` (a code, or
  ranges such as "200-299,304"); an exception (connection refused, reset, ...) or the timeout is a
  failure. The timeout is passed to the probe and also enforced around it;
- targets start healthy, so traffic flows before the first check has run (Envoy starts hosts
  unhealthy until their first check passes; here passive outlier detection and the breakers
  cover a target that is down at start). `unhealthy_threshold` failures in a row make a healthy
  target unhealthy, `healthy_threshold` passes in a row make it healthy again. Each change is
  logged once, with the reason.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from pydantic import Field, field_validator

from backworks_core.model import StrictModel, UrlPath
from backworks_core.validation import PositiveDuration

__all__ = [
    "INTERVAL_JITTER",
    "CheckTarget",
    "HealthCheckConfig",
    "HealthChecker",
    "HealthTarget",
    "Probe",
    "StatusRanges",
    "describe_error",
    "failure_kind",
    "effective_config",
    "first_delay",
    "http_probe",
    "jittered_interval",
    "parse_status_ranges",
    "probe_url",
]

logger = logging.getLogger(__name__)

Probe = Callable[[str, float], Awaitable[int]]
"""(url, timeout in seconds) -> the HTTP status; raises on connection failure or timeout."""

INTERVAL_JITTER = 0.1  # +-10% of the interval between probes; the first probe within 10% of it


class HealthCheckConfig(StrictModel):
    enabled: bool = Field(True, description="false: not checked (on a target, while the pool's block checks the others)", examples=[False])
    interval: PositiveDuration = Field(30.0, description="time between the end of one probe and the start of the next (+-10%)", examples=["10s"])
    timeout: PositiveDuration = Field(5.0, description="a probe that takes longer fails", examples=["2s"])
    path: UrlPath = Field("/health", description="probed with GET at the target's URL (base path included) followed by this path", examples=["/healthz"])
    expected_status: str | int = Field("200-399", description="a code, or ranges such as '200-299,304'", examples=["200-299,304"])

    @field_validator("expected_status")
    @classmethod
    def _status_ranges(cls, value: str | int) -> str | int:
        parse_status_ranges(value)  # the checker's own parser: what loads is what runs
        return value
    healthy_threshold: int = Field(2, ge=1, description="passes in a row that make an unhealthy target healthy again", examples=[1])
    unhealthy_threshold: int = Field(3, ge=1, description="failures in a row that make a healthy target unhealthy", examples=[2])


# -- pure helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRanges:
    """Inclusive status ranges; call it (or use `in`) to test a status."""

    ranges: tuple[tuple[int, int], ...]

    def __call__(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.ranges)

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and self(status)

    def __str__(self) -> str:
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)


def parse_status_ranges(value: str | int) -> StatusRanges:
    """`304`, `"200-299,304"`: codes and inclusive low-high ranges, 100 to 599."""
    if isinstance(value, bool):
        raise ValueError(f"expected status codes or ranges such as '200-299,304', got {value!r}")
    parts: list[str | int] = [value] if isinstance(value, int) else [p.strip() for p in value.split(",")]
    ranges: list[tuple[int, int]] = []
    for part in parts:
        bounds = [part] if isinstance(part, int) else part.split("-", 1)
        try:
            numbers = [int(b) for b in bounds]
        except ValueError:
            raise ValueError(f"expected status codes or ranges such as '200-299,304', got {value!r}") from None
        if not all(100 <= n <= 599 for n in numbers) or numbers != sorted(numbers):
            raise ValueError(f"expected status codes from 100 to 599 (ranges low-high), got {value!r}")
        ranges.append((numbers[0], numbers[-1]))
    return StatusRanges(tuple(ranges))


def effective_config(target: HealthCheckConfig | None, pool: HealthCheckConfig | None) -> HealthCheckConfig | None:
    """The settings a target is checked with, or None when it is not checked.

    The keys the target's block sets override the pool's; the rest come from the pool's block.
    """
    if target is None:
        config = pool
    elif pool is None:
        config = target
    else:
        config = pool.model_copy(update={key: getattr(target, key) for key in target.model_fields_set})
    return config if config is not None and config.enabled else None


def probe_url(target_url: str, path: str) -> str:
    """The health URL: the target's URL, base path included, then `path`."""
    return target_url.rstrip("/") + path


def first_delay(interval: float, rng: random.Random) -> float:
    return rng.uniform(0, INTERVAL_JITTER * interval)


def jittered_interval(interval: float, rng: random.Random) -> float:
    return interval * (1 + rng.uniform(-INTERVAL_JITTER, INTERVAL_JITTER))


def describe_error(exc: BaseException) -> str:
    """A short reason for the log: `connection refused`, `timeout`, or the exception's text."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    return str(exc) or type(exc).__name__


def failure_kind(exc: BaseException) -> str:
    """What failed, for the status page: a kind, never an address or the OS's text.

    `describe_error` (for the log) may carry both: aiohttp's connect errors name host and port.
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, (ssl.SSLError, aiohttp.ClientSSLError)):
        return "TLS error"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return "connection reset"
    if isinstance(exc, (aiohttp.ClientConnectorError, OSError)):
        return "connect failed"
    return "probe failed"


def http_probe(
    session: aiohttp.ClientSession,
    ssl_context_for: Callable[[str], ssl.SSLContext | None] | None = None,
    authorization_for: Callable[[str], str | None] | None = None,
) -> Probe:
    """A probe that GETs the URL with `session`; redirects are not followed (a 3xx is the answer).

    `ssl_context_for(url)` gives an https target's context (its ca_file / tls_verify), None for
    the default verification; `authorization_for(url)` the Authorization value of a target's URL
    credentials (the URLs probed never hold them: backworks_core.credentials).
    """

    async def probe(url: str, timeout: float) -> int:
        context = ssl_context_for(url) if ssl_context_for is not None else None
        authorization = authorization_for(url) if authorization_for is not None else None
        headers = {"User-Agent": "backworks-health-check"}
        if authorization is not None:
            headers["Authorization"] = authorization
        async with session.get(
            url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=headers,
            ssl=context if context is not None else True,
        ) as response:
            return response.status

    return probe


# -- the checker -----------------------------------------------------------------------------------


class HealthTarget(Protocol):
    """What the checker needs of a target; the proxy's TargetConfig has it."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def health_check(self) -> HealthCheckConfig | None: ...


@dataclass(frozen=True)
class CheckTarget:
    name: str
    url: str
    health_check: HealthCheckConfig | None = None


@dataclass(eq=False)
class _Checked:
    name: str
    base: str  # the target's URL
    url: str  # the probe URL
    config: HealthCheckConfig
    matches: StatusRanges
    healthy: bool = True
    passes: int = 0
    failures: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_check: float | None = None  # from `clock` (wall time by default)
    last_result: str | None = None  # "passed", or what failed without addresses (failure_kind)
    task: asyncio.Task[None] | None = None


class HealthChecker:
    """Active checks of one pool's targets. See the module docstring for the rules."""

    def __init__(
        self,
        targets: Iterable[HealthTarget],
        pool_config: HealthCheckConfig | None,
        *,
        probe: Probe,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        pool: str | None = None,
    ) -> None:
        """`clock` stamps `last_check` (wall time, for status listings); `pool` names the pool in logs."""
        self._probe = probe
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._prefix = f"health check [{pool}]" if pool else "health check"
        self._order: list[str] = []
        self._checked: dict[str, _Checked] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.update(targets, pool_config)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop is not None

    async def start(self) -> None:
        """One task per checked target, on the running loop. Starting twice does nothing."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        for checked in self._checked.values():
            self._spawn(checked)

    async def stop(self) -> None:
        """Cancel every task and wait for them all to end."""
        self._loop = None
        tasks = list(self._retiring)
        for checked in self._checked.values():
            if checked.task is not None:
                tasks.append(checked.task)
                checked.task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def update(self, targets: Iterable[HealthTarget], pool_config: HealthCheckConfig | None) -> None:
        """Reload: check new targets, stop checking removed ones, apply changed settings.

        A target that keeps its name and URL keeps its health and counters; its task restarts if
        its settings changed. Synchronous, for mitmproxy's configure hook: the tasks of removed
        targets are cancelled here and awaited by `stop()`.
        """
        order: list[str] = []
        checked: dict[str, _Checked] = {}
        for target in targets:
            order.append(target.name)
            config = effective_config(target.health_check, pool_config)
            if config is None:
                continue
            url = probe_url(target.url, config.path)
            old = self._checked.get(target.name)
            if old is not None and old.base == target.url:
                if old.config != config or old.url != url:
                    self._retire(old)
                    old.config, old.url, old.matches = config, url, parse_status_ranges(config.expected_status)
                checked[target.name] = old
            else:
                if old is not None:
                    self._retire(old)
                checked[target.name] = _Checked(target.name, target.url, url, config, parse_status_ranges(config.expected_status))
        for name, old in self._checked.items():
            if name not in checked:
                self._retire(old)
        self._order = order
        self._checked = checked
        if self._loop is not None:
            for state in checked.values():
                if state.task is None:
                    self._spawn(state)

    # -- looking ---------------------------------------------------------------------------------

    def is_healthy(self, name: str) -> bool:
        """A target that is not checked (or not known) counts as healthy."""
        checked = self._checked.get(name)
        return checked is None or checked.healthy

    def unhealthy(self) -> list[str]:
        return [name for name in self._order if not self.is_healthy(name)]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per target, in pool order: checked, healthy, counters, last status/error/check time, URL."""
        listing: dict[str, dict[str, Any]] = {}
        for name in self._order:
            checked = self._checked.get(name)
            if checked is None:
                listing[name] = {"checked": False, "healthy": True}
                continue
            listing[name] = {
                "checked": True,
                "healthy": checked.healthy,
                "consecutive_passes": checked.passes,
                "consecutive_failures": checked.failures,
                "last_status": checked.last_status,
                "last_error": checked.last_error,
                "last_check": checked.last_check,
                "last_result": checked.last_result,
                "url": checked.url,
            }
        return listing

    async def check_now(self, name: str) -> bool:
        """Probe one target now (outside its schedule); whether the probe passed."""
        checked = self._checked.get(name)
        if checked is None:
            raise KeyError(f"target {name!r} is not health-checked")
        return await self._check(checked)

    # -- checking --------------------------------------------------------------------------------

    def _spawn(self, checked: _Checked) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._run(checked), name=f"{self._prefix}: {checked.name}")
        task.add_done_callback(self._task_done)
        checked.task = task

    def _retire(self, checked: _Checked) -> None:
        task, checked.task = checked.task, None
        if task is not None and not task.done():
            task.cancel()
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s task %s stopped: %r", self._prefix, task.get_name(), task.exception())

    async def _run(self, checked: _Checked) -> None:
        interval = checked.config.interval
        await self._sleep(first_delay(interval, self._rng))
        while True:
            await self._check(checked)
            await self._sleep(jittered_interval(interval, self._rng))

    async def _check(self, checked: _Checked) -> bool:
        config = checked.config
        status: int | None = None
        error: str | None = None
        result = "passed"
        try:
            async with asyncio.timeout(config.timeout):
                status = await self._probe(checked.url, config.timeout)
        except TimeoutError:
            error = f"timeout after {config.timeout:g}s"
            result = "timeout"
        except Exception as exc:  # the probe's transport failed: that is what a check is for
            error = describe_error(exc)
            result = failure_kind(exc)
        else:
            if not checked.matches(status):
                error = f"status {status}, expected {checked.matches}"
                result = f"status {status}"
        checked.last_check = self._clock()
        checked.last_status = status
        checked.last_error = error
        checked.last_result = result
        if error is None:
            checked.passes += 1
            checked.failures = 0
            if not checked.healthy and checked.passes >= config.healthy_threshold:
                checked.healthy = True
                logger.info(
                    "%s: %s is healthy (%d consecutive passes: status %s)", self._prefix, checked.name, checked.passes, status
                )
            else:
                logger.debug("%s: %s passed (status %s)", self._prefix, checked.name, status)
            return True
        checked.failures += 1
        checked.passes = 0
        if checked.healthy and checked.failures >= config.unhealthy_threshold:
            checked.healthy = False
            logger.warning(
                "%s: %s is unhealthy (%d consecutive failures: %s)", self._prefix, checked.name, checked.failures, error
            )
        else:
            logger.debug("%s: %s failed (%s)", self._prefix, checked.name, error)
        return False
