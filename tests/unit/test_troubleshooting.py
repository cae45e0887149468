"""docs/troubleshooting.md is made of real messages: each quoted one is produced here by its code path.

Every `### ` entry of the page quotes one or more messages in ```text blocks. Each entry has a case
below, registered under the entry's title, that makes the real code produce the message (a
blueprint loaded by the real loader, a request sent through a compiled gateway, an addon
configured under mitmproxy's taddons, a CLI function run) and returns what was printed, one
string per quoted block. A quoted `<placeholder>` matches any text; everything else must match
exactly. An entry without a case, or a case without an entry, fails the suite: the page cannot
gain a message that nothing proves.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import sys
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from mitmproxy import exceptions
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tflow

from addons import builtin_plugins
from addons.auth import AuthConfig, issue_token
from addons.capture import CapturePlugin
from addons.core import Backworks
from addons.dashboard import status_page_endpoints
from addons.health import CheckTarget, HealthChecker, HealthCheckConfig, http_probe
from addons.proxy import ProxyPlugin
from addons.rate_limit import RedisBuckets, StoreUnavailable
from backworks_cli import cli
from backworks_core.diagnostics import BlueprintError
from backworks_core.compiler import compile_blueprint
from backworks_core.gateway import Gateway
from backworks_core.plugins import PluginRegistry

from .conftest import make_flow

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"
CLOSED = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once


# --------------------------------------------------------------------------------------
# Reading the page


ENTRY = re.compile(r"^### (.+)$", re.M)
BLOCK = re.compile(r"^```text\n(.*?)\n```$", re.M | re.S)
PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9_ .-]*>")


def doc_entries(text: str) -> dict[str, list[str]]:
    """Entry title -> the messages its ```text blocks quote, in order."""
    entries: dict[str, list[str]] = {}
    heads = list(ENTRY.finditer(text))
    for head, following in zip(heads, [*heads[1:], None]):
        body = text[head.end() : following.start() if following else len(text)]
        title = head.group(1).strip()
        assert title not in entries, f"two entries are titled {title!r}"
        entries[title] = BLOCK.findall(body)
    return entries


def message_pattern(quoted: str) -> re.Pattern[str]:
    """The quoted message as a regex: `<placeholders>` match any text, the rest is literal."""
    parts = PLACEHOLDER.split(quoted)
    return re.compile("(?:.+?)".join(re.escape(part) for part in parts), re.S)


def quoted_lines_blocks() -> list[str]:
    """Every ```text block of the page (entries or not)."""
    return BLOCK.findall(DOC.read_text())


# --------------------------------------------------------------------------------------
# What a case gets, and helpers that run the real code


@dataclass
class Env:
    root: Path
    caplog: pytest.LogCaptureFixture
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    def write(self, relpath: str, text: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def blueprint(self, text: str) -> Path:
        return self.write("blueprint.yaml", text)

    def logs(self, logger: str, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.name == logger and r.levelno >= level]


Case = Callable[[Env], "list[str] | Awaitable[list[str]]"]
CASES: dict[str, Case] = {}


def case(title: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert title not in CASES, title
        CASES[title] = fn
        return fn

    return register


def registry() -> PluginRegistry:
    return PluginRegistry(builtin_plugins())


def compile_(path: Path, env: dict[str, str] | None = None) -> Gateway:
    """What `backworks validate` and the core addon do: load, validate, compile."""
    reg = registry()
    plugins = {name: plugin() for name, plugin in reg.plugins.items()}
    return compile_blueprint(path, reg, plugins, env={} if env is None else env, pages=[status_page_endpoints])


def errors(env: Env, text: str, *, variables: dict[str, str] | None = None) -> list[str]:
    """The one error of a blueprint, as printed (the case's blueprint holds exactly one mistake)."""
    path = env.blueprint(text)
    with pytest.raises(BlueprintError) as info:
        compile_(path, variables)
    printed = [str(d) for d in info.value.diagnostics]
    assert len(printed) == 1, printed
    return printed


def warnings_of(env: Env, text: str) -> list[str]:
    gateway = compile_(env.blueprint(text))
    printed = [str(w) for w in gateway.warnings]
    assert len(printed) == 1, printed
    return printed


async def answer(gateway: Gateway, method: str = "GET", path: str = "/", **kwargs: object) -> str:
    """The body Backworks answers a request with, in reverse mode."""
    flow = make_flow(method, path, **kwargs)  # type: ignore[arg-type]
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert flow.response is not None
    return flow.response.get_content().decode()


def stderr_of(env: Env, argv: list[str]) -> tuple[int, str]:
    env.capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):
            return status, exc.code
    return status, env.capsys.readouterr().err.rstrip("\n")


