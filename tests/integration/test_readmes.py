"""Every curl command in the READMEs answers what the README says it answers.

A README shows its commands in fenced ```sh blocks: each `curl ...` command (continued with `\\`)
is followed by `# ` lines with the answer a person sees. The answer is either a body alone (the
status must then be 2xx), or, for a command run with `-i`, a status line, the headers worth
showing (a subset) and, after an empty `#` line, the body. `…` stands for anything (times, request
ids, tokens); a bare `…` in JSON stands for further keys or list items. Commands without `# `
lines (`TOKEN=$(curl ...)`) must print nothing.

Each README is started as it says (the real `backworks run`, `backworks demo-backend` processes,
or mitmdump), its host:port is rewritten to the test's free ports, and its commands run in order
with the real /usr/bin/curl in bash, the shell variables they set carried from one to the next.
A simple curl command runs with `-s -i` added, so its status and headers are checked as well.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import BIN, ROOT, free_port, mitmweb_options, stop_process_group, wait_for_port

pytestmark = pytest.mark.integration

CURL = "/usr/bin/curl"
ANY = "…"
REST = "\x00rest"  # what a bare … in a JSON object's key position or in a list becomes
STATUS_LINE = re.compile(r"HTTP/[\d.]+ \d{3}\b.*")
HOST_PORT = re.compile(r"\b(?:127\.0\.0\.1|localhost):(\d+)")
ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")
FENCE = re.compile(r"^```(\w*)\s*$")


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The answer a README shows under a command."""

    lines: tuple[str, ...]  # the `# ` lines without their `# `, as written

    @property
    def status_line(self) -> str | None:
        return self.lines[0] if STATUS_LINE.fullmatch(self.lines[0]) else None

    @property
    def headers(self) -> list[tuple[str, str]]:
        if self.status_line is None:
            return []
        headers = []
        for line in self.lines[1:]:
            if line == "":
                break
            if line != ANY:  # "and other headers"
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        return headers

    @property
    def body(self) -> str | None:
        """The body as shown (None: not shown); lines are joined with newlines, which JSON ignores."""
        if self.status_line is None:
            return "\n".join(self.lines)
        if "" not in self.lines:
            return None
        return "\n".join(self.lines[self.lines.index("") + 1 :]) or None


@dataclass(frozen=True)
class Command:
    text: str  # as in the README, continuation lines joined with newlines
    line: int  # where it starts in the README (1-based)
    expected: Expected | None

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


def sections(text: str, heading: str | None) -> str:
    """The README's text under `## heading` (up to the next `## `), or all of it."""
    if heading is None:
        return text
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise ValueError(f"no '## {heading}' section")
    return text[: match.start()].count("\n") * "\n" + match.group(0)  # keep line numbers


def parse_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Fenced code blocks: (info string, first line number, lines)."""
    blocks: list[tuple[str, int, list[str]]] = []
    current: list[str] | None = None
    info, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current, info, start = [], fence.group(1), number + 1
        elif current is not None and line.startswith("```"):
            blocks.append((info, start, current))
            current = None
        elif current is not None:
            current.append(line)
    if current is not None:
        raise ValueError(f"the code block from line {start - 1} is not closed")
    return blocks


def parse_commands(text: str, heading: str | None = None) -> list[Command]:
    """The commands of the README's shell blocks that contain curl, with their expected answers."""
    commands: list[Command] = []
    for info, start, lines in parse_blocks(sections(text, heading)):
        if info not in ("sh", "bash", "shell") or not any(re.search(r"\bcurl\b", line) for line in lines):
            continue
        index = 0
        while index < len(lines):
            line, number = lines[index], start + index
            if not line.strip():
                index += 1
                continue
            if line.startswith("#"):
                raise ValueError(f"line {number}: a `#` line that follows no command (put notes outside the block): {line!r}")
            parts = [line]
            while parts[-1].endswith("\\") and index + 1 < len(lines):
                index += 1
                parts.append(lines[index])
            index += 1
            answer = []
            while index < len(lines) and (lines[index] == "#" or lines[index].startswith("# ")):
                answer.append(lines[index][2:])
                index += 1
            commands.append(Command("\n".join(parts), number, Expected(tuple(answer)) if answer else None))
    return commands


