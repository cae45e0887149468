"""pydantic errors become located, plain-words diagnostics, all reported at once."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.source import SourceDocument, parse_yaml
from backworks_core.validation import Duration, allowed_keys, did_you_mean, parse_duration, validate_section

# --------------------------------------------------------------------------------------
# Example models, shaped like a small blueprint


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Proxy(Strict):
    upstream: str
    timeout: Duration = 30.0
    balance: Literal["round_robin", "random", "least_conn"] = "round_robin"
    headers: dict[str, str] = {}


class Mock(Strict):
    status: int = 200
    body: str | None = None
    status_map: dict[int, int] = {}


class EndpointConfig(Strict):
    proxy: Proxy | None = None
    mock: Mock | None = None


class Endpoint(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str
    methods: str | list[str] = Field(default="GET", alias="method")
    config: EndpointConfig
    cache_ttl: Duration | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a path must start with '/'; got {value!r}")
        return value


class HttpCheck(Strict):
    kind: Literal["http"]
    url: str
    interval: Duration = 10.0


class TcpCheck(Strict):
    kind: Literal["tcp"]
    port: int


class Limits(Strict):
    max_body: int = 1024
    min_body: int = 0

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        assert self.min_body <= self.max_body, "min_body must not exceed max_body"
        return self


class Blueprint(Strict):
    name: str
    port: int = 8080
    debug: bool = False
    endpoints: list[Endpoint] = []
    services: dict[str, Proxy] = {}
    health: Annotated[HttpCheck | TcpCheck, Field(discriminator="kind")] | None = None
    fallback: Proxy | Mock | None = None
    limits: Limits = Limits()


def load(text: str, env: dict[str, str] | None = None) -> SourceDocument:
    return parse_yaml(text, "bp.yaml", env or {})


def check(text: str, env: dict[str, str] | None = None, model: type[BaseModel] = Blueprint) -> list[str]:
    """Rendered diagnostics from source and validation together, as the CLI would show them."""
    doc = load(text, env)
    result, diagnostics = validate_section(model, doc.data, doc)
    assert (result is None) == bool(diagnostics) or bool(doc.diagnostics)
    return [str(d) for d in sorted(doc.diagnostics + diagnostics)]


# --------------------------------------------------------------------------------------
# Everything at once

MANY_MISTAKES = """\
nmae: demo
port: eighty
debug: maybe
endpoints:
  - path: api
    method: 5
    config:
      proxy:
        upstrem: http://users:8080
        timeout: abc
        balance: roundrobin
  - path: /orders
    method: [GET, 7]
    cache_ttl: -1
    config:
      mock: {status: ok, status_map: {404: 200, x: 1}}
      mocks: {}
  - config: []
services:
  billing: {upstream: [a], timeout: 1h}
  audit:
    timeout: 250ms
