"""`backworks run FILE --workers N`: N mitmdump processes serve one port, and a supervisor.

Every worker binds the same HOST:PORT with SO_REUSEPORT (addons/reuse_port.py; started through
its launcher, `python -m addons.reuse_port`, so that the option is in place before mitmproxy
binds) and the Linux kernel spreads new connections across them: no balancer in front, the
client's address and TLS stay with mitmproxy. docs/scaling.md says why this mechanism.

The supervisor (this module, in the `backworks run` process) starts the workers, each in a
process group of its own with its output prefixed by its index, its own admin listener on an
ephemeral 127.0.0.1 port, and the environment `BACKWORKS_WORKER` (0-based), `BACKWORKS_WORKERS`
and `BACKWORKS_RUN_DIR` (a private folder of this run). It replaces a worker that exits (same
index, new admin port), with a growing delay while it keeps dying at start and a bound after
which it gives up; it stops them all on Ctrl-C or SIGTERM; it serves the one admin listener the
outside sees (backworks_cli/workers_admin/) from the workers' own; and it merges the capture
journals the workers wrote (one each) into the capture's output when they have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backworks_core.worker_env import RUN_DIR_ENV, WORKER_ENV, WORKERS_ENV, merge_captures, reuse_port_problem

logger = logging.getLogger(__name__)

LAUNCHER = ["-m", "addons.reuse_port"]  # mitmdump with SO_REUSEPORT from the start
ADMIN_OPTION = "backworks_admin"


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as the supervisor sees it now (a snapshot: the supervisor replaces it on change).

    `admin_url` is the worker's own admin listener (http://127.0.0.1:PORT; "" when the admin
    listener is off), where the aggregating admin listener reads its status and metrics;
    `restarts` counts the replacements at this index.
    """

    index: int
    pid: int
    admin_url: str
    started_at: float
    restarts: int
    alive: bool


# -- the parts that decide ---------------------------------------------------------------------


def admin_setting(extra: Sequence[str]) -> str | None:
    """The last `--set backworks_admin=VALUE` (or `--set=backworks_admin=VALUE`) among mitmdump's
    arguments, or None."""
    found = None
    prefix = f"{ADMIN_OPTION}="
    for i, arg in enumerate(extra):
        value = None
        if arg == "--set" and i + 1 < len(extra) and extra[i + 1].startswith(prefix):
            value = extra[i + 1]
        elif arg.startswith("--set=" + prefix):
            value = arg[len("--set=") :]
        if value is not None:
            found = value[len(prefix) :]
    return found


def without_admin_setting(arguments: Sequence[str]) -> list[str]:
    """`arguments` without their `--set backworks_admin=…`: the supervisor sets each worker's."""
    kept: list[str] = []
    skip = False
    prefix = f"{ADMIN_OPTION}="
    for i, arg in enumerate(arguments):
        if skip:
            skip = False
            continue
        if arg == "--set" and i + 1 < len(arguments) and arguments[i + 1].startswith(prefix):
            skip = True
            continue
        if arg.startswith("--set=" + prefix):
            continue
        kept.append(arg)
    return kept


def worker_command(mitmdump_command: Sequence[str], python: str, admin_port: int | None) -> list[str]:
    """The command of one worker: `backworks run`'s mitmdump command with the launcher in place of
    the mitmdump executable, SO_REUSEPORT asked for, and the worker's own admin listener
    (127.0.0.1:`admin_port`; None: off). Everything else, the user's arguments after `--`
    included, is as `backworks run` passes it to a single mitmdump."""
    arguments = without_admin_setting(mitmdump_command[1:])
    admin = "off" if admin_port is None else f"127.0.0.1:{admin_port}"
    return [python, *LAUNCHER, *arguments, "--set", "backworks_reuse_port=true", "--set", f"{ADMIN_OPTION}={admin}"]


def listen_port(command: Sequence[str]) -> int | None:
    """The value of the last `--listen-port`/`-p` in a mitmdump command, or None."""
    found = None
    for flag, value in zip(command, command[1:]):
        if flag in ("--listen-port", "-p") and value.isdigit():
            found = int(value)
    return found


def worker_env(base: dict[str, str], index: int, count: int, run_dir: Path) -> dict[str, str]:
    return {**base, WORKER_ENV: str(index), WORKERS_ENV: str(count), RUN_DIR_ENV: str(run_dir)}