def is_simple_curl(command: str) -> bool:
    """One curl invocation, no pipes, substitutions, redirections or lists."""
    if not command.startswith("curl "):
        return False
    lexer = shlex.shlex(command.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return False
    return not any(set(token) <= set("();<>|&") for token in tokens) and "$(" not in command and "`" not in command


def shows_headers(command: str) -> bool:
    """Whether a person running the command sees the status line and headers (curl -i)."""
    words = shlex.split(command.replace("\\\n", " "))
    return any(w == "--include" or (re.fullmatch(r"-[a-zA-Z]+", w) and "i" in w) for w in words)


def lint(commands: list[Command], ports: dict[int, int]) -> list[str]:
    """What makes a README's commands untestable or misleading."""
    problems = []
    for command in commands:
        for port in HOST_PORT.findall(command.text):
            if int(port) not in ports:
                problems.append(f"{command}: port {port} is none of the README's servers ({sorted(ports)})")
        if "curl" in command.text and command.expected is None and not ASSIGNMENT.match(command.text):
            problems.append(f"{command}: a curl command without its answer (`# ` lines below it)")
        if command.expected is not None and is_simple_curl(command.text):
            has_status = command.expected.status_line is not None
            if has_status != shows_headers(command.text):
                problems.append(f"{command}: the answer shows a status line exactly when the command has -i")
    return problems


# --- matching -------------------------------------------------------------------------------


def wildcard(expected: str, actual: str) -> bool:
    """`…` matches any text (also none)."""
    pattern = ".*?".join(re.escape(piece) for piece in expected.split(ANY))
    return re.fullmatch(pattern, actual, re.S) is not None


def expected_json(text: str) -> Any:
    """Parse a README's JSON, where a bare `…` is any value, further keys or further items."""
    out: list[str] = []
    stack: list[str] = []  # per open container: "key", "value" (in an object) or "item" (in a list)
    in_string = escaped = False
    for char in text:
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "{":
            stack.append("key")
        elif char == "[":
            stack.append("item")
        elif char in "}]" and stack:
            stack.pop()
        elif char == ":" and stack:
            stack[-1] = "value"
        elif char == "," and stack and stack[-1] == "value":
            stack[-1] = "key"
        if char == ANY:
            where = stack[-1] if stack else "value"
            out.append({"key": json.dumps(REST) + ": null", "item": json.dumps(REST), "value": json.dumps(ANY)}[where])
        else:
            out.append(char)
    return json.loads("".join(out))


def json_mismatches(expected: Any, actual: Any, path: str = "$") -> list[str]:
    if isinstance(expected, str) and ANY in expected:
        if expected == ANY or (isinstance(actual, str) and wildcard(expected, actual)):
            return []
        return [f"{path}: {actual!r} does not match {expected!r}"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        keys = [key for key in expected if key != REST]
        problems = [f"{path}: key {key!r} is missing" for key in keys if key not in actual]
        if REST not in expected:
            problems += [f"{path}: key {key!r} is not in the README" for key in actual if key not in expected]
        for key in keys:
            if key in actual:
                problems += json_mismatches(expected[key], actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {actual!r}"]
        rest = bool(expected) and expected[-1] == REST
        items = expected[:-1] if rest else expected
        if REST in items:
            raise ValueError(f"{path}: a bare … in a list goes last")
        if len(actual) < len(items) or (not rest and len(actual) != len(items)):
            return [f"{path}: {len(actual)} items, the README shows {len(items)}{' or more' if rest else ''}"]
        problems = []
        for index, item in enumerate(items):
            problems += json_mismatches(item, actual[index], f"{path}[{index}]")
        return problems
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    same_kind = type(expected) is type(actual) or (number(expected) and number(actual))
    return [] if same_kind and expected == actual else [f"{path}: {actual!r} is not {expected!r}"]


def body_mismatches(expected: str, actual: str) -> list[str]:
    """JSON against JSON with wildcards when both parse; else text with wildcards, any whitespace alike."""
    try:
        wanted = expected_json(expected)
    except ValueError:
        wanted = None
    if wanted is not None:
        try:
            got = json.loads(actual)
        except ValueError:
            return [f"the README shows JSON, the answer is not JSON: {actual[:500]!r}"]
        return json_mismatches(wanted, got)
    if wildcard(" ".join(expected.split()), " ".join(actual.split())):
        return []
    return [f"the text {actual[:1000]!r} does not match {expected!r}"]


@dataclass
class Answer:
    status_line: str | None
    headers: list[tuple[str, str]]
    body: str


def split_response(output: str) -> Answer:
    """curl -i's output: the status line, headers, a blank line, the body."""
    head, _, body = output.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines[1:])]
    return Answer(lines[0], headers, body)


def answer_mismatches(expected: Expected, answer: Answer) -> list[str]:
    """Everything about a simple curl command's answer that differs from the README's."""
    problems = []
    assert answer.status_line is not None
    if expected.status_line is not None:
        if not wildcard(expected.status_line, answer.status_line):
            problems.append(f"status {answer.status_line!r}, the README shows {expected.status_line!r}")
    elif not re.match(r"HTTP/[\d.]+ 2\d\d\b", answer.status_line):
        problems.append(f"status {answer.status_line!r}: a README answer without a status line means success")
    for name, value in expected.headers:
        values = [v for n, v in answer.headers if n.lower() == name.lower()]
        if not any(wildcard(value, v) for v in values):
            problems.append(f"header {name}: {values or 'absent'}, the README shows {value!r}")
    if expected.body is not None:
        problems += body_mismatches(expected.body, answer.body)
    return problems


# --- running --------------------------------------------------------------------------------


@dataclass
class Service:
    """A real process the README starts (backworks run, backworks demo-backend)."""

    argv: list[str]
    log: Path
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    ready_text: str | None = None  # wait for this in the log as well as for the port
    process: subprocess.Popen | None = None

    def start(self) -> Service:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env={**os.environ, **self.env}, start_new_session=True)
        try:
            if self.port is not None:
                wait_for_port(self.port, timeout=30, process=self.process)
            if self.ready_text is not None:
                wait_for_text(self.log, self.ready_text, timeout=30)
        except Exception as exc:
            raise RuntimeError(f"{' '.join(self.argv)} did not start ({exc}):\n{self.log.read_text(errors='replace')[-3000:]}") from None
        return self

    def stop(self) -> None:
        stop_process_group(self.process)


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path.name} after {timeout}s")


