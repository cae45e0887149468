"""The proxy plugin's settings: the original example's block, bad values, and endpoint `config.proxy`."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from addons.proxy.handler import ProxyHandler
from addons.proxy.pool import Target
from addons.proxy.settings import EndpointProxyConfig, PoolConfig, ProxyPluginConfig, TargetConfig
from backworks_core.diagnostics import BlueprintError
from backworks_core.transforms import add_prefix, strip_prefix

from .conftest import diagnostic_lines

ORIGINAL = Path(__file__).parents[1] / "data" / "original-examples" / "proxy-advanced.yaml"


def original_example() -> dict:
    return yaml.safe_load(ORIGINAL.read_text())


# -- the original proxy-advanced example ----------------------------------------------------


def test_original_plugin_block_validates_as_is():
    block = original_example()["plugins"]["proxy"]
    assert block["enabled"] is True
    config = ProxyPluginConfig.model_validate(block["config"])
    assert [(t.name, t.url, t.weight, t.timeout, t.retry_attempts) for t in config.targets] == [
        ("backend-1", "http://localhost:3001", 1.0, 30.0, 3),
        ("backend-2", "http://localhost:3002", 2.0, 30.0, 3),
        ("backend-3", "http://localhost:3003", 1.0, 30.0, 3),
    ]
    assert config.targets[1].health_check is not None
    assert config.targets[1].health_check.path == "/health"
    assert config.targets[1].health_check.unhealthy_threshold == 3
    assert config.load_balancing == "weighted_round_robin"
    assert config.circuit_breaker is not None
    assert (config.circuit_breaker.failure_threshold, config.circuit_breaker.recovery_timeout,
            config.circuit_breaker.half_open_max_calls) == (5, 60.0, 3)
    assert config.health_check is not None
    assert (config.health_check.enabled, config.health_check.interval, config.health_check.timeout) == (True, 30.0, 5.0)
    assert config.metrics is not None and (config.metrics.enabled, config.metrics.detailed) == (True, True)
    assert config.transform_request is not None
    assert config.transform_request.headers == {"X-Proxy-Version": "1.0", "X-Load-Balancer": "backworks"}
    assert config.transform_response is not None
    assert config.transform_response.headers == {"X-Proxied-By": "backworks-proxy-plugin"}


def test_original_proxy_endpoints_load_and_compile(project, compile_gateway):
    """The example minus its not-yet-implemented parts (the metrics endpoint, the dashboard)."""
    data = original_example()
    del data["dashboard"]
    data["endpoints"] = [e for e in data["endpoints"] if e["handler"] != "metrics"]
    path = project.blueprint(yaml.safe_dump(data, sort_keys=False))
    gateway = compile_gateway(path)
    assert len(gateway.endpoints) == 9
    assert [e.spec.handler for e in gateway.endpoints].count("proxy") == 8
    users = gateway.endpoints[1]
    assert users.template == "/api/users/{id}"
    assert isinstance(users.handler, ProxyHandler)
    assert [t.name for t in users.handler.pool.targets] == ["backend-1", "backend-2", "backend-3"]
    # settings that are validated but not yet applied are said so, at their place
    warnings = [(w.key_path, w.message) for w in gateway.warnings]
    assert not any(path.endswith("load_balancing") for path, _ in warnings)  # all policies apply
    # health checks, outlier detection and breakers apply now; only the proxy's own metrics wait
    assert not any(path.endswith(("circuit_breaker", "health_check", "outlier_detection")) for path, _ in warnings)
    assert all(w.severity == "warning" for w in gateway.warnings)


# -- bad values, with good messages ---------------------------------------------------------


def test_bad_urls_policies_and_hash_on_are_located(project, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          proxy:
            config:
              targets:
                - {name: a, url: "ftp://x"}
                - {name: b, url: "localhost:3001", weight: 0}
                - {name: c, url: "http://h/base?x=1"}
              load_balancing: weighted_round_robbin
              hash_on: header
              upstreams:
                orders:
                  targets: [{name: o, url: "http://o"}]
                  hash_on: "cookie:"
                  retries: {retry_on: [timeout, 502, sometimes]}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    assert diagnostic_lines(load_errors(path)) == [
        f"{path}:6:26: plugins.proxy.config.targets[0].url: expected an http:// or https:// URL with a host, got 'ftp://x'",
        f"{path}:7:26: plugins.proxy.config.targets[1].url: expected an http:// or https:// URL with a host, got 'localhost:3001'",
        f"{path}:7:52: plugins.proxy.config.targets[1].weight: input should be greater than 0",
        f"{path}:8:26: plugins.proxy.config.targets[2].url: a target URL takes no query or fragment, got 'http://h/base?x=1'",
        f"{path}:9:23: plugins.proxy.config.load_balancing: expected one of 'round_robin', 'weighted_round_robin', "
        "'least_connections', 'ip_hash', 'consistent_hash', 'random'; got 'weighted_round_robbin'; "
        "did you mean 'weighted_round_robin'?",
        f"{path}:10:16: plugins.proxy.config.hash_on: expected ip, path, header:NAME, cookie:NAME or query:NAME, got 'header'",
        f"{path}:14:20: plugins.proxy.config.upstreams.orders.hash_on: expected ip, path, header:NAME, cookie:NAME "
        "or query:NAME, got 'cookie:'",
        f"{path}:15:46: plugins.proxy.config.upstreams.orders.retries.retry_on[2]: expected one of 'connect_failure', "
        "'timeout', 'reset' or an integer, got string 'sometimes'",
    ]


@pytest.mark.parametrize("hash_on", ["ip", "path", "header:X-User", "cookie:session", "query:id"])
def test_hash_on_accepts_every_documented_key(hash_on):
    assert PoolConfig(hash_on=hash_on).hash_on == hash_on


@pytest.mark.parametrize("hash_on", ["header", "header:", "host", "cookie", "body:x", ""])
def test_hash_on_rejects_others(hash_on):
    with pytest.raises(ValidationError, match="expected ip, path, header:NAME, cookie:NAME or query:NAME"):
        PoolConfig(hash_on=hash_on)


def test_target_names_are_unique():
    with pytest.raises(ValidationError, match="two targets are named 'a'"):
        PoolConfig(targets=[{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}])


def test_target_url_with_base_path():
    target = Target.from_config(TargetConfig(name="t", url="https://api.example.com:8443/v1/"))
    assert (target.origin, target.base_path) == ("https://api.example.com:8443", "/v1")
    assert Target.from_config(TargetConfig(name="t", url="http://h")).base_path == ""


def test_durations_in_the_proxy_settings():
    pool = PoolConfig(timeout="1m", retries={"per_try_timeout": "250ms", "backoff": 0.1})
    assert pool.timeout == 60.0
    assert pool.retries is not None and pool.retries.per_try_timeout == 0.25


def test_endpoint_prefixes_must_be_absolute():
    with pytest.raises(ValidationError, match="must start with '/', got 'api'"):
        EndpointProxyConfig(strip_prefix="api")
    assert EndpointProxyConfig(method="post").method == "POST"


def test_transform_header_values_cannot_carry_crlf():
    with pytest.raises(ValidationError, match="header 'X-A' carries CR or LF"):
        PoolConfig(transform_request={"headers": {"X-A": "a\r\nB: c"}})
    with pytest.raises(ValidationError, match="extra"):
        PoolConfig(transform_request={"bodies": {"set": {"a": 1}}})


# -- endpoint config.proxy ------------------------------------------------------------------

PROXY_PLUGIN = """
name: x
plugins:
  proxy:
    config:
      targets: [{name: main, url: "http://127.0.0.1:3001"}]
      upstreams:
        orders: {targets: [{name: o1, url: "http://127.0.0.1:3002"}]}
        empty: {}