@dataclass
class RestartPolicy:
    """When a worker that exited is started again, and when the supervisor gives up.

    A worker that ran `healthy_after` seconds or more is replaced at once (and its count of quick
    deaths starts over); one that died sooner is a quick death: replaced after `base_delay`
    doubled per consecutive quick death (at most `max_delay`); after `max_quick_deaths`
    consecutive quick deaths at one index the supervisor gives up (the blueprint, the port or the
    environment is wrong, and another try would do the same).
    """

    healthy_after: float = 10.0
    base_delay: float = 0.5
    max_delay: float = 10.0
    max_quick_deaths: int = 5
    quick_deaths: dict[int, int] = field(default_factory=dict)

    def after_exit(self, index: int, uptime: float) -> float | None:
        """Seconds to wait before replacing worker `index`, which ran `uptime` s; None: give up."""
        if uptime >= self.healthy_after:
            self.quick_deaths[index] = 0
            return 0.0
        deaths = self.quick_deaths.get(index, 0) + 1
        self.quick_deaths[index] = deaths
        if deaths >= self.max_quick_deaths:
            return None
        return backoff_delay(deaths, self.base_delay, self.max_delay)


def backoff_delay(deaths: int, base: float = 0.5, ceiling: float = 10.0) -> float:
    """base, 2·base, 4·base… for the 1st, 2nd, 3rd… consecutive quick death, at most `ceiling`."""
    return float(min(ceiling, base * (2 ** max(0, deaths - 1))))


def exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- the supervisor --------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    admin_port: int | None
    started_at: float
    restarts: int
    pump: asyncio.Task[None] | None = None

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            index=self.index,
            pid=self.process.pid,
            admin_url="" if self.admin_port is None else f"http://127.0.0.1:{self.admin_port}",
            started_at=self.started_at,
            restarts=self.restarts,
            alive=self.process.returncode is None,
        )