@dataclass
class Setup:
    """What the README's commands run against: where, with which ports and environment."""

    ports: dict[int, int]  # the README's port -> the test's
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    actions: dict[str, Callable[[], None]] = field(default_factory=dict)  # commands only a person's shell can run
    checks: list[Callable[[], None]] = field(default_factory=list)  # what the commands left behind, checked at the end


def local(text: str, setup: Setup) -> str:
    """The README's host:port as the test's (in commands, and in answers that show them)."""
    return HOST_PORT.sub(lambda m: m.group(0).replace(m.group(1), str(setup.ports.get(int(m.group(1)), m.group(1)))), text)


def shell_text(command: Command, setup: Setup) -> str:
    text = local(command.text, setup)
    text = re.sub(r"(?<![\w/.])\.venv/bin/", f"{BIN}/", text)
    if is_simple_curl(command.text):
        return f"{CURL} -s -i {text[len('curl '):]}"
    return re.sub(r"(^|[\s(|;&])curl(?=\s)", rf"\1{CURL}", text)


def run_commands(commands: list[Command], setup: Setup, state: Path) -> list[str]:
    """Run each command in its own bash, the variables set so far restored; every mismatch, in order."""
    names = sorted({m.group(1) for c in commands if (m := ASSIGNMENT.match(c.text))})
    failures = []
    for command in commands:
        action = setup.actions.get(re.sub(r"\s+#.*$", "", command.text))
        if action is not None:
            action()
            continue
        script = "\n".join([
            "set -o pipefail",
            f'[ -f "{state}" ] && source "{state}"',
            shell_text(command, setup),
            "__status=$?",
            f'declare -p {" ".join(names)} > "{state}" 2>/dev/null' if names else ":",
            "exit $__status",
        ])
        done = subprocess.run(["bash", "-c", script], capture_output=True, cwd=setup.cwd, env={**os.environ, **setup.env}, timeout=60)
        stdout = done.stdout.decode(errors="replace")  # as bytes first: curl -i's CRLFs stay
        problems = [] if done.returncode == 0 else [f"exit status {done.returncode}; stderr: {done.stderr[-1000:].decode(errors='replace')!r}"]
        expected = Expected(tuple(local(line, setup) for line in command.expected.lines)) if command.expected else None
        if expected is None:
            problems += [f"printed {stdout[:500]!r}, the README shows no answer"] if stdout.strip() else []
        elif is_simple_curl(command.text):
            problems += answer_mismatches(expected, split_response(stdout)) if stdout else ["no answer"]
        else:
            problems += body_mismatches("\n".join(expected.lines), stdout)
        if problems:
            failures.append(f"{command}\n    " + "\n    ".join(problems))
    return failures


