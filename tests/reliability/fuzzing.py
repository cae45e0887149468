"""Fuzzing helpers: hostile blueprints (generated and mutated) and the check each one must pass.

A blueprint, however broken, must end as a compiled gateway or as located diagnostics
(file:line:col: key.path: message), the way `backworks validate` prints them: never an
uncaught exception, never a hang. Generated values come from fixed pools and from
hypothesis text without ':' so that no fuzzed `handler:` can name an importable module.
"""

from __future__ import annotations

import ast
import re
import shutil
import signal
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from addons import builtin_plugins
from addons.dashboard import status_page_endpoints
from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.compiler import compile_blueprint
from backworks_core.gateway import Gateway
from backworks_core.plugins import PluginRegistry
from tests.integration.harness import ROOT

CASE_SECONDS = 10.0  # one blueprint, however hostile, compiles or fails within this

# --------------------------------------------------------------------------------------
# Values

SAFE_ALPHABET = st.characters(blacklist_characters=":", blacklist_categories=("Cs",))
WEIRD_STRINGS = [
    "", " ", "\t", "\n", "ünïcødé", "☃💥", "\u202etxt.exe", "\u200b", "\ufeff", "Ω" * 300, "a" * 5000,
    "\x00", "\x07bell", "null", "~", "yes", "NaN", "${UNSET_FUZZ_VAR}", "${", "$${literal}", "${X:-${Y}",
    "{{now}}", "{{path.nope}}", "{{", "}}", "*", "**", "/", "\\", "../../etc/passwd", "<script>", "'\"",
    "١٢٣", "ｆｕｌｌ", "ß", "İ", "\r\n", "#comment", "&anchor", "!tag", "%", "@", "`",
]
WRONG: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(SAFE_ALPHABET, max_size=12),
    st.sampled_from(WEIRD_STRINGS),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(SAFE_ALPHABET, max_size=6), st.integers(-5, 5), max_size=3),
)
OUT_OF_RANGE = [-1, 0, -(2**31), 2**31, 2**63, 10**20, 65536, 99999, 1e308, -0.0, float("inf"), float("-inf"), float("nan"), 0.0001]
UNKNOWN_KEYS = ["stauts", "unknown", "Enabled", "targetz", "handlr", "", "ключ", 7, True, "endpoints ", "__proto__"]