STATIC = """
  - path: /ok
    handler: static
    config: {static: {body: ok}}
"""


# ======================================================================================
# Loading a blueprint


@case("cannot read blueprint")
def _(env: Env) -> list[str]:
    with pytest.raises(BlueprintError) as info:
        compile_(env.root / "missing.yaml")
    return [str(d) for d in info.value.diagnostics]


@case("invalid YAML")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: static\n   config: {}\n")


@case("environment variable is not set")
def _(env: Env) -> list[str]:
    return errors(env, "name: ${API_NAME}\nendpoints:" + STATIC)


@case("duplicate key")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nname: shop2\nendpoints:" + STATIC)


@case("the blueprint is empty")
def _(env: Env) -> list[str]:
    return errors(env, "# nothing yet\n")


@case("expected a mapping at the top level")
def _(env: Env) -> list[str]:
    return errors(env, "- path: /a\n  handler: static\n")


@case("required key is missing")
def _(env: Env) -> list[str]:
    return errors(env, "endpoints:" + STATIC)


@case("unknown key")
def _(env: Env) -> list[str]:
    near = errors(env, "name: shop\ndescripton: x\nendpoints:" + STATIC)
    far = errors(env, "name: shop\nfoo: 1\nendpoints:" + STATIC)
    return near + far


@case("expected a value of another type")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nserver: {port: eighty}\nendpoints:" + STATIC)


@case("expected one of")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nserver: {unmatched: passtrough}\nendpoints:" + STATIC)


@case("expected a duration")
def _(env: Env) -> list[str]:
    env.write("handlers/slow.py", "def handler(request):\n    return {}\n")
    return errors(env, "name: shop\nendpoints:\n  - path: /slow\n    handler: handlers/slow.py\n    config: {python: {timeout: 5 seconds}}\n")


@case("expected a size")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nserver: {max_body_size: 10 megabytes}\nendpoints:" + STATIC)


@case("unknown HTTP method")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    method: FETCH\n    handler: static\n    config: {static: {body: a}}\n")


@case("write either 'method' or 'methods'")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    method: GET\n    methods: [POST]\n    handler: static\n    config: {static: {body: a}}\n")


@case("certificate file not found")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nserver: {tls: {cert: certs/server.pem}}\nendpoints:" + STATIC)


@case("path template must start with '/'")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: users\n    handler: static\n    config: {static: {body: a}}\n")


@case("unknown parameter type in a path template")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: '/users/{id:number}'\n    handler: static\n    config: {static: {body: a}}\n")


@case("duplicate route")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /users\n    handler: static\n    config: {static: {body: a}}\n  - path: /users/\n    handler: static\n    config: {static: {body: b}}\n")


@case("unknown plugin")
def _(env: Env) -> list[str]:
    near = errors(env, "name: shop\nplugins: {metrix: {}}\nendpoints:" + STATIC)
    far = errors(env, "name: shop\nplugins: {graphql: {}}\nendpoints:" + STATIC)
    return near + far


@case("plugin is listed twice")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nplugins:\n  - type: metrics\n  - type: metrics\nendpoints:" + STATIC)


@case("plugin needs settings")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nmiddlewares:\n  - {name: login, plugin: auth, config: {path: '/*'}}\nendpoints:" + STATIC)


@case("middleware name is already used")
def _(env: Env) -> list[str]:
    return errors(
        env,
        """
        name: shop
        middlewares:
          - {name: limit, plugin: rate_limit, config: {path: "/*", requests: 10, per: 1s}}
          - {name: limit, plugin: rate_limit, config: {path: "/*", requests: 99, per: 1s}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """,
    )