endpoints:
"""


def build_errors(compile_gateway, path):
    with pytest.raises(BlueprintError) as info:
        compile_gateway(path)
    return info.value.diagnostics


def test_proxy_path_template_with_an_unknown_parameter(project, compile_gateway):
    path = project.blueprint(
        PROXY_PLUGIN
        + """
  - path: "/api/users/{id}"
    handler: proxy
    config:
      proxy: {path: "/users/{idd}"}
  - path: "/api/things/{a}/{b}"
    handler: proxy
    config:
      proxy: {path: "/t/{zzz}"}
"""
    )
    assert diagnostic_lines(build_errors(compile_gateway, path)) == [
        f"{path}:14:21: endpoints[0].config.proxy.path: path parameter {{idd}} is not in the endpoint's path "
        "'/api/users/{id}'; did you mean {id}?",
        f"{path}:18:21: endpoints[1].config.proxy.path: path parameter {{zzz}} is not in the endpoint's path "
        "'/api/things/{a}/{b}'",
    ]


def test_unknown_upstream_pool(project, compile_gateway):
    path = project.blueprint(
        PROXY_PLUGIN
        + """
  - path: /a
    handler: proxy
    config:
      proxy: {upstream: ordres}
  - path: /b
    handler: proxy
    config:
      proxy: {upstream: nothing_close}
  - path: /c
    handler: proxy
    config:
      proxy: {upstream: empty}