class Supervisor:
    """Starts N workers, replaces those that exit, stops them all on request."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        admin: tuple[str, int] | None,
        run_dir: Path,
        python: str = sys.executable,
        policy: RestartPolicy | None = None,
        grace: float = 10.0,
        clock: Callable[[], float] = time.time,
        output: Callable[[bytes], None] | None = None,
        admin_follows: Callable[[], AdminChoice] | None = None,
        follow_every: float = 1.0,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.admin = admin
        # Each worker gets an admin listener of its own whenever one could be wanted (an edit may
        # turn the aggregate one on), unless `--set backworks_admin=off` fixed it for the run.
        self.workers_admin = admin is not None or admin_follows is not None
        # Called every `follow_every` s: where the blueprint now puts the admin listener
        # (KEEP: unchanged or unreadable), so that an edit of `server.admin` moves it, as it
        # moves a single process's.
        self.admin_follows = admin_follows
        self.follow_every = follow_every
        self._admin_task: asyncio.Task[None] | None = None
        self.run_dir = run_dir
        self.python = python
        self.policy = policy or RestartPolicy()
        self.grace = grace
        self.clock = clock
        self.output = output or _write_stderr
        self.workers: dict[int, _Worker] = {}
        self.restarts: dict[int, int] = {}
        self.stopping = asyncio.Event()
        self.killing = False
        self.failure: str | None = None

    def snapshot(self) -> list[WorkerInfo]:
        """What the aggregating admin listener asks for: every index, alive or being replaced."""
        return [self.workers[i].info() for i in sorted(self.workers)]

    async def start_worker(self, index: int) -> _Worker:
        admin_port = free_port() if self.workers_admin else None
        command = worker_command(self.command, self.python, admin_port)
        env = worker_env(dict(os.environ), index, self.count, self.run_dir)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the terminal's Ctrl-C reaches us only
            preexec_fn=_die_with_parent,
        )
        worker = _Worker(index, process, admin_port, self.clock(), self.restarts.get(index, 0))
        worker.pump = asyncio.create_task(self._pump(worker))
        self.workers[index] = worker
        logger.info("worker %d started (pid %d%s)", index, process.pid, f", admin 127.0.0.1:{admin_port}" if admin_port else "")
        return worker

    async def _pump(self, worker: _Worker) -> None:
        """The worker's output, each line prefixed with its index."""
        assert worker.process.stdout is not None
        prefix = f"[w{worker.index}] ".encode()
        pending = b""
        while True:
            chunk = await worker.process.stdout.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                self.output(b"".join(prefix + line + b"\n" for line in lines))
        if pending:
            self.output(prefix + pending + b"\n")

    async def _watch(self, worker: _Worker) -> None:
        """Wait for the worker to exit; replace it unless the run is stopping."""
        while True:
            returncode = await worker.process.wait()
            if worker.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.pump, 5)
            if self.stopping.is_set():
                return
            uptime = self.clock() - worker.started_at
            delay = self.policy.after_exit(worker.index, uptime)
            self.restarts[worker.index] = self.restarts.get(worker.index, 0) + 1
            if delay is None:
                self.failure = (
                    f"worker {worker.index} {exit_description(returncode)} {self.policy.max_quick_deaths} times in a row "
                    f"within {self.policy.healthy_after:g} s of starting; giving up (its output above says why)"
                )
                logger.error("%s", self.failure)
                self.stopping.set()
                return
            logger.warning(
                "worker %d (pid %d) %s after %.1f s; replacing it%s (restart %d of this worker); the other workers keep serving",
                worker.index, worker.process.pid, exit_description(returncode), uptime,
                f" in {delay:g} s" if delay else "", self.restarts[worker.index],
            )
            if delay:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    return
            worker = await self.start_worker(worker.index)

    def request_stop(self) -> None:
        """First call: a graceful stop; a second one: kill at once."""
        if self.stopping.is_set():
            if not self.killing:
                logger.warning("stopping now: killing every worker")
                self.killing = True
                self._signal_all(signal.SIGKILL)
            return
        logger.info("stopping %d worker(s) (Ctrl-C again to kill them at once)", self.count)
        self.stopping.set()

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(worker.process.pid, signum)

    async def _stop_all(self) -> bool:
        """SIGINT to every worker's group, SIGKILL after the grace; True when all exited in time."""
        self._signal_all(signal.SIGKILL if self.killing else signal.SIGINT)
        pending = [w.process.wait() for w in self.workers.values() if w.process.returncode is None]
        clean = True
        if pending:
            done, not_done = await asyncio.wait([asyncio.ensure_future(p) for p in pending], timeout=self.grace)
            if not_done:
                clean = False
                logger.warning("%d worker(s) still running after %g s: killing them", len(not_done), self.grace)
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(not_done, timeout=10)
        for worker in self.workers.values():
            if worker.pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.pump, 5)
            # anything the worker started in its group (a handler's subprocess) goes with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.process.pid, signal.SIGKILL)
        return clean and not self.killing

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                loop.add_signal_handler(signum, self.request_stop)
        watchers = []
        try:
            for index in range(self.count):
                await self.start_worker(index)
            watchers = [asyncio.create_task(self._watch(self.workers[i])) for i in range(self.count)]
            self._admin_task = self._start_admin()
            if self.admin_follows is not None:
                watchers.append(asyncio.create_task(self._follow_admin(self.admin_follows)))
            await self.stopping.wait()
            clean = await self._stop_all()
        finally:
            for task in watchers:
                task.cancel()
            await self._stop_admin()
            for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if signum is not None:
                    loop.remove_signal_handler(signum)
        if self.failure is not None:
            return 1
        stopped = sum(self.restarts.values())
        logger.info("all %d worker(s) stopped%s", self.count, f" ({stopped} replacement(s) during the run)" if stopped else "")
        return 0 if clean else 1

    async def _stop_admin(self) -> None:
        task, self._admin_task = self._admin_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _follow_admin(self, choose: Callable[[], AdminChoice]) -> None:
        """Moves the aggregate admin listener when an edit of the blueprint moves `server.admin`
        (or turns it off or on); an edit the workers refuse changes nothing here either."""
        while not self.stopping.is_set():
            await asyncio.sleep(self.follow_every)
            try:
                chosen = choose()
            except Exception:  # following the file must never stop the workers
                logger.exception("admin listener: reading the blueprint's server.admin failed; it stays where it is")
                continue
            if isinstance(chosen, _Keep) or chosen == self.admin:
                continue
            before = "off" if self.admin is None else f"{self.admin[0]}:{self.admin[1]}"
            after = "off" if chosen is None else f"{chosen[0]}:{chosen[1]}"
            logger.info("admin listener: server.admin changed in the blueprint, %s → %s", before, after)
            await self._stop_admin()
            self.admin = chosen
            self._admin_task = self._start_admin()

    def _start_admin(self) -> asyncio.Task[None] | None:
        if self.admin is None:
            logger.info("admin listener: off")
            return None
        try:
            from backworks_cli.workers_admin import serve_admin
        except ImportError as exc:
            logger.warning("the aggregate admin listener is not available (%s); each worker's own is listed above", exc)
            return None
        host, port = self.admin
        admin_stop = asyncio.Event()

        async def serve() -> None:
            try:
                await serve_admin(host, port, self.snapshot, admin_stop)
            except asyncio.CancelledError:
                admin_stop.set()
                raise
            except OSError as exc:
                logger.error("admin listener: cannot listen on %s:%d (%s); the API is served all the same", host, port, exc.strerror or exc)
            except Exception:
                logger.exception("admin listener failed; the API is served all the same")

        return asyncio.create_task(serve())