@case("plugin offers no middleware")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nmiddlewares:\n  - {name: stats, plugin: metrics, config: {path: '/*'}}\nendpoints:" + STATIC)


@case("plugin is disabled")
def _(env: Env) -> list[str]:
    return errors(
        env,
        """
        name: shop
        plugins: {cors: {enabled: false}}
        middlewares:
          - {name: browsers, plugin: cors, config: {path: "/*", origins: ["https://app.example.com"]}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """,
    )


@case("no middleware named")
def _(env: Env) -> list[str]:
    return errors(
        env,
        """
        name: shop
        middlewares:
          - {name: cors, plugin: cors, config: {origins: ["https://app.example.com"]}}
        endpoints:
          - {path: /ok, handler: static, middleware: [cros], config: {static: {body: ok}}}
          - {path: /also, handler: static, middleware: [cors], config: {static: {body: ok}}}
        """,
    )


@case("unknown handler")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: statik\n")


@case("JavaScript handler")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: handlers/users.js\n")


@case("handler belongs to a disabled plugin")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nplugins: {proxy: {enabled: false}}\nendpoints:\n  - path: /a\n    handler: proxy\n")


@case("unknown config section")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: static\n    config: {static: {body: a}, headers_extra: {}}\n")


@case("config section is for another handler")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: mock\n    config: {mock: {examples: [{body: a}]}, static: {body: a}}\n")


@case("handler 'static' needs config.static")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: static\n")


@case("handler 'mock' needs config.mock")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: mock\n")


@case("mock needs at least one example")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: mock\n    config: {mock: {examples: []}}\n")


@case("handler file not found")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: handlers/users.py\n")


@case("handler file has no such function")
def _(env: Env) -> list[str]:
    env.write("handlers/users.py", "def list_users(request):\n    return []\n")
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: handlers/users.py:show\n")


@case("handler file has a syntax error")
def _(env: Env) -> list[str]:
    env.write("handlers/users.py", "def handler(request)\n    return []\n")
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: handlers/users.py\n")


@case("cannot import module")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /a\n    handler: shop_handlers_not_installed.users:show\n")


@case("middleware applies to nothing")
def _(env: Env) -> list[str]:
    return warnings_of(
        env,
        """
        name: shop
        middlewares:
          - {name: limit, plugin: rate_limit, config: {requests: 10, per: 1s}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """,
    )


@case("the auth plugin needs a key")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nplugins: {auth: {config: {token_expiry_minutes: 30}}}\nendpoints:" + STATIC)


@case("algorithm 'none' is refused")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nplugins: {auth: {config: {jwt_secret: s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t, algorithms: [none]}}}\nendpoints:" + STATIC)


@case("proxy target URL")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nplugins: {proxy: {config: {targets: [{name: api, url: 'localhost:3000'}]}}}\nendpoints:\n  - {path: /a, handler: proxy}\n")


@case("handler 'proxy' needs upstream targets")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - {path: /a, handler: proxy}\n")


@case("no upstream pool named")
def _(env: Env) -> list[str]:
    return errors(
        env,
        """
        name: shop
        plugins:
          proxy:
            config:
              upstreams:
                orders: {targets: [{name: orders-1, url: "http://127.0.0.1:3002"}]}
        endpoints:
          - {path: /orders, handler: proxy, config: {proxy: {upstream: order}}}
        """,
    )


@case("CORS credentials with every origin")
def _(env: Env) -> list[str]:
    return errors(
        env,
        """
        name: shop
        middlewares:
          - {name: browsers, plugin: cors, config: {path: "/*", origins: ["*"], credentials: true}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """,
    )


@case("CORS origin")
def _(env: Env) -> list[str]:
    return errors(
        env,
        """
        name: shop
        middlewares:
          - {name: browsers, plugin: cors, config: {path: "/*", origins: [app.example.com]}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """,
    )