def w(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the plausible value, sometimes a wrong-typed one."""
    return st.one_of(strategy, strategy, strategy, WRONG)


def obj(required: dict[str, st.SearchStrategy[Any]] | None = None, **optional: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    """A mapping with any subset of the optional keys, and now and then an unknown key."""
    base = st.fixed_dictionaries(required or {}, optional=optional)
    return st.tuples(base, st.integers(0, 9), st.sampled_from(UNKNOWN_KEYS)).map(lambda t: {**t[0], t[2]: 1} if t[1] == 0 else t[0])


durations = w(st.sampled_from([1, 0.5, "250ms", "30s", "5m", "1h", 0, -1, "soon", "1x", ".5s", "1e3", "1h30m", 10**12]))
sizes = w(st.sampled_from([1024, "512k", "10m", "10mb", "1g", -1, "huge", "0", " 5 k ", "1t", 2**70]))
ports = w(st.one_of(st.integers(-5, 70000), st.sampled_from(["8080", "${FUZZ_PORT:-8080}", "${FUZZ_PORT}"])))
booleans = w(st.booleans())
short_text = w(st.one_of(st.text(SAFE_ALPHABET, max_size=20), st.sampled_from(WEIRD_STRINGS)))
header_names = st.sampled_from(["X-A", "Content-Type", "Host", "x-b", "Bad Header", "", "X\r\nY", "Ünï"])
header_map = w(st.dictionaries(header_names, short_text, max_size=3))
name_list = w(st.lists(short_text, max_size=3))
methods_one = st.sampled_from(["GET", "post", "ANY", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND", "", "G E T"])
methods = w(st.one_of(methods_one, st.lists(methods_one, max_size=3)))
segments = st.sampled_from(["users", "{id}", "{id:int}", "{id:uuid}", ":id", "{rest:path}", "{", "}", "{bad:type}", "", "é", "%20", "*", "{id}", "a.b"])
paths = w(
    st.one_of(
        st.lists(segments, max_size=4).map(lambda parts: "/" + "/".join(parts)),
        st.sampled_from(["", "no-slash", "/", "//", "/a//b", "/users/{id}/{id}", "/{x}{y}", "/" + "a" * 3000]),
    )
)
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False), st.text(SAFE_ALPHABET, max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(SAFE_ALPHABET, max_size=6), inner, max_size=3)),
    max_leaves=8,
)
templates_text = st.sampled_from(["{{now}}", "{{uuid}}", "{{path.id}}", "{{query.q}}", "{{header.X-A}}", "{{auth.sub}}", "{{env.HOME}}", "{{nope}}", "{{", "{{path.}}"])
regexes = st.sampled_from(["^/users/(\\d+)$", "(", "[", "a{99999}", "(?P<x>a)", "\\", "", "(a+)+$"])

body_transform = obj(
    set=w(st.dictionaries(st.sampled_from(["a", "a.b", "a[0]", "a[*].b", "[*", "a..b", ""]), json_value, max_size=2)),
    remove=w(st.lists(st.sampled_from(["password", "a.b", "[0]", "a[*]", ""]), max_size=2)),
    rename=w(st.dictionaries(st.sampled_from(["a", "b.c", ""]), st.sampled_from(["x", "y.z", ""]), max_size=2)),
    replace=w(st.lists(obj({"pattern": w(regexes), "replacement": short_text}), max_size=2)),
)
request_transform = obj(
    headers=header_map,
    remove_headers=name_list,
    rename_headers=w(st.dictionaries(header_names, header_names, max_size=2)),
    path=obj(strip_prefix=short_text, add_prefix=short_text, rewrite=w(st.lists(obj({"pattern": w(regexes), "replacement": short_text}), max_size=2))),
    query=obj(set=w(st.dictionaries(st.sampled_from(["q", "", "é"]), short_text, max_size=2)), remove=name_list, rename=w(st.dictionaries(st.sampled_from(["q", "r"]), st.sampled_from(["s", ""]), max_size=2))),
    body=body_transform,
)
response_transform = obj(
    headers=header_map,
    remove_headers=name_list,
    rename_headers=w(st.dictionaries(header_names, header_names, max_size=2)),
    status_map=w(st.dictionaries(st.sampled_from([404, 500, "404", 99, 1000, "abc"]), st.sampled_from([200, 600, "x", 0]), max_size=2)),
    body=body_transform,
)
health_check = obj(
    enabled=booleans, interval=durations, timeout=durations, path=paths,
    expected_status=w(st.sampled_from(["200-399", "200", "abc", 200, "399-200", "200-", [200]])),
    healthy_threshold=w(st.integers(-2, 5)), unhealthy_threshold=w(st.integers(-2, 5)),
)
target_urls = st.sampled_from(["http://127.0.0.1:3001", "https://127.0.0.1:3443/base", "ftp://x", "not a url", "http://[::1", "http://h:99999", "", "http://", "${FUZZ_URL}", "http://ünï.example"])
target = obj(
    {"name": short_text, "url": w(target_urls)},
    weight=w(st.sampled_from([1, 0, -1, 2.5, "2", 10**9])),
    timeout=durations, retry_attempts=w(st.integers(-1, 5)), health_check=health_check,
    max_connections=w(st.integers(-1, 100)), tls_verify=booleans, ca_file=w(st.sampled_from(["ca.pem", "/nonexistent/ca.pem", ""])),
)
pool = obj(
    targets=w(st.lists(target, max_size=3)),
    load_balancing=w(st.sampled_from(["round_robin", "weighted_round_robin", "least_connections", "ip_hash", "consistent_hash", "random", "fastest"])),
    hash_on=w(st.sampled_from(["ip", "header:X-User", "cookie:", "query:q", "path", "bogus", "header:"])),
    health_check=health_check,
    outlier_detection=obj(consecutive_failures=w(st.integers(-1, 10)), base_ejection_time=durations, max_ejection_time=durations, max_ejection_percent=w(st.sampled_from([0, 50, 100, 101, -1]))),
    circuit_breaker=obj(
        failure_threshold=w(st.integers(-1, 10)), failure_rate=w(st.sampled_from([0.5, 0, 1, 1.5, -0.1])), window=durations,
        min_requests=w(st.integers(-1, 10)), recovery_timeout=durations, half_open_max_calls=w(st.integers(-1, 5)), max_concurrent_requests=w(st.integers(-1, 100)),
    ),
    retries=obj(
        attempts=w(st.integers(-1, 10)), retry_on=w(st.lists(st.sampled_from(["connect_failure", "timeout", "reset", 502, 200, "teapot", "5xx"]), max_size=3)),
        per_try_timeout=durations, backoff=durations, retry_non_idempotent=booleans,
    ),
    metrics=obj(enabled=booleans, detailed=booleans),
    timeout=durations, forwarded_headers=booleans, preserve_host=booleans,
    transform_request=request_transform, transform_response=response_transform,
)
proxy_config = st.tuples(pool, st.dictionaries(st.sampled_from(["orders", "users", "", "ü"]), pool, max_size=2), st.booleans()).map(
    lambda t: {**t[0], "upstreams": t[1]} if t[2] else t[0]
)
auth_config = obj(
    jwt_secret=w(st.sampled_from(["short", "s" * 40, "${FUZZ_JWT_SECRET}", "${JWT_SECRET}"])),
    algorithms=w(st.lists(st.sampled_from(["HS256", "HS512", "RS256", "ES256", "EdDSA", "none", "hs256"]), max_size=2)),
    token_expiry_minutes=w(st.sampled_from([60, 0, -1, 1e9, 0.5])), issuer=short_text, audience=w(st.one_of(short_text, name_list)),
    leeway=durations, verified_cache_size=w(st.integers(-1, 10)), verified_cache_ttl=durations,
    required_claims=name_list, roles_claim=short_text, permissions_claim=short_text,
    token_sources=w(st.lists(st.sampled_from(["header", "cookie:tok", "query:t", "query:", "bogus", "cookie"]), max_size=2)),
    default_roles=name_list, forward_claims=w(st.dictionaries(header_names, st.sampled_from(["sub", "roles", "", "a.b"]), max_size=2)),
    strip_token=booleans, roles=w(st.dictionaries(st.sampled_from(["admin", "user", ""]), name_list, max_size=2)),
    users_file=w(st.sampled_from(["data/users.json", "/nonexistent/dir/u.json", "", "users.json"])),
    private_key=w(st.sampled_from(["missing.pem", ""])), public_key=w(st.sampled_from(["missing.pem"])),
    jwks_url=w(st.sampled_from(["http://127.0.0.1:9/jwks.json", "not a url", "https://"])),
)
metrics_config = obj(path=paths, port=ports, host=w(st.sampled_from(["127.0.0.1", "::1", "not a host", ""])), buckets=w(st.lists(st.sampled_from([0.1, 1, -1, 0, "a", 1e308]), max_size=4)))
capture_config = obj(
    output=w(st.sampled_from(["captured.yaml", "out/x.har", "", "/nonexistent/dir/c.yaml"])), format=w(st.sampled_from(["blueprint", "har", "openapi", "xml"])),
    journal=w(st.sampled_from(["journal.jsonl", None, ""])), include=name_list, exclude=name_list, methods=name_list, hosts=name_list,
    redact=obj(enabled=booleans, headers=name_list, fields=name_list), max_examples=w(st.integers(-1, 10)), max_body=sizes, api_name=short_text,
)
PLUGIN_CONFIGS: dict[str, st.SearchStrategy[Any]] = {
    "proxy": proxy_config, "auth": auth_config, "metrics": metrics_config, "capture": capture_config,
    "cors": obj(), "rate_limit": obj(), "fault": obj(), "transform": obj(),
    "proxi": obj(), "redis": obj(), "": obj(),
}
plugin_name = st.sampled_from(sorted(PLUGIN_CONFIGS))
plugins_map = w(st.lists(plugin_name, unique=True, max_size=3).flatmap(
    lambda names: st.fixed_dictionaries({name: obj(enabled=booleans, config=w(PLUGIN_CONFIGS[name])) for name in names})
))
plugins_list = w(st.lists(plugin_name.flatmap(lambda name: obj({"type": st.just(name)}, enabled=booleans, config=w(PLUGIN_CONFIGS[name]))), max_size=3))

filter_keys: dict[str, st.SearchStrategy[Any]] = {"path": w(st.sampled_from(["/api/*", "*", "/x", "", "**/a"])), "methods": w(st.lists(methods_one, max_size=2))}
MIDDLEWARE_CONFIGS: dict[str, st.SearchStrategy[Any]] = {
    "auth": obj(**filter_keys, roles=name_list, permissions=name_list),
    "cors": obj(
        **filter_keys, origins=w(st.lists(st.sampled_from(["*", "https://app.example.com", "https://*.example.com", "not an origin", ""]), max_size=2)),
        headers=name_list, expose_headers=name_list, credentials=booleans, max_age=durations,
    ),
    "rate_limit": obj(
        **filter_keys, requests=w(st.integers(-1, 100)), per=durations, key=w(st.sampled_from(["ip", "header:X-Key", "claim:sub", "bogus", "header:"])),
        burst=w(st.integers(-1, 10)), scope=w(st.sampled_from(["endpoint", "global", "galaxy"])),
        redis_url=w(st.sampled_from([None, "redis://127.0.0.1:9/0", "nonsense"])), redis_timeout=durations, fail_open=booleans, max_keys=w(st.integers(-1, 10)),
    ),
    "fault": obj(
        **filter_keys, delay=obj({"duration": durations}, percent=w(st.sampled_from([0, 50, 100, 101, -1]))),
        abort=obj({"status": w(st.sampled_from([400, 503, 399, 600, 200]))}, percent=w(st.sampled_from([0, 100, 150])), body=short_text),
        allow_header=booleans, header=short_text, max_header_delay=durations,
    ),
    "transform": obj(**filter_keys, request=request_transform, response=response_transform),
    "proxy": obj(), "metrics": obj(), "nonexistent": obj(),
}
middleware = st.sampled_from(sorted(MIDDLEWARE_CONFIGS)).flatmap(
    lambda plugin: obj({"name": w(st.sampled_from(["authenticate", "limit", "cors", "fault", "t", ""])), "plugin": st.just(plugin)}, config=MIDDLEWARE_CONFIGS[plugin])
)

INLINE_HANDLERS = [
    "def handler(request):\n    return {'ok': True}\n",
    "async def handler(request):\n    return {'status': 201, 'body': 'x'}\n",
    "def handler(:\n",
    "raise RuntimeError('boom at import')\n",
    "x = 1\n",
    "def other(request):\n    return 1\n",
    "handler = 5\n",
]
HANDLERS = [
    "static", "mock", "proxy", "metrics", "auth.login", "auth.register", "auth.validate", "auth.nope",
    "handlers/demo.py:echo", "handlers/demo.py", "handlers/missing.py", "handlers/demo.py:nope", "json:dumps",
    "nonexistent_fuzz_module:handler", "x.js", "staticc", "  static  ", "", *INLINE_HANDLERS,
]
SECTION_CONFIGS: dict[str, st.SearchStrategy[Any]] = {
    "static": obj(status=w(st.sampled_from([200, 201, 99, 600, "200", 204, 304])), headers=header_map, body=w(st.one_of(json_value, templates_text)), delay=durations),
    "mock": obj(
        examples=w(st.lists(obj(
            when=obj(path=w(st.dictionaries(st.sampled_from(["id", ""]), short_text, max_size=2)), query=w(st.dictionaries(st.sampled_from(["q"]), short_text, max_size=1)), headers=header_map, body=json_value),
            status=w(st.sampled_from([200, 404, 99, 600])), headers=header_map, body=json_value,
            body_base64=w(st.sampled_from(["aGk=", "!!!", "", "aGk"])), latency=durations,
        ), max_size=3)),
        passthrough=booleans, replay_latency=booleans, schema=w(st.one_of(st.just({"type": "object"}), json_value)),
    ),
    "python": obj(timeout=durations),
    "proxy": obj(
        upstream=w(st.sampled_from(["orders", "missing", ""])), path=paths, method=w(methods_one), strip_prefix=short_text, add_prefix=short_text,
        timeout=durations, retries=w(st.integers(-1, 3)), transform_request=request_transform, transform_response=response_transform,
    ),
    "metrics": obj(format=w(st.sampled_from(["json", "prometheus", "xml"])), include_proxy_metrics=booleans, include_circuit_breaker_status=booleans, include_health_check_status=booleans),
    "limits": obj(max_body_size=sizes, max_header_size=sizes),
    "validate": obj(schema=w(st.sampled_from([{"type": "object", "required": ["a"]}, {"type": "nonsense"}, True, False, {"$ref": "#/nowhere"}, {"pattern": "("}]))),
    "stattic": obj(),
}
endpoint_config = w(st.dictionaries(st.sampled_from(sorted(SECTION_CONFIGS)), st.none(), max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({key: SECTION_CONFIGS[key] for key in keys})
))
endpoint = obj(
    {"path": paths, "handler": w(st.sampled_from(HANDLERS))},
    method=methods, methods=methods, description=short_text, host=w(st.sampled_from(["api.example.com", "*.example.com", "*", ""])),
    config=endpoint_config, middleware=w(st.lists(st.sampled_from(["authenticate", "limit", "cors", "missing"]), max_size=2)),
    transform=w(obj(request=request_transform, response=response_transform)),
)
hostile_blueprints = obj(
    {"name": w(st.sampled_from(["api", "Demo API", "ünïcødé ☃", "x" * 300, ""])), "endpoints": w(st.lists(endpoint, max_size=4))},
    version=w(st.sampled_from(["1.0.0", 1.0, 2, "v1"])),
    description=short_text,
    server=obj(
        host=short_text, port=ports, tls=obj({"cert": w(st.sampled_from(["cert.pem", "/nonexistent.pem"]))}),
        unmatched=w(st.sampled_from(["not_found", "passthrough", "drop"])), max_body_size=sizes, max_header_size=sizes,
    ),
    dashboard=obj(enabled=booleans, path=paths, port=ports, host=short_text),
    plugins=st.one_of(plugins_map, plugins_list),
    middlewares=w(st.lists(middleware, max_size=3)),
)


# Plausible blueprints: every value of the right type and range, handlers with their own config,
# so that a good share compiles and the fuzzing also reaches the gateway builder.
good_text = st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=12)
good_duration = st.sampled_from([1, 0.5, "250ms", "30s", "5m", "1h", 0.01])
good_headers = st.dictionaries(st.sampled_from(["X-A", "X-Trace", "Cache-Control"]), good_text, max_size=2)
good_path = st.lists(st.sampled_from(["users", "orders", "{id}", "{id:int}", "{id:uuid}", ":name", "v1", "ünï"]), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
good_target = st.fixed_dictionaries(
    {"name": good_text, "url": st.sampled_from(["http://127.0.0.1:3001", "http://127.0.0.1:3002/base", "https://127.0.0.1:3443"])},
    optional={"weight": st.sampled_from([1, 2, 0.5]), "timeout": good_duration, "retry_attempts": st.integers(0, 3), "max_connections": st.integers(1, 50)},
)
good_pool = st.fixed_dictionaries(
    {"targets": st.lists(good_target, min_size=1, max_size=3, unique_by=lambda t: t["name"])},
    optional={
        "load_balancing": st.sampled_from(["round_robin", "weighted_round_robin", "least_connections", "ip_hash", "consistent_hash", "random"]),
        "hash_on": st.sampled_from(["ip", "header:X-User", "query:q", "path", "cookie:sid"]),
        "health_check": st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "interval": good_duration, "path": st.just("/health"), "healthy_threshold": st.integers(1, 3)}),
        "circuit_breaker": st.fixed_dictionaries({}, optional={"failure_threshold": st.integers(1, 5), "recovery_timeout": good_duration, "half_open_max_calls": st.integers(1, 3)}),
        "retries": st.fixed_dictionaries({}, optional={"attempts": st.integers(0, 3), "retry_on": st.lists(st.sampled_from(["connect_failure", "timeout", "reset", 502]), max_size=2, unique=True)}),
        "timeout": good_duration, "forwarded_headers": st.booleans(), "preserve_host": st.booleans(),
        "transform_request": st.fixed_dictionaries({}, optional={"headers": good_headers, "remove_headers": st.lists(st.just("Cookie"), max_size=1)}),
        "transform_response": st.fixed_dictionaries({}, optional={"headers": good_headers, "status_map": st.dictionaries(st.sampled_from([404, 500]), st.sampled_from([200, 503]), max_size=1)}),
    },
)
good_static = st.fixed_dictionaries({}, optional={"status": st.sampled_from([200, 201, 204, 404, 418, 503]), "headers": good_headers, "body": st.one_of(json_value, templates_text), "delay": st.sampled_from([0, "1ms"])})
good_mock = st.fixed_dictionaries({"examples": st.lists(st.fixed_dictionaries(
    {"status": st.sampled_from([200, 404])},
    optional={"when": st.fixed_dictionaries({}, optional={"query": st.dictionaries(st.just("q"), good_text, max_size=1)}), "body": json_value, "headers": good_headers},
), max_size=3)}, optional={"passthrough": st.booleans()})
good_endpoint = st.one_of(
    st.fixed_dictionaries({"path": good_path, "handler": st.just("static"), "config": st.fixed_dictionaries({"static": good_static})}, optional={"method": st.sampled_from(["GET", "post", "ANY"]), "description": good_text}),
    st.fixed_dictionaries({"path": good_path, "handler": st.just("mock"), "config": st.fixed_dictionaries({"mock": good_mock})}),
    st.fixed_dictionaries({"path": good_path, "handler": st.sampled_from(INLINE_HANDLERS[:2])}, optional={"config": st.fixed_dictionaries({"python": st.fixed_dictionaries({"timeout": good_duration})})}),
    st.fixed_dictionaries({"path": good_path, "handler": st.just("proxy")}, optional={"methods": st.just(["GET", "POST"]), "config": st.fixed_dictionaries({"proxy": st.fixed_dictionaries({}, optional={"path": st.just("/users"), "strip_prefix": st.just("/api"), "timeout": good_duration})})}),
    st.fixed_dictionaries({"path": good_path, "handler": st.just("metrics"), "config": st.fixed_dictionaries({"metrics": st.fixed_dictionaries({}, optional={"format": st.sampled_from(["json", "prometheus"])})})}),
)
good_middleware = st.one_of(
    st.fixed_dictionaries({"name": st.just("limit"), "plugin": st.just("rate_limit"), "config": st.fixed_dictionaries({"requests": st.integers(1, 100), "per": good_duration}, optional={"path": st.just("/*"), "burst": st.integers(1, 10)})}),
    st.fixed_dictionaries({"name": st.just("cors"), "plugin": st.just("cors"), "config": st.fixed_dictionaries({"origins": st.sampled_from([["*"], ["https://app.example.com"], ["https://*.example.com"]])}, optional={"path": st.just("/*"), "max_age": good_duration})}),
    st.fixed_dictionaries({"name": st.just("fault"), "plugin": st.just("fault"), "config": st.fixed_dictionaries({"path": st.just("/*"), "abort": st.fixed_dictionaries({"status": st.sampled_from([503, 429])}, optional={"percent": st.integers(0, 100)})})}),
)
plausible_blueprints = st.fixed_dictionaries(
    {"name": good_text, "endpoints": st.lists(good_endpoint, min_size=1, max_size=5, unique_by=lambda e: e["path"].replace(":", "{")),
     "plugins": st.fixed_dictionaries({"proxy": st.fixed_dictionaries({"config": good_pool})})},
    optional={
        "version": st.sampled_from(["1.0.0", "2"]), "description": good_text,
        "server": st.fixed_dictionaries({}, optional={"port": st.integers(1, 65535), "unmatched": st.sampled_from(["not_found", "passthrough"]), "max_body_size": st.sampled_from(["1m", 1024, "10mb"])}),
        "dashboard": st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "path": st.just("/__status")}),
        "middlewares": st.lists(good_middleware, max_size=3, unique_by=lambda m: m["name"]),
    },
)
blueprints = st.one_of(plausible_blueprints, hostile_blueprints)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=10**6)


# --------------------------------------------------------------------------------------
# Seeds and mutations


@dataclass(frozen=True)
class Seed:
    """A real blueprint: where it came from, the folder it is written into (its handler files beside it)."""

    origin: str
    folder: Path
    text: str
    data: Any
    shipped: bool = False  # one of blueprints/: must stay valid


def copy_examples(into: Path) -> Path:
    """blueprints/, the scaffold and the reliability blueprints copied, so that mutated blueprints
    find their handler files and nothing is ever written into the repository."""
    target = into / "blueprints"
    ignore = shutil.ignore_patterns("__pycache__", "users.json")
    shutil.copytree(ROOT / "blueprints", target, ignore=ignore)
    shutil.copytree(ROOT / "backworks_core" / "scaffold", into / "scaffold", ignore=ignore)
    if (ROOT / "tests" / "reliability" / "blueprints").is_dir():
        shutil.copytree(ROOT / "tests" / "reliability" / "blueprints", into / "reliability-blueprints", ignore=ignore)
    return target


def collect_seeds(examples: Path, scratch: Path) -> list[Seed]:
    """Every example blueprint, the scaffold's, and every blueprint written inside the test suites and the docs."""
    texts: list[tuple[str, Path, str, bool]] = [
        (str(f.relative_to(examples.parent)), f.parent, f.read_text(), True) for f in sorted(examples.rglob("*.yaml"))
    ]
    for extra in ("scaffold", "reliability-blueprints"):
        texts += [(f"{extra}/{f.name}", f.parent, f.read_text(), False) for f in sorted((examples.parent / extra).glob("*.yaml"))]
    for source in sorted((ROOT / "tests").rglob("*.py")):
        if "reliability" in source.parts:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "endpoints:" in node.value:
                texts.append((f"{source.relative_to(ROOT)}:{node.lineno}", scratch, textwrap.dedent(node.value).lstrip("\n"), False))
    for doc in sorted((ROOT / "docs").rglob("*.md")):
        for match in re.finditer(r"```ya?ml\n(.*?)```", doc.read_text(), re.S):
            if "endpoints:" in match.group(1):
                texts.append((f"{doc.relative_to(ROOT)}", scratch, match.group(1), False))
    seeds = []
    for origin, folder, text, shipped in texts:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        seeds.append(Seed(origin, folder, text, data, shipped))
    return seeds


KeyPath = tuple[Any, ...]


def tree_paths(data: Any, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """Every key path in the data (containers and leaves), the root excluded."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from tree_paths(value, prefix + (key,))


def _parent(data: Any, path: KeyPath) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


def _deep(depth: int, leaf: Any, kind: str) -> Any:
    for _ in range(depth):
        leaf = [leaf] if kind == "list" else {"k": leaf}
    return leaf


TREE_OPS = ["delete", "swap_type", "unknown_key", "out_of_range", "weird_unicode", "deep_nesting", "duplicate_item", "empty_container"]


@st.composite
def tree_mutation(draw: st.DrawFn, seeds: list[Seed]) -> tuple[Seed, str, bytes]:
    """A seed's data with 1-4 structural mutations, dumped back to YAML."""
    seed = draw(st.sampled_from([s for s in seeds if isinstance(s.data, dict)]))
    data = yaml.safe_load(seed.text)
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        paths = list(tree_paths(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(data, path), path[-1]
        op = draw(st.sampled_from(TREE_OPS))
        ops.append(op)
        if op == "delete":
            del parent[key]
        elif op == "swap_type":
            parent[key] = draw(WRONG)
        elif op == "unknown_key":
            target = parent[key] if isinstance(parent[key], dict) else parent if isinstance(parent, dict) else data
            target[draw(st.sampled_from(UNKNOWN_KEYS))] = draw(WRONG)
        elif op == "out_of_range":
            parent[key] = draw(st.sampled_from(OUT_OF_RANGE))
        elif op == "weird_unicode":
            parent[key] = draw(st.one_of(st.sampled_from(WEIRD_STRINGS), st.text(SAFE_ALPHABET, min_size=1, max_size=30)))
        elif op == "deep_nesting":
            parent[key] = _deep(draw(st.integers(20, 90)), parent[key] if not isinstance(parent[key], (dict, list)) else 1, draw(st.sampled_from(["list", "dict"])))
        elif op == "duplicate_item" and isinstance(parent, list):
            parent.append(parent[key])
        elif op == "empty_container":
            parent[key] = draw(st.sampled_from([{}, [], None, ""]))
    return seed, "tree:" + ",".join(ops), dump(data).encode()


def alias_bomb(levels: int, width: int, merge: bool) -> str:
    lines = ["x-a0: &a0 {k: v}" if merge else "x-a0: &a0 [lol]"]
    for i in range(1, levels):
        uses = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"x-a{i}: &a{i} {{<<: [{uses}], k{i}: v}}" if merge else f"x-a{i}: &a{i} [{uses}]")
    return "\n".join(lines) + "\n"


TEXT_OPS = [
    "truncate", "tab_indent", "duplicate_line", "anchor_alias", "undefined_alias", "merge_key", "alias_bomb", "binary_garbage",
    "invalid_utf8", "nul", "bom", "crlf", "control_char", "weird_char", "yaml_tag", "directive", "multi_document", "deep_flow",
    "huge_number", "long_line", "delete_line", "swap_lines", "indent_shift",
]
TAGS = ["!!python/object/apply:os.system ['true']", "!!binary aGk=", "!!int x", "!!float y", "!!bool maybe", "!!set {a, b}", "!!omap [a: 1]", "!custom x", "!!timestamp 2024-13-45", "!!str [a]", "!!null x", "!!map [a]"]


@st.composite
def text_mutation(draw: st.DrawFn, seeds: list[Seed]) -> tuple[Seed, str, bytes]:
    """A seed's text damaged at the YAML level: 1-3 of TEXT_OPS, ending as bytes (maybe not UTF-8)."""
    seed = draw(st.sampled_from(seeds))
    raw = seed.text.encode()
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(TEXT_OPS))
        ops.append(op)
        lines = raw.split(b"\n")
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        offset = draw(st.integers(0, len(raw)))
        if op == "truncate":
            raw = raw[:offset]
        elif op == "tab_indent":
            lines[at] = b"\t" + lines[at]
        elif op == "duplicate_line":
            lines.insert(at, lines[at])
        elif op == "anchor_alias":
            raw = b"x-shared: &shared {status: 200, body: x}\n" + raw.replace(b"config:", b"config: *shared\n  x-was:", 1)
        elif op == "undefined_alias":
            lines[at] = lines[at].split(b":")[0] + b": *nowhere" if b":" in lines[at] else b"*nowhere"
        elif op == "merge_key":
            lines.insert(at, b" " * (len(lines[at]) - len(lines[at].lstrip())) + draw(st.sampled_from([b"<<: *nowhere", b"<<: 5", b"<<: [1, 2]", b"<<: {a: 1}"])))
        elif op == "alias_bomb":
            levels = draw(st.integers(2, 7))  # the big ones: HOSTILE in test_blueprint_fuzz.py
            bomb = alias_bomb(levels, draw(st.integers(2, 6)), draw(st.booleans())).encode()
            raw = bomb + raw if draw(st.booleans()) else bomb + f"name: bomb\nendpoints: *a{levels - 1}\n".encode()
        elif op == "binary_garbage":
            raw = raw[:offset] + draw(st.binary(min_size=1, max_size=64)) + raw[offset:]
        elif op == "invalid_utf8":
            raw = raw[:offset] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"])) + raw[offset:]
        elif op == "nul":
            raw = raw[:offset] + b"\x00" + raw[offset:]
        elif op == "bom":
            raw = b"\xef\xbb\xbf" + raw if draw(st.booleans()) else raw[:offset] + b"\xef\xbb\xbf" + raw[offset:]
        elif op == "crlf":
            raw = raw.replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r", b"\n\r"])))
        elif op == "control_char":
            raw = raw[:offset] + draw(st.sampled_from([b"\x07", b"\x1b[31m", b"\x0b", b"\x0c", b"\x85".decode("latin-1").encode(), b"\x7f"])) + raw[offset:]
        elif op == "weird_char":
            raw = raw[:offset] + draw(st.sampled_from(WEIRD_STRINGS)).encode("utf-8", "surrogatepass") + raw[offset:]
        elif op == "yaml_tag":
            lines[at] = (lines[at].split(b":")[0] + b": " if b":" in lines[at] else b"") + draw(st.sampled_from(TAGS)).encode()
        elif op == "directive":
            raw = draw(st.sampled_from([b"%YAML 1.1\n---\n", b"%YAML 2.0\n---\n", b"%TAG ! tag:x,2000:\n---\n", b"%BOGUS\n---\n"])) + raw
        elif op == "multi_document":
            raw = raw + b"\n---\nname: second\n"
        elif op == "deep_flow":
            depth = draw(st.integers(50, 400))
            lines.insert(at, b"x-deep: " + b"[" * depth + b"]" * depth)
        elif op == "huge_number":
            lines.insert(at, b"x-big: " + draw(st.sampled_from([b"1" * 5000, b"0x" + b"f" * 5000, b"1e99999", b"-.inf", b"0o" + b"7" * 2000])))
        elif op == "long_line":
            lines.insert(at, b"x-long: " + b"a" * draw(st.integers(10_000, 100_000)))
        elif op == "delete_line" and lines:
            del lines[at]
        elif op == "swap_lines" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif op == "indent_shift":
            lines[at] = b" " * draw(st.integers(1, 7)) + lines[at]
        if op in {"tab_indent", "duplicate_line", "undefined_alias", "merge_key", "yaml_tag", "deep_flow", "huge_number", "long_line", "delete_line", "swap_lines", "indent_shift"}:
            raw = b"\n".join(lines)
    return seed, "text:" + ",".join(ops), raw


# --------------------------------------------------------------------------------------
# The check


LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+):(?: warning:)?(?: (?P<key>[^\s:][^:]*?):)? (?P<message>\S.*)$", re.S)


class CaseTimeout(BaseException):
    """One blueprint ran past CASE_SECONDS: a hang (a BaseException, so no `except Exception` swallows it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM in the main thread: a compile that never ends fails the test instead of hanging it."""

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_located(diagnostic: Diagnostic, path: Path) -> None:
    """file:line:col: [key.path:] message, as `backworks validate` prints it."""
    text = str(diagnostic)
    assert diagnostic.file == str(path), text
    assert diagnostic.line >= 1 and diagnostic.col >= 1, f"not located: {text}"
    assert diagnostic.message.strip(), f"no message: {text}"
    assert "Traceback" not in diagnostic.message, text
    match = LOCATED.match(text)
    assert match is not None and int(match["line"]) == diagnostic.line, f"not in file:line:col form: {text!r}"


@dataclass
class Outcome:
    valid: bool
    seconds: float
    errors: int


@dataclass
class Tally:
    """Counts per strategy, and the slowest case."""

    cases: Counter[str] = field(default_factory=Counter)
    valid: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    diagnostics: int = 0
    slowest: tuple[float, str] = (0.0, "")
    ops: Counter[str] = field(default_factory=Counter)

    def add(self, strategy: str, label: str, outcome: Outcome) -> None:
        self.cases[strategy] += 1
        (self.valid if outcome.valid else self.rejected)[strategy] += 1
        self.diagnostics += outcome.errors
        if outcome.seconds > self.slowest[0]:
            self.slowest = (outcome.seconds, f"{strategy} {label}")

    def lines(self) -> list[str]:
        out = []
        for strategy in sorted(self.cases):
            out.append(
                f"{strategy}: {self.cases[strategy]} blueprints, {self.valid[strategy]} valid, "
                f"{self.rejected[strategy]} rejected with located errors"
            )
        total = sum(self.cases.values())
        out.append(f"total: {total} blueprints, {sum(self.valid.values())} valid, {sum(self.rejected.values())} rejected, {self.diagnostics} located diagnostics, 0 uncaught exceptions, 0 hangs")
        out.append(f"slowest case: {self.slowest[0] * 1000:.0f} ms ({self.slowest[1][:100]})")
        return out


class BlueprintChecker:
    """Compiles blueprints in-process the way the core addon and `backworks validate` do."""

    def __init__(self, env: dict[str, str]) -> None:
        self.registry = PluginRegistry(builtin_plugins())
        self.plugins = {name: plugin() for name, plugin in self.registry.plugins.items()}
        self.env = env
        self.count = 0

    def compile(self, path: Path) -> Gateway:
        return compile_blueprint(path, self.registry, self.plugins, env=self.env, pages=[status_page_endpoints])

    def check(self, folder: Path, content: bytes | str, keep: Callable[[Path], bool] = lambda _: False) -> Outcome:
        """Write `content` as a blueprint in `folder`, compile it, and check what comes out."""
        self.count += 1
        path = folder / f"fuzz-{self.count}.yaml"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        started = time.monotonic()
        try:
            with time_limit(CASE_SECONDS):
                try:
                    self.compile(path)
                except BlueprintError as exc:
                    diagnostics = exc.diagnostics
                else:
                    diagnostics = []
            seconds = time.monotonic() - started
            for diagnostic in diagnostics:
                assert_located(diagnostic, path)
            return Outcome(valid=not diagnostics, seconds=seconds, errors=len(diagnostics))
        finally:
            if not keep(path):
                path.unlink(missing_ok=True)
