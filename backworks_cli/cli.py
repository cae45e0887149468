"""The `backworks` command: validate, schema, reference, init, run, capture, mock-from, demo-backend."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import TypeAlias

from backworks_core import __version__
from backworks_core.diagnostics import BlueprintError
from backworks_core.plugins import Plugin, PluginRegistry


def _registry_and_plugins() -> tuple[PluginRegistry, dict[str, Plugin]]:
    from addons import builtin_plugins

    registry = PluginRegistry.discover(builtin_plugins())
    return registry, {name: plugin() for name, plugin in registry.plugins.items()}


def cmd_validate(args: argparse.Namespace) -> int:
    from backworks_core.compiler import compile_blueprint

    from addons.dashboard import status_page_endpoints

    registry, plugins = _registry_and_plugins()
    status = 0
    for file in args.files:
        try:
            gateway = compile_blueprint(file, registry, plugins, pages=[status_page_endpoints])
        except BlueprintError as exc:
            for diagnostic in exc.diagnostics:
                print(diagnostic, file=sys.stderr)
            count = len(exc.diagnostics)
            print(f"{file}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
            status = 1
            continue
        for warning in gateway.warnings:
            print(warning, file=sys.stderr)
        settings = gateway.blueprint.settings
        warned = f", {len(gateway.warnings)} warning(s)" if gateway.warnings else ""
        print(f"{file}: OK: {settings.name!r}, {len(gateway.blueprint.endpoints)} endpoint(s){warned}")
    return status


def http_url(value: str) -> str:
    """An argparse type: an http(s) URL with a host (the API a gateway goes to)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http(s) URL such as http://127.0.0.1:3001, got {value!r}")
    return value


def worker_count(value: str) -> int:
    """An argparse type: --workers N, 1 to 64."""
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of processes from 1 to 64, got {value!r}")
    return int(value)