@case("rate_limit redis_url")
def _(env: Env) -> list[str]:
    return errors(
        env,
        """
        name: shop
        middlewares:
          - {name: limit, plugin: rate_limit, config: {path: "/*", requests: 10, per: 1s, redis_url: "localhost:6379"}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """,
    )


@case("a fault middleware needs delay, abort or allow_header")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nmiddlewares:\n  - {name: chaos, plugin: fault, config: {path: '/*'}}\nendpoints:" + STATIC)


@case("not a valid JSON Schema")
def _(env: Env) -> list[str]:
    return errors(env, "name: shop\nendpoints:\n  - path: /orders\n    method: POST\n    handler: static\n    config: {static: {status: 201}, validate: {schema: {type: dictionary}}}\n")


# ======================================================================================
# Options and commands (mitmdump / mitmweb)


def core_addon() -> Backworks:
    reg = registry()
    return Backworks(reg, [plugin() for plugin in reg.plugins.values()])


BAD_TWICE = "name: shop\nendpoints:\n  - path: /a\n    handler: statik\n  - path: /b\n    handler: static\n"


@case("the blueprint option is refused at startup")
def _(env: Env) -> list[str]:
    addon = core_addon()
    path = env.blueprint(BAD_TWICE)
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(addon, blueprint=str(path))
    return [str(info.value)]


@case("backworks_buffer_limit")
def _(env: Env) -> list[str]:
    addon = core_addon()
    # Proxyserver declares stream_large_bodies, which the core reads too (mitmdump always has it).
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(addon, backworks_buffer_limit="one megabyte")
    return [str(info.value)]


@case("backworks_header_timeout")
def _(env: Env) -> list[str]:
    from addons.header_timeout import HeaderTimeout, LiveConnections, Shape

    class Clock:  # a loop whose one timer the case runs by hand
        now = 100.0
        timers: list = []

        def time(self) -> float:
            return self.now

        def call_later(self, delay, callback, *args):  # type: ignore[no-untyped-def]
            self.timers.append((delay, callback, args))
            return type("Handle", (), {"cancel": lambda _self: None})()

    class Closing(LiveConnections):
        def shape(self, client_id: str) -> Shape:
            return Shape(http=True)

        def close(self, client_id: str, farewell: bytes | None) -> bool:
            return True

    clock = Clock()
    addon = HeaderTimeout(scheduler=clock, connections=Closing())
    env.caplog.set_level(logging.INFO)
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(addon, backworks_header_timeout="soon")
        addon.client_connected(tflow.tclient_conn())
        delay, callback, args = clock.timers[-1]
        clock.now += delay
        callback(*args)
    return [str(info.value), *env.logs("addons.header_timeout", logging.INFO)]


@case("backworks.reload")
def _(env: Env) -> list[str]:
    addon = core_addon()
    messages = []
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.CommandError) as info:
            addon.reload_command()
        messages.append(str(info.value))
        path = env.blueprint("name: shop\nendpoints:" + STATIC)
        tctx.configure(addon, blueprint=str(path))
        env.blueprint(BAD_TWICE)
        with pytest.raises(exceptions.CommandError) as info:
            addon.reload_command()
        messages.append(str(info.value))
    return messages


@case("backworks.breaker.reset")
def _(env: Env) -> list[str]:
    path = env.blueprint(
        """
        name: shop
        plugins:
          proxy:
            config:
              targets: [{name: api-1, url: "http://127.0.0.1:3001"}]
              circuit_breaker: {failure_threshold: 5}
        endpoints:
          - {path: /a, handler: proxy}
        """
    )
    reg = registry()
    plugins = [plugin() for plugin in reg.plugins.values()]
    addon = Backworks(reg, plugins)
    proxy = next(p for p in plugins if isinstance(p, ProxyPlugin))
    with taddons.context(addon, proxy) as tctx:
        tctx.configure(addon, blueprint=str(path))
        with pytest.raises(exceptions.CommandError) as info:
            proxy.breaker_reset_command("api-2")
    return [str(info.value)]


@case("backworks.capture.save")
def _(env: Env) -> list[str]:
    with pytest.raises(exceptions.CommandError) as info:
        CapturePlugin().save_command()
    return [str(info.value)]