"""
    )
    assert diagnostic_lines(build_errors(compile_gateway, path)) == [
        f"{path}:14:25: endpoints[0].config.proxy.upstream: no upstream pool named 'ordres'; did you mean 'orders'?",
        f"{path}:18:25: endpoints[1].config.proxy.upstream: no upstream pool named 'nothing_close' (pools: orders, empty)",
        f"{path}:22:14: endpoints[2].config.proxy: upstream pool 'empty' has no targets",
    ]


def test_proxy_handler_without_any_targets(project, compile_gateway):
    path = project.blueprint("name: x\nendpoints:\n  - {path: /a, handler: proxy}\n")
    (error,) = build_errors(compile_gateway, path)
    assert error.key_path == "endpoints[0].handler"
    assert error.message.startswith("handler 'proxy' needs upstream targets")


def test_valid_endpoint_proxy_config_compiles(project, compile_gateway):
    path = project.blueprint(
        PROXY_PLUGIN
        + """
  - path: "/api/orders/{id:int}/{rest:path}"
    handler: proxy
    config:
      proxy: {upstream: orders, path: "/o/{id}/{rest}", strip_prefix: /api, add_prefix: /v2, timeout: 5s}
"""
    )
    (endpoint,) = compile_gateway(path).endpoints
    handler = endpoint.handler
    assert isinstance(handler, ProxyHandler)
    assert handler.pool.name == "orders"
    assert handler.timeout == 5.0
    assert handler.path.parts == [("literal", "o"), ("param", "id"), ("path", "rest")]


# -- prefixes on segment boundaries ---------------------------------------------------------


@pytest.mark.parametrize(
    "path, prefix, expected",
    [
        ("/api/users", "/api", "/users"),
        ("/api/users", "/api/", "/users"),
        ("/api", "/api", "/"),
        ("/api/", "/api", "/"),
        ("/apix/users", "/api", "/apix/users"),
        ("/apix", "/api", "/apix"),
        ("/other/api/x", "/api", "/other/api/x"),
        ("/a/b/c", "/a/b", "/c"),
        ("/users", "/", "/users"),
    ],
)
def test_strip_prefix(path, prefix, expected):
    assert strip_prefix(path, prefix) == expected


@pytest.mark.parametrize(
    "path, prefix, expected",
    [
        ("/users", "/v2", "/v2/users"),
        ("/users", "/v2/", "/v2/users"),
        ("/", "/v2", "/v2"),
        ("/", "/", "/"),
        ("/users", "/", "/users"),
    ],
)
def test_add_prefix(path, prefix, expected):
    assert add_prefix(path, prefix) == expected


def test_https_targets_share_one_tls_context_per_ca_file_version(tmp_path: Path) -> None:
    """Loading CAs takes ~50 ms: paid once per CA file (and again once it is edited), not per target."""
    from tests.certs import write_self_signed

    ca, _ = write_self_signed(tmp_path / "one")
    other, _ = write_self_signed(tmp_path / "two")

    def target(name: str, **settings: object) -> Target:
        return Target.from_config(TargetConfig.model_validate({"name": name, "url": "https://127.0.0.1:8443", **settings}))

    first, second = target("a", ca_file=str(ca)), target("b", ca_file=str(ca))
    assert first.ssl_context is second.ssl_context
    assert target("c", ca_file=str(other)).ssl_context is not first.ssl_context
    assert target("d").ssl_context is target("e").ssl_context is not first.ssl_context  # the system CAs
    unverified = target("f", tls_verify=False).ssl_context
    assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
    assert first.ssl_context is not None and first.ssl_context.verify_mode == ssl.CERT_REQUIRED
    ca.write_bytes(other.read_bytes() + b"\n")  # edited: a new version, read again
    assert target("g", ca_file=str(ca)).ssl_context is not first.ssl_context
    assert Target.from_config(TargetConfig.model_validate({"name": "h", "url": "http://127.0.0.1:80"})).ssl_context is None


# -- a path parameter never leaves its template's literal prefix ---------------------------


class _Params:
    def __init__(self, **params: str) -> None:
        self.params = params


@pytest.mark.parametrize(
    "template, endpoint, params, refused",
    [
        ("/public/{p}", "/files/{p}", {"p": "a.txt"}, None),
        ("/public/{p}", "/files/{p}", {"p": ".."}, "dot segment"),
        ("/public/{p}", "/files/{p}", {"p": "."}, "dot segment"),
        ("/public/{p}", "/files/{p}", {"p": ""}, None),  # "/public/": still inside
        ("/public/{p}", "/files/{p}", {"p": "..;x"}, "';'"),
        ("/public/{p}", "/files/{p}", {"p": "a/b"}, "escaped slash"),  # quoted as %2F
        ("/public/{rest}", "/files/{rest:path}", {"rest": "a/b"}, None),
        ("/public/{rest}", "/files/{rest:path}", {"rest": "../config.txt"}, "dot segment"),
        ("/public/{rest}", "/files/{rest:path}", {"rest": "a/../../config.txt"}, "dot segment"),
        ("/public/{rest}", "/files/{rest:path}", {"rest": "a//b"}, "empty segment"),
        ("/{rest}/x", "/files/{rest:path}", {"rest": ".."}, "dot segment"),
    ],
)
def test_a_rendered_upstream_path_is_refused_when_a_value_climbs_out(project, compile_gateway, template, endpoint, params, refused):
    from backworks_core.paths import PathRefused

    path = project.blueprint(PROXY_PLUGIN + f'  - {{path: "{endpoint}", handler: proxy, config: {{proxy: {{path: "{template}"}}}}}}\n')
    (plan,) = compile_gateway(path).endpoints
    upstream_path = plan.handler.path
    if refused is None:
        assert upstream_path.render(_Params(**params), "/ignored").startswith("/public/")
    else:
        with pytest.raises(PathRefused, match=refused):
            upstream_path.render(_Params(**params), "/ignored")


def test_the_template_prefix_is_its_literal_start(project, compile_gateway):
    path = project.blueprint(
        PROXY_PLUGIN
        + """
  - {path: "/a/{x}", handler: proxy, config: {proxy: {path: "/v1/files/{x}/raw"}}}
  - {path: "/b/{x}", handler: proxy, config: {proxy: {path: "/{x}"}}}
  - {path: "/c", handler: proxy, config: {proxy: {path: "/fixed/path"}}}
"""
    )
    assert [e.handler.path.prefix for e in compile_gateway(path).endpoints] == ["/v1/files/", "/", ""]
