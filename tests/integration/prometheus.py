"""A real Prometheus for integration tests: `promtool check metrics` and a `prometheus` server that
scrapes the processes under test, queried through its HTTP API.

The programs come from Debian's `prometheus` package (see tests/system-tools.sh). When they are
missing, `require()` skips the test locally and fails it under CI (env `CI` set).

Everything listens on 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import free_port

# Never send the test's own requests to 127.0.0.1 through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/bin") / name  # PATH may lack /usr/bin in odd environments
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


def promtool_path() -> str | None:
    """The `promtool` program, or None when it is not installed."""
    return _tool("promtool")


def prometheus_path() -> str | None:
    """The `prometheus` server program, or None when it is not installed."""
    return _tool("prometheus")


_PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus", "chromium": "chromium"}


def require(tool_path: str | None, name: str) -> str:
    """Return tool_path when the tool is installed; otherwise skip the test, or fail it under CI."""
    if tool_path:
        return tool_path
    reason = f"{name} is not installed (run tests/system-tools.sh, or: apt-get install {_PACKAGES.get(name, name)})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test", pytrace=False)
    pytest.skip(reason)


def check_metrics(text: str, *, timeout: float = 30.0) -> tuple[int, str]:
    """Run `promtool check metrics` on `text` (stdin) and return (exit code, stdout + stderr).

    Observed with promtool 2.42: 0 = clean; 3 = parsed but lint problems (e.g. a counter without
    `_total`, a missing HELP, `milliseconds` instead of base units), one line per problem;
    1 = the text does not parse (bad value, bad escape, duplicate TYPE, no trailing newline...).
    It does NOT detect duplicate series or a family split into non-adjacent groups.
    """
    promtool = promtool_path()
    if promtool is None:
        raise FileNotFoundError("promtool is not installed")
    completed = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    return completed.returncode, completed.stdout.decode(errors="replace")


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """The real `prometheus` binary on 127.0.0.1:<free port>, scraping `targets` every second.

        with PrometheusServer(["127.0.0.1:8080"], workdir=tmp_path) as prom:
            prom.wait_for_value('up{job="backworks"}', 1)

    `workdir` (e.g. pytest's tmp_path) receives `prometheus-<port>.log` (shown by conftest when a
    test fails), the config and the TSDB directory; without it a temporary directory is created
    and removed by stop().
    """

    def __init__(
        self,
        targets: list[str],
        metrics_path: str = "/metrics",
        *,
        workdir: Path | None = None,
        scrape_interval: str = "1s",
        job: str = "backworks",
        ready_timeout: float = 30.0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.targets_config = list(targets)
        self.metrics_path = metrics_path
        self.scrape_interval = scrape_interval
        self.job = job
        self.ready_timeout = ready_timeout
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="backworks-prometheus-"))
        self.log_path = self.workdir / f"prometheus-{self.port}.log"
        self.config_path = self.workdir / f"prometheus-{self.port}.yml"
        self.storage_path = self.workdir / f"prometheus-{self.port}-data"
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.targets_config}],
                }
            ],
        }

    def start(self) -> PrometheusServer:
        binary = prometheus_path()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed")
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        command = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
            *self.extra_args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(remove=False)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode} before it was ready:\n{self.log_tail()}")
            try:
                with _OPENER.open(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as error:  # 503 while starting
                last = f"HTTP {error.code}"
            except OSError as error:
                last = str(error)
            time.sleep(0.05)
        raise PrometheusError(f"prometheus not ready after {self.ready_timeout}s ({last}):\n{self.log_tail()}")

    def stop(self, *, remove: bool = True) -> None:
        """Idempotent. Removes the temporary directory when it created one (and remove=True)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if remove and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    # -- HTTP API ----------------------------------------------------------------------------

    def api(self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError unless status is success."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _OPENER.open(url, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:  # 400/422 carry a JSON error body
            body = error.read()
        try:
            answer = json.loads(body)
        except ValueError:
            raise PrometheusError(f"GET {url}: not JSON: {body[:500]!r}") from None
        if answer.get("status") != "success":
            raise PrometheusError(f"GET {url}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query. A vector comes back as is: [{"metric": {...}, "value": [ts, "7"]}, ...];
        a scalar or string becomes one such sample with an empty metric."""
        data = self.api("query", {"query": promql})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for_value(self, promql: str, expected: float, timeout: float = 30.0) -> float:
        """Poll the instant query until it returns exactly one sample equal to `expected`
        (math.isclose); return that value. Raises TimeoutError with the last result and the
        targets' health."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                result = self.query(promql)
                last = result
                if len(result) == 1:
                    value = float(result[0]["value"][1])
                    if value == expected or math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
                        return value
            except PrometheusError as error:
                last = error
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise TimeoutError(f"{promql!r} did not become {expected} within {timeout}s; last result: {last!r}; {self.describe_targets()}")

    def targets(self) -> list[dict[str, Any]]:
        """The active targets (each with scrapeUrl, health, lastError, lastScrape...), for diagnostics."""
        return self.api("targets", {"state": "active"})["activeTargets"]

    def describe_targets(self) -> str:
        try:
            targets = self.targets()
        except Exception as error:  # diagnostics must not hide the real failure
            return f"targets unavailable: {error}"
        if not targets:
            return "targets: none active yet"
        return "targets: " + "; ".join(f"{t.get('scrapeUrl')} health={t.get('health')} lastError={t.get('lastError')!r}" for t in targets)