def cmd_schema(args: argparse.Namespace) -> int:
    from backworks_core.schema import blueprint_json_schema

    registry, _ = _registry_and_plugins()
    text = json.dumps(blueprint_json_schema(registry), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from backworks_cli.reference import REGENERATE, render

    text = render()
    if args.check:
        try:
            committed = Path(args.check).read_text(encoding="utf-8")
        except OSError as exc:
            print(f"backworks reference: cannot read {args.check}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if committed != text:
            print(f"{args.check} is out of date: run {REGENERATE.replace('docs/configuration.md', args.check)}", file=sys.stderr)
            return 1
        print(f"{args.check} is up to date", file=sys.stderr)
        return 0
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.directory)
    if target.exists() and not target.is_dir():
        print(f"backworks init: {target} is a file; choose a new directory", file=sys.stderr)
        return 2
    if target.exists() and any(target.iterdir()):
        print(f"backworks init: {target} exists and is not empty; choose a new directory", file=sys.stderr)
        return 2
    source = resources.files("backworks_core") / "scaffold"
    with resources.as_file(source) as scaffold:
        shutil.copytree(scaffold, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    if args.proxy:
        (target / "blueprint.yaml").write_text(gateway_blueprint(args.proxy))
        (target / "README.md").write_text(GATEWAY_README.format(url=args.proxy))
        shutil.rmtree(target / "handlers", ignore_errors=True)
    # The editor modeline at the top of blueprint.yaml names this file (YAML language servers:
    # VS Code's YAML extension, JetBrains IDEs, Neovim's yamlls): completion and checks while typing.
    from backworks_core.schema import blueprint_json_schema

    registry, _ = _registry_and_plugins()
    (target / "blueprint.schema.json").write_text(json.dumps(blueprint_json_schema(registry), indent=2) + "\n")
    print(f"created a {'gateway in front of ' + args.proxy if args.proxy else 'starter project'} in {target}/")
    print("next:")
    print(f"  backworks validate {target}/blueprint.yaml")
    print(f"  backworks run {target}/blueprint.yaml")
    print("  curl http://127.0.0.1:8080/" + ("" if args.proxy else "hello"))
    print("your editor completes and checks blueprint.yaml with blueprint.schema.json (see its first line)")
    return 0


GATEWAY_BLUEPRINT = """\
# yaml-language-server: $schema=./blueprint.schema.json
# A gateway in front of {url}. Check it with `backworks validate blueprint.yaml`, serve it with
# `backworks run blueprint.yaml`; edits are picked up while it runs. Every request goes on to the
# API; add endpoints above the catch-all to answer some paths yourself, and middlewares (auth,
# rate_limit, cors, transform) to guard them. The status page: http://127.0.0.1:9901/__backworks
name: gateway
version: "0.1.0"
description: A gateway in front of {url}

server:
  host: 127.0.0.1
  port: 8080

plugins:
  proxy:
    config:
      targets:
        - {{name: api, url: "{url}"}}
      health_check: {{path: /, interval: 10s}}

endpoints:
  - path: /{{rest:path}}
    method: ANY
    handler: proxy
    description: everything else goes on to the API (the root `/` included)
"""


GATEWAY_README = """\
# gateway

A Backworks gateway in front of {url}.

    backworks validate blueprint.yaml
    backworks run blueprint.yaml           # or: backworks run --web blueprint.yaml (mitmweb)
    curl -i http://127.0.0.1:8080/         # goes on to {url}/

The status page (targets, rates, recent errors) is at http://127.0.0.1:9901/__backworks.
Edit `blueprint.yaml` while it runs: add endpoints above the catch-all to answer some paths
yourself (`handler: static`, `mock`, a Python file), and middlewares to guard them (`auth`,
`rate_limit`, `cors`, `transform`). An invalid edit is refused and the previous version keeps
serving. Your editor checks the file with `blueprint.schema.json` (its first line says so).
"""


def gateway_blueprint(url: str) -> str:
    return GATEWAY_BLUEPRINT.format(url=url)


def addon_script() -> Path:
    """backworks.py, the script mitmproxy loads: beside this package in a clone (or an editable
    install), else the installed top-level module's file (found, not imported: importing it
    would build every addon in this process)."""
    script = Path(__file__).resolve().parent.parent / "backworks.py"
    if script.exists():
        return script
    spec = importlib.util.find_spec("backworks")
    if spec is None or spec.origin is None:
        raise SystemExit("backworks: backworks.py (the addon script) is not installed beside this command; reinstall Backworks")
    return Path(spec.origin)


def mitmproxy_tool(name: str) -> str:
    """mitmdump/mitmweb from the same environment as this Python, else from PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"backworks run: {name} not found; install mitmproxy in this environment")
    return found


def run_arguments(args: argparse.Namespace, host: str, port: int, tls_cert: str | None) -> list[str]:
    script = addon_script()
    tool = mitmproxy_tool("mitmweb" if args.web else "mitmdump")
    command = [
        tool,
        "--mode", f"reverse:{args.upstream}",
        "--listen-host", host,
        "--listen-port", str(port),
        "-s", str(script),
        "--set", f"blueprint={args.file}",
        "--set", "connection_strategy=lazy",
        "--set", "keep_host_header=true",
    ]
    if tls_cert:
        command += ["--certs", f"*={tls_cert}"]
    if args.web:
        command += ["--set", "web_open_browser=false"]
    else:
        command += ["--flow-detail", str(args.flow_detail)]
    return command + list(args.extra)


def cmd_run(args: argparse.Namespace) -> int:
    from backworks_core.loader import load_blueprint

    registry, _ = _registry_and_plugins()
    try:
        blueprint = load_blueprint(args.file, registry)
    except BlueprintError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    server = blueprint.settings.server
    host = args.host or server.host
    port = args.port or server.port
    tls = server.tls.cert if server.tls else None
    command = run_arguments(args, host, port, tls)
    taken = port_taken(host, port)
    if taken is not None:
        print(
            f"backworks run: {host}:{port} is already in use ({taken}); stop what listens there, "
            f"or serve on another port: --port N, or server.port in the blueprint",
            file=sys.stderr,
        )
        return 1
    scheme = "https" if tls else "http"
    print(f"backworks: serving {blueprint.settings.name!r} on {scheme}://{host}:{port}", file=sys.stderr, flush=True)
    if args.workers > 1:  # N processes on one port (SO_REUSEPORT), supervised: docs/scaling.md
        from backworks_cli.supervisor import run_workers

        return run_workers(command, args.workers, blueprint, args.extra, blueprint_path=args.file)
    os.execv(command[0], command)
    return 0  # not reached


def port_taken(host: str, port: int) -> str | None:
    """Why mitmdump could not listen on host:port, found before it starts (mitmproxy would print
    its own hint and exit with 1 after our "serving" line); None when the port is free."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return None  # mitmproxy reports an address it cannot resolve itself
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mitmproxy binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "another process listens there"
            if exc.errno == errno.EACCES:
                return "permission denied: ports below 1024 need privileges"
            return None
    return None


def absolute_name(path: str) -> Path:
    """`path` made absolute with its folder resolved but not its last part: a symlink planted at
    an output's name is replaced when the output is written, never followed to its target."""
    given = Path(path)
    return given.parent.resolve() / given.name


def capture_blueprint(args: argparse.Namespace, output: Path) -> str:
    """The blueprint `backworks capture` runs: everything passes through, the capture plugin records."""
    import yaml

    capture: dict[str, object] = {"output": str(output), "format": args.format, "max_examples": args.max_examples, "api_name": args.name or output.stem}
    if args.journal:
        capture["journal"] = str(absolute_name(args.journal))
    for key in ("include", "methods", "hosts"):
        if getattr(args, key):
            capture[key] = getattr(args, key)
    capture["exclude"] = [*(args.exclude or []), "/__backworks/capture"]  # its own status endpoint
    capture["redact"] = {"enabled": not args.no_redact, "headers": args.redact_header or [], "fields": args.redact_field or []}
    capture["log_flows"] = True  # mitmdump's own flow lines are off: they would show query secrets
    if getattr(args, "match_header", None):
        capture["match_headers"] = match_headers(args)
    blueprint = {
        "name": args.name or "captured-api",
        "description": "generated by `backworks capture`: every request passes through and is recorded",
        "server": {"unmatched": "passthrough", "passthrough_path": "as_sent"},  # records what clients really send
        "dashboard": {"enabled": False},
        "plugins": {"capture": {"config": capture}},
        "endpoints": [
            {
                "path": "/__backworks/capture",
                "handler": "static",
                "description": "where this capture writes",
                "config": {"static": {"body": {"capturing_to": str(output), "format": args.format}}},
            }
        ],
    }
    return yaml.safe_dump(blueprint, sort_keys=False)


def cmd_capture(args: argparse.Namespace) -> int:
    from backworks_core.files import private_folder, write_private

    output = absolute_name(args.output)
    if not output.parent.is_dir():
        print(f"backworks capture: the folder of {args.output} does not exist", file=sys.stderr)
        return 2
    script = addon_script()
    tool = mitmproxy_tool("mitmweb" if args.web else "mitmdump")
    journal = args.journal or f"{output}.jsonl"
    how = f"a reverse proxy in front of {args.upstream}" if args.upstream else "a regular HTTP(S) proxy (point your client's proxy setting at it)"
    # The generated blueprint lives in a fresh private folder (mkdtemp: 0700, a random name), never
    # at a predictable path of the shared temporary directory, where another local user could
    # plant a file or a symlink that the gateway would load (and hot-reload). mitmdump runs as a
    # child, not in place of this process, so that the folder is removed when it exits.
    folder = private_folder("backworks-capture-")
    try:
        blueprint = folder / "capture.yaml"
        write_private(blueprint, capture_blueprint(args, output))
        command = [tool, "--listen-host", args.host, "--listen-port", str(args.port), "-s", str(script), "--set", f"blueprint={blueprint}"]
        if args.upstream:
            command += ["--mode", f"reverse:{args.upstream}", "--set", "connection_strategy=lazy", "--set", "keep_host_header=true"]
        if args.web:
            command += ["--set", "web_open_browser=false"]
        else:  # mitmdump's flow lines show query strings as sent; the capture plugin logs them redacted
            command += ["--set", "flow_detail=0"]
        print(
            f"backworks capture: {how} on {args.host}:{args.port}\n"
            f"  every flow is written to {journal} as it completes; Ctrl-C stops and writes {output} ({args.format})",
            file=sys.stderr,
            flush=True,
        )
        return run_child(command + list(args.extra))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_child(command: list[str]) -> int:
    """Run `command` to its end with this process's terminal; SIGINT, SIGTERM and SIGHUP sent to
    this process are passed on to it (a Ctrl-C reaches both: mitmproxy's second one is harmless).
    Returns its exit status (128 + the signal's number when a signal ended it)."""
    import signal
    import subprocess

    child = subprocess.Popen(command)
    forwarded = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        status = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:  # this process is being torn down: never leave the proxy behind
            child.terminate()
            child.wait(30)
    return 128 - status if status < 0 else status


def match_headers(args: argparse.Namespace) -> list[str]:
    """The default headers a mock matches on, and those of `--match-header`."""
    from backworks_core.capture.build import MATCH_HEADERS

    return list(dict.fromkeys([*MATCH_HEADERS, *(name.lower() for name in args.match_header or [])]))


def cmd_mock_from(args: argparse.Namespace) -> int:
    from backworks_core.capture.build import BuildInputError, write_output
    from backworks_core.capture.redact import RedactionRules

    rules = RedactionRules.build(not args.no_redact, args.redact_header or [], args.redact_field or [])
    try:
        summary = write_output(
            args.inputs,
            args.output,
            args.format,
            name=args.name or Path(args.output).stem,
            max_examples=args.max_examples,
            rules=rules,
            progress=sys.stderr,
            match_headers=match_headers(args),
            registry=_registry_and_plugins()[0],
        )
    except BuildInputError as exc:
        print(f"backworks mock-from: {exc}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def cmd_demo_backend(args: argparse.Namespace) -> int:
    from backworks_core.demo_backend import run

    return run(args.host, args.port, args.name or f"backend-{args.port}")


Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers` returns: each `_add_*` below adds one subcommand's parser to it."""


def _add_validate(sub: Subcommands) -> None:
    """`backworks validate FILE...`"""
    validate = sub.add_parser("validate", help="check blueprints; exit 1 on any error")
    validate.add_argument("files", nargs="+", metavar="FILE", help="blueprint files; every error of each is printed as file:line:col: key.path: message")
    validate.set_defaults(func=cmd_validate)


def _add_schema(sub: Subcommands) -> None:
    """`backworks schema [-o FILE]`"""
    schema = sub.add_parser("schema", help="print the blueprint JSON Schema (for editors)")
    schema.add_argument("-o", "--output", help="write to this file instead of stdout")
    schema.set_defaults(func=cmd_schema)


def _add_reference(sub: Subcommands) -> None:
    """`backworks reference [-o FILE | --check FILE]`"""
    reference = sub.add_parser("reference", help="print the configuration reference (Markdown), generated from the models")
    reference.add_argument("-o", "--output", help="write to this file instead of stdout")
    reference.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the generated reference")
    reference.set_defaults(func=cmd_reference)


def _add_init(sub: Subcommands) -> None:
    """`backworks init DIR [--proxy URL]`"""
    init = sub.add_parser("init", help="create a starter project that runs (or, with --proxy, a gateway in front of an API)")
    init.add_argument("directory", help="a new (or empty) folder for blueprint.yaml, its handlers and blueprint.schema.json")
    init.add_argument("--proxy", metavar="URL", type=http_url, help="scaffold a gateway: every request goes on to this API (e.g. http://127.0.0.1:3001)")
    init.set_defaults(func=cmd_init)


def _add_run(sub: Subcommands) -> None:
    """`backworks run FILE [--workers N] [-- mitmdump args]`"""
    run = sub.add_parser(
        "run",
        help="serve a blueprint with mitmdump in reverse mode (or mitmweb with --web)",
        epilog="Arguments after `--` go to mitmdump/mitmweb as they are.",
    )
    run.add_argument("file", metavar="FILE", help="the blueprint to serve; it is watched and reloaded when it or a handler file changes")
    run.add_argument("--web", action="store_true", help="start mitmweb instead of mitmdump")
    run.add_argument("--host", help="listen address (default: server.host)")
    run.add_argument("--port", type=int, help="listen port (default: server.port)")
    run.add_argument(
        "--upstream",
        default="http://127.0.0.1:9",
        help="where requests no endpoint matches go when server.unmatched is passthrough; the default, "
        "http://127.0.0.1:9 (the discard port), is mitmproxy's placeholder: nothing listens there, so they get a 502",
    )
    run.add_argument("--flow-detail", type=int, default=1, help="mitmdump's --flow-detail (default 1)")
    run.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="serve with N mitmdump processes sharing the port (Linux, SO_REUSEPORT), supervised: a worker "
        "that dies is replaced; default 1: one mitmdump in place of this command (docs/scaling.md)",
    )
    run.set_defaults(func=cmd_run, extra=[])


def _add_capture_options(command: argparse.ArgumentParser) -> None:
    """The options `capture` and `mock-from` share: what to write and what to redact."""
    command.add_argument("--format", choices=["blueprint", "openapi", "har"], default="blueprint", help="what to write (default: blueprint)")
    command.add_argument("--name", help="the API's name in the output")
    command.add_argument("--max-examples", type=int, default=5, help="answers shown per endpoint: inline in a blueprint (the rest in OUTPUT.data/), examples in OpenAPI (default 5)")
    command.add_argument("--match-header", action="append", metavar="NAME", help="another request header mocks match on where it changed the answer (repeatable)")
    command.add_argument("--no-redact", action="store_true", help="keep credentials and token-like values (never share the output then)")
    command.add_argument("--redact-header", action="append", metavar="NAME", help="another header to redact (repeatable)")
    command.add_argument("--redact-field", action="append", metavar="NAME", help="another JSON/form field or query parameter to redact (repeatable)")


def _add_capture(sub: Subcommands) -> None:
    """`backworks capture -o OUTPUT [--upstream URL] [-- mitmdump args]`"""
    capture = sub.add_parser(
        "capture",
        help="record real traffic through mitmdump and write it as mocks, OpenAPI or HAR",
        epilog="Arguments after `--` go to mitmdump/mitmweb as they are.",
    )
    capture.add_argument("-o", "--output", required=True, help="the file to write at the end (e.g. captured.yaml)")
    capture.add_argument("--upstream", help="reverse mode in front of this URL; without it, a regular proxy")
    capture.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    capture.add_argument("-p", "--port", type=int, default=8080, help="listen port (default 8080)")
    capture.add_argument("--journal", help="the JSON-lines record of every flow (default: OUTPUT.jsonl)")
    capture.add_argument("--include", action="append", metavar="GLOB", help="record only these paths (repeatable)")
    capture.add_argument("--exclude", action="append", metavar="GLOB", help="never record these paths (repeatable)")
    capture.add_argument("--methods", action="append", metavar="METHOD", help="record only these methods (repeatable)")
    capture.add_argument("--hosts", action="append", metavar="GLOB", help="record only these hosts (repeatable)")
    capture.add_argument("--web", action="store_true", help="start mitmweb instead of mitmdump")
    _add_capture_options(capture)
    capture.set_defaults(func=cmd_capture)


def _add_mock_from(sub: Subcommands) -> None:
    """`backworks mock-from INPUT... -o OUTPUT`"""
    mock_from = sub.add_parser("mock-from", help="turn mitmproxy flow files, HAR files or capture journals into mocks, OpenAPI or HAR")
    mock_from.add_argument("inputs", nargs="+", metavar="INPUT", help="mitmproxy flow files (-w), HAR files (browsers, mitmproxy's savehar) or capture journals (.jsonl); the kind is read from the content")
    mock_from.add_argument("-o", "--output", required=True, help="the file to write: a blueprint (.yaml), OpenAPI (with --format openapi) or HAR (--format har)")
    _add_capture_options(mock_from)
    mock_from.set_defaults(func=cmd_mock_from)


def _add_demo_backend(sub: Subcommands) -> None:
    """`backworks demo-backend [--port N]`"""
    demo = sub.add_parser("demo-backend", help="start a small upstream API for demos and examples")
    demo.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=3001, help="listen port (default 3001)")
    demo.add_argument("--name", help="name shown in every answer (default: backend-PORT)")
    demo.set_defaults(func=cmd_demo_backend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backworks", description="Declarative API gateway and mock server on mitmproxy.")
    parser.add_argument("--version", action="version", version=f"backworks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_validate, _add_schema, _add_reference, _add_init, _add_run, _add_capture, _add_mock_from, _add_demo_backend):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after `--` is for mitmproxy
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if extra and args.command not in ("run", "capture"):
        build_parser().error("arguments after `--` are only for `backworks run` and `backworks capture`")
    args.extra = extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