health: {kind: htp, url: http://x}
fallback: {upstream: u, colour: red}
limits: {max_body: 1, min_body: 2}
"""

MANY_MISTAKES_EXPECTED = [
    "bp.yaml:1:1: name: required key 'name' is missing",
    "bp.yaml:1:1: nmae: unknown key 'nmae'; did you mean 'name'?",
    "bp.yaml:2:7: port: expected an integer, got string 'eighty'",
    "bp.yaml:3:8: debug: expected a boolean (true or false), got string 'maybe'",
    "bp.yaml:5:11: endpoints[0].path: a path must start with '/'; got 'api'",
    "bp.yaml:6:13: endpoints[0].method: expected a string or a list of strings, got integer 5",
    "bp.yaml:9:9: endpoints[0].config.proxy.upstream: required key 'upstream' is missing",
    "bp.yaml:9:9: endpoints[0].config.proxy.upstrem: unknown key 'upstrem'; did you mean 'upstream'?",
    "bp.yaml:10:18: endpoints[0].config.proxy.timeout: expected a duration: a number of seconds, "
    "or a string such as 250ms, 30s, 5m or 1h; got 'abc'",
    "bp.yaml:11:18: endpoints[0].config.proxy.balance: expected one of 'round_robin', 'random', "
    "'least_conn'; got 'roundrobin'; did you mean 'round_robin'?",
    "bp.yaml:13:19: endpoints[1].method[1]: expected a string, got integer 7",
    "bp.yaml:14:16: endpoints[1].cache_ttl: a duration cannot be negative; got -1",
    "bp.yaml:16:22: endpoints[1].config.mock.status: expected an integer, got string 'ok'",
    "bp.yaml:16:49: endpoints[1].config.mock.status_map.x: invalid key: expected an integer, got string 'x'",
    "bp.yaml:17:7: endpoints[1].config.mocks: unknown key 'mocks'; did you mean 'mock'?",
    "bp.yaml:18:5: endpoints[2].path: required key 'path' is missing",
    "bp.yaml:18:13: endpoints[2].config: expected a mapping, got list",
    "bp.yaml:20:23: services.billing.upstream: expected a string, got list",
    "bp.yaml:22:5: services.audit.upstream: required key 'upstream' is missing",
    "bp.yaml:23:16: health.kind: expected one of 'http', 'tcp'; got 'htp'; did you mean 'http'?",
    "bp.yaml:24:25: fallback.colour: unknown key 'colour' (expected one of: upstream, timeout, balance, headers)",
    "bp.yaml:25:9: limits: min_body must not exceed max_body",
]


def test_every_mistake_is_reported_at_once_with_place_path_and_message() -> None:
    assert check(MANY_MISTAKES) == MANY_MISTAKES_EXPECTED


def test_diagnostics_are_real_diagnostics_and_fit_in_a_blueprint_error() -> None:
    doc = load(MANY_MISTAKES)
    result, diagnostics = validate_section(Blueprint, doc.data, doc)
    assert result is None
    assert all(isinstance(d, Diagnostic) and d.severity == "error" for d in diagnostics)
    assert len({(d.key_path, d.message) for d in diagnostics}) == len(diagnostics)
    assert diagnostics[2] == Diagnostic("bp.yaml", 2, 7, "port", "expected an integer, got string 'eighty'")
    rendered = str(BlueprintError(diagnostics))
    assert rendered.startswith(f"{len(MANY_MISTAKES_EXPECTED)} errors in blueprint:\n  bp.yaml:1:1: ")
    assert "\n  bp.yaml:25:9: limits: min_body must not exceed max_body" in rendered


def test_a_valid_blueprint_returns_the_model() -> None:
    doc = load(
        "name: demo\n"
        "endpoints:\n"
        "  - path: /a\n"
        "    method: [GET, POST]\n"
        "    cache_ttl: 1m30s\n"
        "    config: {proxy: {upstream: 'http://u', timeout: 250ms}}\n"
        "  - {path: /b, methods: PUT, config: {mock: {status_map: {404: 200}}}}\n"
        "health: {kind: tcp, port: 5432}\n"
        "fallback: {status: 503}\n"
    )
    result, diagnostics = validate_section(Blueprint, doc.data, doc)
    assert diagnostics == []
    assert isinstance(result, Blueprint)
    first, second = result.endpoints
    assert first.methods == ["GET", "POST"] and first.cache_ttl == 90.0
    assert first.config.proxy is not None and first.config.proxy.timeout == 0.25
    assert second.methods == "PUT" and second.config.mock is not None
    assert second.config.mock.status_map == {404: 200}
    assert isinstance(result.health, TcpCheck)
    assert isinstance(result.fallback, Mock)


# --------------------------------------------------------------------------------------
# One rule at a time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown keys: at the key, with a suggestion or the list of keys
        ("name: x\nendpoints:\n  - path: /a\n    config: {}\n    metod: GET\n", [
            "bp.yaml:5:5: endpoints[0].metod: unknown key 'metod'; did you mean 'method'?",
        ]),
        ("name: x\nNAME: y\n", ["bp.yaml:2:1: NAME: unknown key 'NAME'; did you mean 'name'?"]),
        ("name: x\nzzz: 1\n", [
            "bp.yaml:2:1: zzz: unknown key 'zzz' (expected one of: name, port, debug, endpoints, "
            "services, health, fallback, limits)",
        ]),
        ("name: x\n42: answer\n", [
            "bp.yaml:2:1: [42]: unknown key 42 (expected one of: name, port, debug, endpoints, "
            "services, health, fallback, limits)",
        ]),
        # missing keys: at the mapping that lacks them
        ("port: 1\n", ["bp.yaml:1:1: name: required key 'name' is missing"]),
        ("name: x\nservices:\n  a:\n    timeout: 5\n", [
            "bp.yaml:4:5: services.a.upstream: required key 'upstream' is missing",
        ]),
        ("name: x\nservices:\n  a: {}\n", ["bp.yaml:3:6: services.a.upstream: required key 'upstream' is missing"]),
        # wrong types, with the YAML type and value that was found
        ("name: [x]\n", ["bp.yaml:1:7: name: expected a string, got list"]),
        ("name: 5\n", ["bp.yaml:1:7: name: expected a string, got integer 5"]),
        ("name: x\nport: 1.5\n", ["bp.yaml:2:7: port: expected an integer, got float 1.5"]),
        ("name: x\nport: [1]\n", ["bp.yaml:2:7: port: expected an integer, got list"]),
        ("name: x\ndebug: 2\n", ["bp.yaml:2:8: debug: expected a boolean (true or false), got integer 2"]),
        ("name: x\nendpoints: {}\n", ["bp.yaml:2:12: endpoints: expected a list, got mapping"]),
        ("name: x\nservices: [a]\n", ["bp.yaml:2:11: services: expected a mapping, got list"]),
        ("name: x\nservices:\n  a:\n", ["bp.yaml:3:5: services.a: expected a mapping, got null"]),
        ("name: x\nendpoints: [{path: /a, config: {proxy: 'http://u'}}]\n", [
            "bp.yaml:2:40: endpoints[0].config.proxy: expected a mapping, got string 'http://u'",
        ]),
        ("name: " + "x" * 60 + "\nport: " + "y" * 60 + "\n", [
            "bp.yaml:2:7: port: expected an integer, got string 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy...'",
        ]),
        # str | list[str] under an alias: one message when the value fits neither
        ("name: x\nendpoints: [{path: /a, config: {}, method: {GET: 1}}]\n", [
            "bp.yaml:2:44: endpoints[0].method: expected a string or a list of strings, got mapping",
        ]),
        ("name: x\nendpoints: [{path: /a, config: {}, methods: [[GET]]}]\n", [
            "bp.yaml:2:46: endpoints[0].methods[0]: expected a string, got list",
        ]),
        # a discriminated union: its tag first, then the chosen member only
        ("name: x\nhealth: {url: http://h}\n", ["bp.yaml:2:9: health.kind: required key 'kind' is missing"]),
        ("name: x\nhealth: {kind: tcp, port: http}\n", [
            "bp.yaml:2:27: health.port: expected an integer, got string 'http'",
        ]),
        ("name: x\nhealth: {kind: 7}\n", ["bp.yaml:2:16: health.kind: expected one of 'http', 'tcp'; got integer 7"]),
        ("name: x\nhealth: http\n", ["bp.yaml:2:9: health: expected a mapping, got string 'http'"]),
        # a plain union of models: the member that knows the most keys is reported
        ("name: x\nfallback: {status: x, body: 1}\n", [
            "bp.yaml:2:20: fallback.status: expected an integer, got string 'x'",
            "bp.yaml:2:29: fallback.body: expected a string, got integer 1",
        ]),
        ("name: x\nfallback: 5\n", ["bp.yaml:2:11: fallback: expected a mapping, got integer 5"]),
        # Optional[Duration]
        ("name: x\nendpoints: [{path: /a, config: {}, cache_ttl: soon}]\n", [
            "bp.yaml:2:47: endpoints[0].cache_ttl: expected a duration: a number of seconds, or a string "
            "such as 250ms, 30s, 5m or 1h; got 'soon'",
        ]),
        # model-level checks are located at their mapping
        ("name: x\nlimits:\n  max_body: 1\n  min_body: 2\n", [
            "bp.yaml:3:3: limits: min_body must not exceed max_body",
        ]),
    ],
)
def test_error_translation(text: str, expected: list[str]) -> None:
    assert check(text) == expected


def test_a_value_already_reported_by_the_source_is_not_reported_again() -> None:
    # an unset variable keeps the "${PORT}" text, which is not an integer: one message, not two
    assert check("name: x\nport: ${PORT}\nservices:\n  a: {upstream: '${UP}', timeout: soon}\n") == [
        "bp.yaml:2:7: port: environment variable PORT is not set (write ${PORT:-default} to give a default)",
        "bp.yaml:4:17: services.a.upstream: environment variable UP is not set "
        "(write ${UP:-default} to give a default)",
        "bp.yaml:4:35: services.a.timeout: expected a duration: a number of seconds, or a string such as "
        "250ms, 30s, 5m or 1h; got 'soon'",
    ]


def test_env_values_are_coerced_by_the_model() -> None:
    env = {"PORT": "9090", "DEBUG": "true", "TTL": "5m", "HOST": "users"}
    doc = load(
        "name: ${NAME:-demo}\nport: ${PORT}\ndebug: ${DEBUG}\n"
        "endpoints:\n  - path: /u\n    cache_ttl: ${TTL}\n    config: {proxy: {upstream: 'http://${HOST}:80'}}\n",
        env,
    )
    result, diagnostics = validate_section(Blueprint, doc.data, doc)
    assert doc.diagnostics == [] and diagnostics == []
    assert isinstance(result, Blueprint)
    assert (result.name, result.port, result.debug) == ("demo", 9090, True)
    assert result.endpoints[0].cache_ttl == 300.0
    assert result.endpoints[0].config.proxy is not None
    assert result.endpoints[0].config.proxy.upstream == "http://users:80"


def test_a_bad_env_value_is_reported_by_the_validator_at_its_place() -> None:
    assert check("name: x\nport: ${PORT}\n", {"PORT": "http"}) == [
        "bp.yaml:2:7: port: expected an integer, got string 'http'",
    ]


def test_validate_section_prefixes_base_loc() -> None:
    doc = load("name: x\nendpoints:\n  - path: /a\n    config: {proxy: {upstream: u, balance: rnd}}\n")
    result, diagnostics = validate_section(Endpoint, doc.data["endpoints"][0], doc, ("endpoints", 0))
    assert result is None
    assert [str(d) for d in diagnostics] == [
        "bp.yaml:4:44: endpoints[0].config.proxy.balance: expected one of 'round_robin', 'random', "
        "'least_conn'; got 'rnd'; did you mean 'random'?"
    ]


def test_validate_section_passes_context_to_validators() -> None:
    class Route(Strict):
        service: str

        @field_validator("service")
        @classmethod
        def _known(cls, value: str, info: ValidationInfo) -> str:
            known = (info.context or {}).get("services", [])
            if value not in known:
                hint = did_you_mean(value, known)
                raise ValueError(f"unknown service {value!r}" + (f"; did you mean {hint!r}?" if hint else ""))
            return value

    doc = load("routes:\n  - service: biling\n")
    result, diagnostics = validate_section(
        Route, doc.data["routes"][0], doc, ("routes", 0), context={"services": ["billing", "audit"]}
    )
    assert result is None
    assert [str(d) for d in diagnostics] == [
        "bp.yaml:2:14: routes[0].service: unknown service 'biling'; did you mean 'billing'?"
    ]
    ok, none = validate_section(Route, {"service": "audit"}, doc, context={"services": ["audit"]})
    assert none == [] and isinstance(ok, Route)


def test_other_pydantic_errors_keep_their_message_and_place() -> None:
    class Bounded(Strict):
        retries: int = Field(default=0, ge=0, le=5)

    assert check("retries: 9\n", model=Bounded) == ["bp.yaml:1:10: retries: input should be less than or equal to 5"]


def test_duplicate_keys_and_validation_errors_are_reported_together() -> None:
    assert check("name: x\nport: 1\nport: nope\n") == [
        "bp.yaml:3:1: port: duplicate key 'port' (first at line 2)",
        "bp.yaml:3:7: port: expected an integer, got string 'nope'",
    ]


def test_merge_key_errors_point_at_the_anchor() -> None:
    text = (
        "x-defaults: &proxy\n"
        "  timeout: forever\n"
        "name: x\n"
        "services:\n"
        "  a:\n"
        "    <<: *proxy\n"
        "    upstream: http://a\n"
    )
    assert check(text) == [
        "bp.yaml:1:1: x-defaults: unknown key 'x-defaults' (expected one of: name, port, debug, endpoints, "
        "services, health, fallback, limits)",
        "bp.yaml:2:12: services.a.timeout: expected a duration: a number of seconds, or a string such as "
        "250ms, 30s, 5m or 1h; got 'forever'",
    ]


def test_int_keys_are_validated_as_int_keys() -> None:
    doc = load("status_map: {404: 200, 500: oops}\n")
    result, diagnostics = validate_section(Mock, doc.data, doc)
    assert result is None
    assert [str(d) for d in diagnostics] == ["bp.yaml:1:29: status_map[500]: expected an integer, got string 'oops'"]


# --------------------------------------------------------------------------------------
# Helpers


@pytest.mark.parametrize(
    ("word", "candidates", "expected"),
    [
        ("upstrem", ["upstream", "timeout"], "upstream"),
        ("UPSTREAM", ["upstream"], "upstream"),
        ("Timeout", ["timeout_ms", "timeout"], "timeout"),
        ("roundrobin", ["round_robin", "random"], "round_robin"),
        ("xyz", ["upstream", "timeout"], None),
        ("anything", [], None),
    ],
)
def test_did_you_mean(word: str, candidates: list[str], expected: str | None) -> None:
    assert did_you_mean(word, candidates) == expected


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        ((), ["name", "port", "debug", "endpoints", "services", "health", "fallback", "limits"]),
        (("endpoints", 0), ["path", "method", "methods", "config", "cache_ttl"]),
        (("endpoints", 3, "config"), ["proxy", "mock"]),
        (("endpoints", 3, "config", "proxy"), ["upstream", "timeout", "balance", "headers"]),
        (("services", "anything"), ["upstream", "timeout", "balance", "headers"]),
        (("health",), ["kind", "url", "interval", "port"]),
        (("fallback",), ["upstream", "timeout", "balance", "headers", "status", "body", "status_map"]),
        (("services", "a", "headers"), None),
        (("name",), None),
        (("nope",), None),
        (("endpoints", "x"), None),
    ],
)
def test_allowed_keys(loc: tuple[Any, ...], expected: list[str] | None) -> None:
    assert allowed_keys(Blueprint, loc) == expected


def test_allowed_keys_uses_aliases_unless_names_are_allowed_too() -> None:
    class Aliased(Strict):
        methods: list[str] = Field(default=[], alias="method")

    assert allowed_keys(Aliased, ()) == ["method"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (0, 0.0),
        (0.5, 0.5),
        ("30", 30.0),
        ("0.5", 0.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        (" 10s ", 10.0),
    ],
)
def test_duration_accepts_seconds_and_unit_strings(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert TypeAdapter(Duration).validate_python(value) == pytest.approx(seconds)


HINT = "expected a duration: a number of seconds, or a string such as 250ms, 30s, 5m or 1h"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", f"{HINT}; got 'abc'"),
        ("", f"{HINT}; got ''"),
        ("10", None),
        ("10 s", f"{HINT}; got '10 s'"),
        ("5d", f"{HINT}; got '5d'"),
        ("5S", f"{HINT}; got '5S'"),
        ("-5s", f"{HINT}; got '-5s'"),
        ("s", f"{HINT}; got 's'"),
        (-1, "a duration cannot be negative; got -1"),
        (-0.5, "a duration cannot be negative; got -0.5"),
        (True, f"{HINT}; got boolean true"),
        (None, f"{HINT}; got null"),
        ([1], f"{HINT}; got list"),
        (float("inf"), f"{HINT}; got float inf"),
    ],
)
def test_duration_rejects_anything_else(value: Any, message: str | None) -> None:
    if message is None:
        parse_duration(value)
        return
    with pytest.raises(ValueError) as raised:
        parse_duration(value)
    assert str(raised.value) == message
    with pytest.raises(ValidationError):
        TypeAdapter(Duration).validate_python(value)