@case("capture: cannot write the journal")
def _(env: Env) -> list[str]:
    env.write("capture", "a file where the journal's folder should be\n")
    path = env.blueprint(
        """
        name: shop
        plugins: {capture: {config: {output: out/api.yaml, journal: capture/journal.jsonl}}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """
    )
    addon = core_addon()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(addon, blueprint=str(path))
    return [str(info.value)]


# ======================================================================================
# Answers Backworks gives itself


@case("404 no endpoint matches")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint("name: shop\nendpoints:" + STATIC))
    return [await answer(gateway, "GET", "/users")]


@case("405 method is not allowed here")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint("name: shop\nendpoints:" + STATIC))
    return [await answer(gateway, "DELETE", "/ok")]


AUTH = """
name: shop
plugins:
  auth: {config: {jwt_secret: "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"}}
middlewares:
  - {name: admins, plugin: auth, config: {roles: [admin]}}
endpoints:
  - {path: /admin, handler: static, middleware: [admins], config: {static: {body: ok}}}
"""


@case("401 not authenticated")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(AUTH))
    other = AuthConfig.model_validate({"jwt_secret": "another-secret-another-secret-another-secret"})
    forged = issue_token(other, "mallory", ["admin"])
    return [
        await answer(gateway, "GET", "/admin"),
        await answer(gateway, "GET", "/admin", headers={"Authorization": f"Bearer {forged}"}),
    ]


@case("403 insufficient permissions")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(AUTH))
    config = AuthConfig.model_validate({"jwt_secret": "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"})
    token = issue_token(config, "alice", ["user"])
    return [await answer(gateway, "GET", "/admin", headers={"Authorization": f"Bearer {token}"})]


LIMITS = """
name: shop
endpoints:
  - path: /orders
    method: POST
    handler: static
    config:
      static: {status: 201}
      limits: {max_body_size: 1k, max_header_size: 2k}
      validate: {schema: {type: object, required: [sku], properties: {sku: {type: string}}}}
"""


@case("413 request body is larger than the limit")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(LIMITS))
    return [await answer(gateway, "POST", "/orders", headers={"Content-Type": "application/json"}, body=b'{"sku": "' + b"x" * 2000 + b'"}')]


@case("431 request header fields")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(LIMITS))
    return [await answer(gateway, "POST", "/orders", headers={"Cookie": "c" * 3000}, body=b'{"sku": "a"}')]


@case("415 this endpoint expects a JSON body")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(LIMITS))
    return [await answer(gateway, "POST", "/orders", headers={"Content-Type": "text/plain"}, body=b"sku=a")]


@case("400 request body is not valid JSON")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(LIMITS))
    return [await answer(gateway, "POST", "/orders", headers={"Content-Type": "application/json"}, body=b"{sku: a}")]


@case("422 request body does not match the schema")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(LIMITS))
    return [await answer(gateway, "POST", "/orders", headers={"Content-Type": "application/json"}, body=b'{"sku": 42}')]


@case("429 rate limit exceeded")
async def _(env: Env) -> list[str]:
    path = env.blueprint(
        """
        name: shop
        middlewares:
          - {name: per-ip, plugin: rate_limit, config: {path: "/*", requests: 1, per: 1m}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """
    )
    gateway = compile_(path)
    await answer(gateway, "GET", "/ok")
    return [await answer(gateway, "GET", "/ok")]


REDIS_DOWN = """
name: shop
middlewares:
  - {name: shared, plugin: rate_limit, config: {path: "/*", requests: 100, per: 1s, redis_url: "redis://127.0.0.1:1/0", redis_timeout: 2s}}
endpoints:
  - {path: /ok, handler: static, config: {static: {body: ok}}}
"""


@case("503 rate limit cannot be checked")
async def _(env: Env) -> list[str]:
    gateway = compile_(env.blueprint(REDIS_DOWN))
    return [await answer(gateway, "GET", "/ok")]