# --- the READMEs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Readme:
    path: str
    heading: str | None  # only this section's blocks
    starts_with: str  # the start command the README gives (checked to be there)
    start: Callable[[Callable[..., Service], Path], Setup]


def start_demo(service: Callable[..., Service], tmp: Path) -> Setup:
    """./run.sh: the demo backend, then `backworks run blueprints/demo.yaml` (as run.sh's demo())."""
    backend, gateway, admin = free_port(), free_port(), free_port()
    service([str(BIN / "backworks"), "demo-backend", "--port", str(backend), "--name", "demo-backend"], port=backend)
    env = {"DEMO_BACKEND_URL": f"http://127.0.0.1:{backend}", "BACKWORKS_PORT": str(gateway), "BACKWORKS_ADMIN_PORT": str(admin)}
    service([str(BIN / "backworks"), "run", "blueprints/demo.yaml"], env=env, port=gateway, ready_text="backworks: admin listener on")
    return Setup({8080: gateway, 9901: admin})


def start_hello_world(service: Callable[..., Service], tmp: Path) -> Setup:
    gateway = free_port()
    service([str(BIN / "backworks"), "run", "blueprints/hello-world/blueprint.yaml", "--port", str(gateway)], port=gateway, ready_text="backworks: loaded blueprint")
    return Setup({8080: gateway})


def start_hello_world_mitmdump(service: Callable[..., Service], tmp: Path) -> Setup:
    """The README's other way: mitmdump -s backworks.py in mitmproxy's regular mode."""
    gateway = free_port()
    argv = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(gateway), "-s", "backworks.py", "--set", "blueprint=blueprints/hello-world/blueprint.yaml"]
    service(argv, port=gateway, ready_text="backworks: loaded blueprint")
    return Setup({8080: gateway})


def start_proxy_advanced(service: Callable[..., Service], tmp: Path) -> Setup:
    """Three demo backends (the README's jobs %1 to %3), then the gateway with its admin port."""
    backends = []
    env = {"ADMIN_PORT": str(free_port())}
    for number in (1, 2, 3):
        port = free_port()
        backends.append(service([str(BIN / "backworks"), "demo-backend", "--port", str(port), "--name", f"backend-{number}"], port=port))
        env[f"BACKEND_{number}_URL"] = f"http://127.0.0.1:{port}"
    gateway = free_port()
    service([str(BIN / "backworks"), "run", "blueprints/proxy-advanced/blueprint.yaml", "--port", str(gateway)], env=env, port=gateway, ready_text="backworks: admin listener on")
    return Setup({8080: gateway, 9901: int(env["ADMIN_PORT"])}, actions={f"kill %{n}": backends[n - 1].stop for n in (1, 2, 3)})