def _die_with_parent() -> None:
    """In the worker, before mitmdump starts: SIGTERM when the supervisor dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG), so that no worker keeps serving a port nobody supervises."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _write_stderr(data: bytes) -> None:
    try:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()
    except (OSError, ValueError):
        pass


def aggregate_admin_address(blueprint: object, extra: Sequence[str]) -> tuple[str, int] | None:
    """Where the supervisor's admin listener goes: `--set backworks_admin=` among the arguments
    after `--` (off, HOST:PORT), else the blueprint's `server.admin`, as a single process decides."""
    from backworks_core.admin import OFF, blueprint_admin_address, parse_admin_option

    chosen: object = None
    setting = admin_setting(extra)
    if setting is not None:
        chosen = parse_admin_option(setting)  # ValueError: the caller reports it
    if chosen == OFF:
        return None
    if chosen is None:
        chosen = blueprint_admin_address(blueprint)  # type: ignore[arg-type]
    if chosen is None:
        return None
    return (chosen.host, chosen.port)  # type: ignore[attr-defined]


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()  # the admin listener stays where it is
AdminChoice = tuple[str, int] | None | _Keep


def follow_blueprint_admin(path: str, extra: Sequence[str]) -> Callable[[], AdminChoice] | None:
    """What `Supervisor.admin_follows` calls: the blueprint's admin address each time the file
    changes (KEEP otherwise, or when the edit is invalid: the workers keep the old version too).
    None when `--set backworks_admin=` fixes the address for the run, as it does for one process."""
    if admin_setting(extra) is not None:
        return None
    from addons import installed_registry
    from backworks_core.loader import BlueprintError, load_blueprint

    registry = installed_registry()
    seen: list[tuple[int, int] | None] = [_file_stamp(path)]

    def choose() -> AdminChoice:
        stamp = _file_stamp(path)
        if stamp == seen[0]:
            return KEEP
        seen[0] = stamp
        try:
            blueprint = load_blueprint(path, registry)
        except (BlueprintError, OSError):
            return KEEP
        return aggregate_admin_address(blueprint, extra)

    return choose


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size)


def _configure_logging() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("backworks: %(message)s"))
        for name in (__name__, "backworks_cli.workers_admin", "backworks_core.worker_env"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)
            logging.getLogger(name).propagate = False


def run_workers(command: Sequence[str], count: int, blueprint: object, extra: Sequence[str], blueprint_path: str | None = None) -> int:
    """`backworks run FILE --workers N`: serve with `count` workers until Ctrl-C; the exit status."""
    from backworks_core.files import private_folder

    _configure_logging()
    if Path(command[0]).name.startswith("mitmweb"):
        print("backworks run: --web serves one process (mitmweb's flow list and web port are its own); drop --web or --workers", file=sys.stderr)
        return 2
    if listen_port(command) == 0:
        print(f"backworks run: --workers {count} needs a fixed port (port 0 would give each worker a port of its own); set --port or server.port", file=sys.stderr)
        return 2
    problem = reuse_port_problem()
    if problem is not None:
        print(f"backworks run: --workers {count}: {problem}", file=sys.stderr)
        return 2
    try:
        admin = aggregate_admin_address(blueprint, extra)
    except ValueError as exc:
        print(f"backworks run: {exc}", file=sys.stderr)
        return 2
    run_dir = private_folder("backworks-run-")  # 0700: the workers' shared files (capture manifests)
    logger.info("%d workers share the port (SO_REUSEPORT); admin listener %s", count, f"{admin[0]}:{admin[1]}" if admin else "off")
    try:
        follows = follow_blueprint_admin(blueprint_path, extra) if blueprint_path is not None else None
        supervisor = Supervisor(command, count, admin=admin, run_dir=run_dir, admin_follows=follows)
        status = asyncio.run(supervisor.run())
        from addons import installed_registry

        merge_captures(run_dir, registry=installed_registry())
        return status
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)




__all__ = [
    "RestartPolicy",
    "Supervisor",
    "WorkerInfo",
    "backoff_delay",
    "run_workers",
    "worker_command",
]