def proxy_blueprint(env: Env, url: str, pool: str = "", endpoint: str = "") -> Gateway:
    return compile_(
        env.blueprint(
            f"""
            name: shop
            plugins:
              proxy:
                config:
                  targets: [{{name: api-1, url: "{url}"}}]
                  {pool}
            endpoints:
              - {{path: "/{{rest:path}}", method: ANY, handler: proxy{endpoint}}}
            """
        )
    )


@case("502 upstream failed")
async def _(env: Env) -> list[str]:
    return [await answer(proxy_blueprint(env, CLOSED), "GET", "/users")]


class SlowUpstream:
    """A real HTTP server on 127.0.0.1 that answers after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> SlowUpstream:
        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(self.delay)
            return web.Response(text="late")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", slow)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@case("504 upstream did not answer in time")
async def _(env: Env) -> list[str]:
    async with SlowUpstream(2.0) as upstream:
        gateway = proxy_blueprint(env, upstream.url, endpoint=", config: {proxy: {timeout: 100ms}}")
        return [await answer(gateway, "GET", "/users")]


@case("503 no upstream target can take traffic")
async def _(env: Env) -> list[str]:
    gateway = proxy_blueprint(env, CLOSED, pool="circuit_breaker: {failure_threshold: 1, recovery_timeout: 30s}")
    await answer(gateway, "GET", "/users")  # refused: the breaker opens
    return [await answer(gateway, "GET", "/users")]


PYTHON_HANDLERS = """
import time

def broken(request):
    raise KeyError("customer_id")

def slow(request):
    time.sleep(0.25)
    return {"late": True}

def odd(request):
    return object()