def start_auth_api(service: Callable[..., Service], tmp: Path) -> Setup:
    """A copy of the example, so that its default users file (data/users.json) starts empty."""
    shutil.copytree(ROOT / "blueprints" / "auth-api", tmp / "blueprints" / "auth-api", ignore=shutil.ignore_patterns("users.json*", "__pycache__"))
    env = {"JWT_SECRET": "readme-test-secret-" + "x" * 40}
    gateway = free_port()
    service([str(BIN / "backworks"), "run", "blueprints/auth-api/blueprint.yaml", "--port", str(gateway)], cwd=tmp, env=env, port=gateway, ready_text="backworks: loaded blueprint")
    return Setup({8080: gateway}, cwd=tmp, env=env)


def start_gateway_quickstart(service: Callable[..., Service], tmp: Path) -> Setup:
    """The README's gateway: the demo backend as the API, `backworks init --proxy`, then run."""
    backend, gateway, admin = free_port(), free_port(), free_port()
    service([str(BIN / "backworks"), "demo-backend", "--port", str(backend), "--name", "demo-backend"], port=backend)
    created = subprocess.run([str(BIN / "backworks"), "init", str(tmp / "my-gateway"), "--proxy", f"http://127.0.0.1:{backend}"], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    argv = [str(BIN / "backworks"), "run", str(tmp / "my-gateway" / "blueprint.yaml"), "--port", str(gateway), "--", "--set", f"backworks_admin=127.0.0.1:{admin}"]
    service(argv, port=gateway, ready_text="backworks: loaded blueprint")
    return Setup({8080: gateway, 3001: backend, 9901: admin})


class Shell:
    """A person's shell for a README's jobs: `CMD &` starts the README's own command (its
    host:ports made the test's, `.venv/bin/` this environment's, and `more` appended: the ports
    it leaves at their defaults), `kill [-INT] %N …` or `kill $!` signals jobs and waits for their end."""

    def __init__(self, service: Callable[..., Service], setup: Setup) -> None:
        self.service, self.setup = service, setup
        self.jobs: list[Service] = []

    def start(self, text: str, more: list[str], **kwargs: Any) -> None:
        """An action for `text` (as the README writes it, `&` included)."""

        def run() -> None:
            words = shlex.split(local(text.replace("\\\n", " "), self.setup).rstrip("& "))
            argv = [str(BIN / word[len(".venv/bin/"):]) if word.startswith(".venv/bin/") else word for word in words]
            self.jobs.append(self.service(argv + more, cwd=self.setup.cwd, env=self.setup.env, **kwargs))

        self.setup.actions[text.rstrip()] = run

    def kill(self, text: str, expect_status: int | None = None) -> None:
        words = text.split()
        signum = signal.SIGINT if "-INT" in words else signal.SIGTERM

        def run() -> None:
            for word in words[1:]:
                if word.startswith("-"):
                    continue
                job = self.jobs[-1] if word == "$!" else self.jobs[int(word.lstrip("%")) - 1]
                assert job.process is not None
                os.killpg(job.process.pid, signum)  # as bash's kill %N: the job's process group
                status = job.process.wait(60)
                if expect_status is not None:
                    assert status == expect_status, f"{text}: exit status {status}:\n{job.log.read_text(errors='replace')[-3000:]}"

        self.setup.actions[text] = run


def start_capture_and_mock(service: Callable[..., Service], tmp: Path) -> Setup:
    """The README's recording: the demo backend, `backworks capture` in front of it, SIGINT, then
    `backworks run captured.yaml` with the backend gone, and mock-from; in `tmp`, on free ports."""
    backend, gateway, admin = free_port(), free_port(), free_port()
    setup = Setup({3001: backend, 8080: gateway}, cwd=tmp)
    shell = Shell(service, setup)
    shell.start(".venv/bin/backworks demo-backend --port 3001 &", ["--port", str(backend), "--name", "demo-backend"], port=backend)
    shell.start(".venv/bin/backworks capture --upstream http://127.0.0.1:3001 -o captured.yaml &", ["--port", str(gateway)], port=gateway, ready_text="loaded blueprint")
    shell.kill("kill -INT %2", expect_status=0)
    shell.kill("kill %1")
    shell.start(".venv/bin/backworks run captured.yaml &", ["--port", str(gateway), "--", "--set", f"backworks_admin=127.0.0.1:{admin}"], port=gateway, ready_text="backworks: loaded blueprint")
    shell.kill("kill $!")

    def written() -> None:
        blueprint = tmp / "captured.yaml"
        assert blueprint.read_text().startswith("# yaml-language-server: $schema=./blueprint.schema.json\n")
        assert (tmp / "blueprint.schema.json").is_file() and (tmp / "openapi.yaml").is_file()

    setup.checks.append(written)
    return setup


def start_mitmweb(service: Callable[..., Service], tmp: Path) -> Setup:
    """The README's mitmweb, headless, on free ports: its UI answers, a request through it works,
    and the flow names the target that answered and carries the decisions."""
    backend, gateway, admin, web = free_port(), free_port(), free_port(), free_port()
    options, headers = mitmweb_options(web)
    env = {"BACKWORKS_ADMIN_PORT": str(admin), "DEMO_BACKEND_URL": f"http://127.0.0.1:{backend}"}  # as start_demo
    setup = Setup({3001: backend, 8080: gateway, 9: 9}, env=env)  # :9, the placeholder, stays
    shell = Shell(service, setup)
    shell.start(".venv/bin/backworks demo-backend --port 3001 &", ["--port", str(backend), "--name", "demo-backend"], port=backend)
    mitmweb = (
        ".venv/bin/mitmweb --mode reverse:http://127.0.0.1:9 --set connection_strategy=lazy --set keep_host_header=true \\\n"
        "    --no-web-open-browser -s backworks.py --set blueprint=blueprints/demo.yaml &"
    )
    shell.start(mitmweb, ["--listen-host", "127.0.0.1", "--listen-port", str(gateway), *options], port=gateway, ready_text="backworks: loaded blueprint")
    shell.kill("kill %2 %1")
    assert "backworks run" in (ROOT / "README.md").read_text()

    def before_stop() -> None:
        wait_for_port(web, timeout=30)
        page = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{web}/", *sum((["-H", f"{k}: {v}"] for k, v in headers.items()), [])], capture_output=True, text=True, timeout=30)
        assert page.stdout == "200", page.stdout
        flows = json.loads(subprocess.run([CURL, "-s", f"http://127.0.0.1:{web}/flows", *sum((["-H", f"{k}: {v}"] for k, v in headers.items()), [])], capture_output=True, timeout=30).stdout)
        proxied = [f for f in flows if f.get("request", {}).get("path") == "/api/users/2"]
        assert proxied, flows
        flow = proxied[0]
        assert (flow["request"]["port"], flow["request"]["host"]) == (backend, "127.0.0.1")  # the target that answered
        assert "target=demo-backend" in flow["comment"] and "handler=proxy" in flow["comment"]
        assert any(k.lower() == "host" and v == f"127.0.0.1:{gateway}" for k, v in flow["request"]["headers"])  # as the client sent it
        refused = [f for f in flows if f.get("request", {}).get("path") == "/nothing-here"]
        assert refused and refused[0]["marked"] and "no endpoint" in refused[0]["comment"]  # ⚠ in the list

    kill_both = setup.actions["kill %2 %1"]

    def check_then_kill() -> None:
        before_stop()
        kill_both()

    setup.actions["kill %2 %1"] = check_then_kill
    return setup


READMES = [
    Readme("README.md", "A gateway in front of your API", ".venv/bin/backworks init my-gateway --proxy http://127.0.0.1:3001", start_gateway_quickstart),
    Readme("README.md", "Set-up: two commands", "./run.sh", start_demo),
    Readme("README.md", "Mocks from recorded traffic", ".venv/bin/backworks capture --upstream http://127.0.0.1:3001 -o captured.yaml &", start_capture_and_mock),
    Readme("README.md", "Debugging in mitmweb", ".venv/bin/mitmweb --mode reverse:http://127.0.0.1:9", start_mitmweb),
    Readme("blueprints/README.md", "How the commands are written", "./run.sh", start_demo),  # the index's example
    Readme("blueprints/hello-world/README.md", None, ".venv/bin/backworks run blueprints/hello-world/blueprint.yaml", start_hello_world),
    Readme("blueprints/hello-world/README.md", None, ".venv/bin/mitmdump -s backworks.py --set blueprint=blueprints/hello-world/blueprint.yaml", start_hello_world_mitmdump),
    Readme("blueprints/proxy-advanced/README.md", None, ".venv/bin/backworks run blueprints/proxy-advanced/blueprint.yaml", start_proxy_advanced),
    Readme("blueprints/auth-api/README.md", None, ".venv/bin/backworks run blueprints/auth-api/blueprint.yaml", start_auth_api),
]


def readme_id(readme: Readme) -> str:
    way = readme.starts_with.split()[0].rsplit("/", 1)[-1]
    if readme.path == "README.md":
        return f"{readme.path}:{readme.heading}"
    return readme.path if readme.path != "blueprints/hello-world/README.md" else f"{readme.path}:{way}"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(argv: list[str], **kwargs: Any) -> Service:
        name = Path(argv[0]).name + "-" + "-".join(a for a in argv[1:3] if not a.startswith("-")).replace("/", "_")
        service = Service(argv, tmp_path / f"{name}-{len(started)}.log", **kwargs)
        started.append(service)
        return service.start()

    yield start
    for service in reversed(started):
        service.stop()


@pytest.mark.parametrize("readme", READMES, ids=readme_id)
def test_readme_commands_answer_as_shown(readme: Readme, services: Callable[..., Service], tmp_path: Path) -> None:
    if not Path(CURL).exists():
        message = f"{CURL} is not installed (Debian package curl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    text = (ROOT / readme.path).read_text()
    assert readme.starts_with in text, f"{readme.path} no longer says to start with {readme.starts_with!r}"
    commands = parse_commands(text, readme.heading)
    assert sum(c.expected is not None for c in commands) >= 2, f"{readme.path}: too few commands with answers"
    setup = readme.start(services, tmp_path)
    assert not (problems := lint(commands, setup.ports)), f"{readme.path}:\n" + "\n".join(problems)
    unstarted = [c for c in commands if c.text.rstrip().endswith("&") and c.text.rstrip() not in setup.actions]
    assert not unstarted, f"{readme.path}: background jobs the test does not start: {unstarted}"
    failures = run_commands(commands, setup, tmp_path / "shell-variables.sh")
    assert not failures, f"{readme.path}: {len(failures)} of {len(commands)} commands answer otherwise than shown:\n" + "\n".join(failures)
    for check in setup.checks:
        check()


def test_every_readme_with_curl_commands_is_tested() -> None:
    """A new example's README joins READMES above, or its commands would go unchecked."""
    tested = {readme.path for readme in READMES}
    with_curl = {str(p.relative_to(ROOT)) for p in ROOT.glob("blueprints/**/README.md") if re.search(r"^\s*curl ", p.read_text(), re.M)}
    assert with_curl <= tested
    for path, heading in {(r.path, r.heading) for r in READMES}:  # no curl command hides outside the blocks the test reads
        text = (ROOT / path).read_text()
        parsed = "\n".join(c.text for c in parse_commands(text, heading))
        stray = [line.strip() for line in sections(text, heading).splitlines() if re.match(r"\s*(\S+=\$\()?curl ", line) and line.strip() not in parsed]
        assert not stray, f"{path}: curl commands outside ```sh blocks: {stray}"


def test_the_examples_index_lists_every_example() -> None:
    index = (ROOT / "blueprints" / "README.md").read_text()
    examples = [p.parent.name + "/" for p in ROOT.glob("blueprints/*/blueprint.yaml")] + [p.name for p in ROOT.glob("blueprints/*.yaml")]
    assert examples and all(example in index for example in examples), examples
    for link in re.findall(r"\]\(([^)#]+)\)", index):
        if not link.startswith("http"):
            assert (ROOT / "blueprints" / link).exists(), link


# --- the matcher itself: it must be able to say no ------------------------------------------


def test_json_wildcards() -> None:
    assert body_mismatches('{"id": 1, "name": "Ada", …}', '{"id": 1, "name": "Ada", "email": "a@x"}') == []
    assert body_mismatches('{"time": "…T…Z", "items": [{"id": 1, …}, …]}', '{"time": "2026-01-01T00:00:00Z", "items": [{"id": 1, "x": 2}, {"id": 2}]}') == []
    assert body_mismatches('{"id": …}', '{"id": {"deep": [1]}}') == []
    assert body_mismatches('{"id": 1}', '{"id": 1, "extra": true}') == ["$: key 'extra' is not in the README"]
    assert body_mismatches('{"id": 1, …}', '{"id": 2}') == ["$.id: 2 is not 1"]
    assert body_mismatches('{"a": [1, …]}', '{"a": []}') == ["$.a: 0 items, the README shows 1 or more"]
    assert body_mismatches('{"t": "…Z"}', '{"t": "2026"}') == ["$.t: '2026' does not match '…Z'"]
    assert body_mismatches('{"n": 1}', '{"n": true}') == ["$.n: True is not 1"]
    assert body_mismatches('{"a": 1}', "not json") != []


def test_text_and_answer_matching() -> None:
    assert body_mismatches("backend-2 backend-1 …", "backend-2\nbackend-1\nbackend-3\n") == []
    assert body_mismatches("backend-2 backend-1", "backend-2\nbackend-3\n") != []
    expected = Expected(("HTTP/1.1 404 Not Found", "X-A: b…", ANY, "", '{"status": 404, …}'))
    answer = split_response('HTTP/1.1 404 Not Found\r\nx-a: bc\r\nY: z\r\n\r\n{"status": 404, "id": "q"}')
    assert answer_mismatches(expected, answer) == []
    assert answer_mismatches(Expected(("HTTP/1.1 200 OK",)), answer) == ["status 'HTTP/1.1 404 Not Found', the README shows 'HTTP/1.1 200 OK'"]
    assert answer_mismatches(Expected(('{"status": 404, …}',)), answer)[0].startswith("status 'HTTP/1.1 404 Not Found': a README answer without")
    assert answer_mismatches(Expected(("HTTP/1.1 404 Not Found", "X-A: c")), answer) == ["header X-A: ['bc'], the README shows 'c'"]


def test_parser_reads_commands_answers_and_refuses_stray_notes() -> None:
    readme = "\n".join([
        "Try:", "", "```sh", "curl -i http://127.0.0.1:8080/a \\", "     -H 'X: y'", "# HTTP/1.1 200 OK", "#", "# {}", "",
        "T=$(curl -s http://127.0.0.1:8080/t)", "curl http://127.0.0.1:8080/b", "# […]", "```",
    ])
    first, second, third = parse_commands(readme)
    assert (first.line, first.text, first.expected) == (4, "curl -i http://127.0.0.1:8080/a \\\n     -H 'X: y'", Expected(("HTTP/1.1 200 OK", "", "{}")))
    assert (second.expected, third.expected.body if third.expected else None) == (None, "[…]")
    assert is_simple_curl(first.text) and not is_simple_curl(second.text) and shows_headers(first.text)
    assert lint([first, second, third], {8080: 1}) == []
    assert lint([third], {8081: 1}) != []
    with pytest.raises(ValueError, match="follows no command"):
        parse_commands("```sh\ncurl http://127.0.0.1:8080/\n\n# stray\n```")