"""


def python_gateway(env: Env) -> Gateway:
    env.write("handlers/orders.py", PYTHON_HANDLERS)
    return compile_(
        env.blueprint(
            """
            name: shop
            endpoints:
              - {path: /broken, handler: "handlers/orders.py:broken"}
              - {path: /slow, handler: "handlers/orders.py:slow", config: {python: {timeout: 50ms}}}
              - {path: /odd, handler: "handlers/orders.py:odd"}
            """
        )
    )


@case("500 handler failed")
async def _(env: Env) -> list[str]:
    return [await answer(python_gateway(env), "GET", "/broken")]


@case("504 handler timed out")
async def _(env: Env) -> list[str]:
    return [await answer(python_gateway(env), "GET", "/slow")]


@case("500 handler returned a value that cannot be sent")
async def _(env: Env) -> list[str]:
    return [await answer(python_gateway(env), "GET", "/odd")]


@case("404 no mock example matches")
async def _(env: Env) -> list[str]:
    gateway = compile_(
        env.blueprint(
            """
            name: shop
            endpoints:
              - path: "/orders/{id}"
                handler: mock
                config: {mock: {examples: [{when: {path: {id: "42"}}, body: {id: 42}}]}}
            """
        )
    )
    return [await answer(gateway, "GET", "/orders/7")]


@case("400 request transform refused")
async def _(env: Env) -> list[str]:
    gateway = compile_(
        env.blueprint(
            """
            name: shop
            endpoints:
              - path: /echo
                handler: static
                config: {static: {body: ok}}
                transform: {request: {headers: {X-Customer: "{{query.customer}}"}}}
            """
        )
    )
    return [await answer(gateway, "GET", "/echo?customer=a%0D%0AX-Admin:%201")]


@case("fault injected by middleware")
async def _(env: Env) -> list[str]:
    path = env.blueprint(
        """
        name: shop
        middlewares:
          - {name: chaos, plugin: fault, config: {path: "/*", abort: {status: 503}}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """
    )
    return [await answer(compile_(path), "GET", "/ok")]


@case("403 CORS preflight refused")
async def _(env: Env) -> list[str]:
    path = env.blueprint(
        """
        name: shop
        middlewares:
          - {name: browsers, plugin: cors, config: {path: "/*", origins: ["https://app.example.com"]}}
        endpoints:
          - {path: /ok, method: [GET, PUT], handler: static, config: {static: {body: ok}}}
        """
    )
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"}
    return [await answer(compile_(path), "OPTIONS", "/ok", headers=headers)]


# ======================================================================================
# The event log


@case("blueprint refused on reload")
def _(env: Env) -> list[str]:
    env.caplog.set_level(logging.INFO)
    addon = core_addon()
    with taddons.context(addon) as tctx:
        path = env.blueprint("name: shop\nendpoints:" + STATIC)
        tctx.configure(addon, blueprint=str(path))
        env.blueprint("name: shop\nendpoints:\n  - path: /a\n    handler: statik\n")
        assert addon.reload() is False
    return env.logs("addons.core", logging.ERROR)


@case("upstream failed after tries")
async def _(env: Env) -> list[str]:
    env.caplog.set_level(logging.INFO)
    await answer(proxy_blueprint(env, CLOSED), "GET", "/users")
    return [m for m in env.logs("addons.proxy") if "failed after" in m]


@case("target is unhealthy")
async def _(env: Env) -> list[str]:
    env.caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        checker = HealthChecker([CheckTarget("api-1", CLOSED)], HealthCheckConfig(unhealthy_threshold=1), probe=http_probe(session))
        assert await checker.check_now("api-1") is False
    return env.logs("addons.health")


@case("outlier detection ejects a target")
async def _(env: Env) -> list[str]:
    env.caplog.set_level(logging.INFO)
    gateway = compile_(
        env.blueprint(
            f"""
            name: shop
            plugins:
              proxy:
                config:
                  targets: [{{name: api-1, url: "{CLOSED}"}}, {{name: api-2, url: "http://127.0.0.1:2"}}]
                  outlier_detection: {{consecutive_failures: 1}}
            endpoints:
              - {{path: /users, handler: proxy}}
            """
        )
    )
    await answer(gateway, "GET", "/users")
    return env.logs("addons.outlier")


@case("Redis failed")
async def _(env: Env) -> list[str]:
    env.caplog.set_level(logging.INFO)
    store = RedisBuckets("redis://127.0.0.1:1/0", timeout=2.0)
    with pytest.raises(StoreUnavailable):
        await store.take("bucket", 1.0, 1)
    await store.close()
    return env.logs("addons.rate_limit")


@case("python handler raised")
async def _(env: Env) -> list[str]:
    env.caplog.set_level(logging.INFO)
    await answer(python_gateway(env), "GET", "/broken")
    return env.logs("backworks_core.handlers.python")


@case("python handler timed out")
async def _(env: Env) -> list[str]:
    env.caplog.set_level(logging.INFO)
    await answer(python_gateway(env), "GET", "/slow")
    return env.logs("backworks_core.handlers.python")


@case("capture: writing the output failed")
async def _(env: Env) -> list[str]:
    (env.root / "out").mkdir(parents=True)
    (env.root / "out" / "api.yaml").mkdir()  # a folder where the output file should be
    path = env.blueprint(
        """
        name: shop
        plugins: {capture: {config: {output: out/api.yaml}}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {body: ok}}}
        """
    )
    reg = registry()
    plugins = [plugin() for plugin in reg.plugins.values()]
    addon = Backworks(reg, plugins)
    capture = next(p for p in plugins if isinstance(p, CapturePlugin))
    with taddons.context(addon, capture) as tctx:
        tctx.configure(addon, blueprint=str(path))
        flow = make_flow("GET", "/ok")
        await addon.request(flow)
        addon.response(flow)
        assert capture.recorded == 1
        await capture.done()
    return env.logs("addons.capture")


@case("fault header is open to every client")
def _(env: Env) -> list[str]:
    return warnings_of(env, "name: shop\nmiddlewares:\n  - {name: chaos, plugin: fault, config: {path: '/*', allow_header: true}}\nendpoints:" + STATIC)


# ======================================================================================
# The backworks command


@case("backworks validate")
def _(env: Env) -> list[str]:
    path = env.blueprint("name: shop\nendpoints:\n  - path: /a\n    handler: statik\n")
    status, err = stderr_of(env, ["validate", str(path)])
    assert status == 1
    return [err]


@case("backworks run: errors in blueprint")
def _(env: Env) -> list[str]:
    path = env.blueprint("name: shop\nendpoints:\n  - path: /a\n    handler: statik\n")
    status, err = stderr_of(env, ["run", str(path)])
    assert status == 1
    return [err]


@case("backworks run: port already in use")
def _(env: Env) -> list[str]:
    import socket

    path = env.blueprint("name: shop\nendpoints:\n  - {path: /a, handler: static, config: {static: {body: ok}}}\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        status, err = stderr_of(env, ["run", str(path), "--port", str(port)])
    assert status == 1
    return [err]


@case("backworks run: mitmdump not found")
def _(env: Env) -> list[str]:
    env.monkeypatch.setattr(sys, "executable", str(env.root / "no-venv" / "bin" / "python"))
    env.monkeypatch.setenv("PATH", str(env.root / "empty-bin"))
    with pytest.raises(SystemExit) as info:
        cli.mitmproxy_tool("mitmdump")
    return [str(info.value.code)]


@case("backworks init")
def _(env: Env) -> list[str]:
    env.write("project/blueprint.yaml", "name: mine\n")
    status, err = stderr_of(env, ["init", str(env.root / "project")])
    assert status == 2
    return [err]


@case("backworks capture")
def _(env: Env) -> list[str]:
    status, err = stderr_of(env, ["capture", "-o", str(env.root / "nowhere" / "api.yaml")])
    assert status == 2
    return [err]


@case("backworks mock-from")
def _(env: Env) -> list[str]:
    out = str(env.root / "api.yaml")
    missing = stderr_of(env, ["mock-from", str(env.root / "missing.flows"), "-o", out])
    empty = stderr_of(env, ["mock-from", str(env.write("empty.har", "")), "-o", out])
    other = stderr_of(env, ["mock-from", str(env.write("notes.txt", "GET /users 200\n")), "-o", out])
    assert [missing[0], empty[0], other[0]] == [1, 1, 1]
    return [missing[1], empty[1], other[1]]


@case("arguments after --")
def _(env: Env) -> list[str]:
    status, err = stderr_of(env, ["validate", "blueprint.yaml", "--", "--set", "x=1"])
    assert status == 2
    return [err.splitlines()[-1]]


# ======================================================================================
# The tests


@pytest.fixture
def env(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Env:
    monkeypatch.chdir(tmp_path)
    return Env(tmp_path / "project", caplog, monkeypatch, capsys)


async def produce(title: str, env: Env) -> list[str]:
    env.root.mkdir(parents=True, exist_ok=True)
    result = CASES[title](env)
    if inspect.isawaitable(result):
        result = await result
    return list(result)


def test_every_entry_has_a_case_and_every_case_an_entry() -> None:
    entries = doc_entries(DOC.read_text())
    assert sorted(set(entries) - set(CASES)) == [], "entries of docs/troubleshooting.md with no case here"
    assert sorted(set(CASES) - set(entries)) == [], "cases here with no entry in docs/troubleshooting.md"
    assert all(entries.values()), [t for t, m in entries.items() if not m]
    quoted = sum(len(m) for m in entries.values())
    assert quoted == len(quoted_lines_blocks()), "a ```text block outside an entry quotes nothing proven"


@pytest.mark.parametrize("title", sorted(CASES))
async def test_quoted_message_is_what_the_code_prints(title: str, env: Env) -> None:
    quoted = doc_entries(DOC.read_text()).get(title)
    assert quoted is not None, f"no entry {title!r} in docs/troubleshooting.md"
    produced = await produce(title, env)
    assert len(produced) == len(quoted), (quoted, produced)
    for template, message in zip(quoted, produced):
        assert message_pattern(template).fullmatch(message), f"\nquoted:   {template}\nproduced: {message}"


def test_placeholders_match_text_and_nothing_else_does() -> None:
    pattern = message_pattern("unknown plugin '<name>' (installed plugins: <names>)")
    assert pattern.fullmatch("unknown plugin 'graphql' (installed plugins: auth, cors)")
    assert not pattern.fullmatch("unknown handler 'graphql' (installed plugins: auth, cors)")
    assert not pattern.fullmatch("unknown plugin 'graphql' (installed plugins: auth, cors); more")
    assert not message_pattern("a merge key '<<' needs a mapping").fullmatch("a merge key 'x' needs a mapping")
