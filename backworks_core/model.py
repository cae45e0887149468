"""The blueprint's top-level pydantic models (format v1).

Plugin `config` blocks, middleware configs and endpoint `config.<section>` blocks are kept
as raw mappings here: each is validated afterwards by the model its plugin declares, so an
error inside `plugins.proxy.config` is reported with the proxy plugin's own field names.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from mitmproxy.utils import human
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from backworks_core.forwarding import parse_network
from backworks_core.handlers.mock_defaults import MockDefaults

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "ANY"}
)


def _resolve_blueprint_path(value: str, info: ValidationInfo) -> str:
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base_dir, value))


BlueprintPath = Annotated[str, AfterValidator(_resolve_blueprint_path)]


def _absolute_url_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return value


UrlPath = Annotated[str, AfterValidator(_absolute_url_path)]
"""A URL path such as /health: always absolute."""
"""A file named in a blueprint: relative to the blueprint's folder, never to the current directory."""


_SIZE_HINT = "expected a size: a number of bytes, or a string such as 512k, 64k, 10m or 1g"


def parse_size(value: Any) -> int:
    """Bytes from `1024`, "512k", "10m", "1g" (binary units, as mitmproxy's size options; "10mb" too)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{_SIZE_HINT}; got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        text = value.strip().lower()
        if len(text) > 2 and text.endswith("b") and text[-2] in "kmgt":
            text = text[:-1]
        try:
            parsed = human.parse_size(text) if text else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValueError(f"{_SIZE_HINT}; got {value!r}")
        size = parsed
    if size < 0:
        raise ValueError(f"a size cannot be negative; got {value!r}")
    return size


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^\\s*\\d+\\s*([kKmMgGtT][bB]?|[bB])?\\s*$"}]}),
]
"""Bytes as an int; accepts a number of bytes or a string such as 512k, 10m, 1g."""


class StrictModel(BaseModel):
    """Unknown keys are errors: nothing in a blueprint is dropped silently."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class TlsSettings(StrictModel):
    cert: BlueprintPath = Field(description="PEM file holding the certificate and its private key", examples=["certs/gateway.pem"])

    @field_validator("cert")
    @classmethod
    def _readable(cls, value: str) -> str:
        if not os.path.isfile(value):
            raise ValueError(f"certificate file {value} not found")
        return value


ADMIN_PORT = 9901  # Envoy's admin port: a port an operator of a gateway already knows


class AdminSettings(StrictModel):
    """`server.admin`: the admin listener (status page, status API, metrics), off the API's listener."""

    enabled: bool = Field(True, description="serve the admin listener; false: no status page or metrics anywhere but the endpoints the blueprint declares itself", examples=[False])
    host: str = Field("127.0.0.1", description="address the admin listener binds; it has no authentication, keep it on loopback", examples=["127.0.0.1"])
    port: int = Field(ADMIN_PORT, ge=0, le=65535, description="port of the admin listener (9901, as Envoy's admin); 0: any free port (logged); a taken port is a warning, the API is still served", examples=[9901, 0])
    expose_on_api: bool = Field(
        False,
        description="also serve the status page, status API and metrics on the API's own listener, to its clients (a located warning unless an auth middleware's path filter covers them)",
        examples=[True],
    )


def _trusted_proxy(value: str) -> str:
    parse_network(value)  # ValueError: the entry's own located error
    return value


TrustedProxy = Annotated[str, AfterValidator(_trusted_proxy)]
"""An IP address or CIDR network in `server.trusted_proxies`."""


class ServerSettings(StrictModel):
    host: str = Field("127.0.0.1", description="address `backworks run` listens on", examples=["0.0.0.0"])
    port: int = Field(8080, ge=1, le=65535, description="port `backworks run` listens on", examples=[9000])
    tls: TlsSettings | None = Field(None, description="serve HTTPS with this certificate", examples=[{"cert": "certs/gateway.pem"}])
    unmatched: Literal["not_found", "passthrough"] | None = Field(
        None,
        description="what happens to a request no endpoint matches; default: not_found in "
        "reverse mode, passthrough in every other mode",
        examples=["passthrough"],
    )
    passthrough_path: Literal["canonical", "as_sent"] = Field(
        "canonical",
        description="reverse mode, `unmatched: passthrough`: the path a request no endpoint matches is forwarded with: "
        "canonical (dot segments resolved, `//` merged, ambiguous encodings refused with 400, as for every endpoint) or "
        "as_sent (byte for byte as the client sent it, and the whole request untouched: no X-Request-ID or traceparent added, "
        "identity and forwarding headers not screened, no X-Request-ID on the answer; what `backworks capture` uses to record real traffic)",
        examples=["as_sent"],
    )
    max_body_size: Size | None = Field(
        None, description="largest request body on any endpoint (413), e.g. 10m; default: no limit (large bodies stream)", examples=["10m"]
    )
    max_header_size: Size | None = Field(
        64 * 1024, description="largest total of request header fields on any endpoint (431); default 64k; null: no limit", examples=["32k"]
    )
    trusted_proxies: list[TrustedProxy] = Field(
        default_factory=list,
        description="addresses or CIDR networks of the proxies in front of the gateway whose X-Forwarded-For, Forwarded, X-Real-IP "
        "and X-Forwarded-Proto/-Host are believed; the client address is then the right-most X-Forwarded-For address not in "
        "this list; default: none (the client address is the peer, and clients' forwarding headers are removed)",
        examples=[["10.0.0.0/8", "127.0.0.1"]],
    )
    admin: AdminSettings = Field(default_factory=AdminSettings, description="the admin listener: status page, status API and metrics, on 127.0.0.1:9901", examples=[{"port": 9902}])
    mock: MockDefaults = Field(
        default_factory=MockDefaults,
        description="defaults for every `handler: mock` endpoint (validate, unrecorded, prefer, replay_latency, latency_factor, max_latency, state); an endpoint's own `config.mock` key wins",
        examples=[{"replay_latency": True, "latency_factor": 0.5}],
    )


class DashboardSettings(StrictModel):
    enabled: bool = Field(True, description="serve the status page and its JSON API (`<path>/api/status`) on the admin listener (`server.admin`)", examples=[False])
    path: UrlPath = Field("/__backworks", description="where the status page is served on the admin listener", examples=["/status"])
    port: int | None = Field(None, ge=1, le=65535, description="deprecated (a warning): the admin listener's port when `server.admin.port` is not set; write `server.admin.port`", examples=[9090])
    host: str = Field("127.0.0.1", description="deprecated, with `port`: the admin listener's address when `server.admin.host` is not set", examples=["127.0.0.1"])


class PluginEntry(StrictModel):
    """One entry of `plugins` in map form (`name: {enabled, config}`)."""

    enabled: bool = Field(True, description="false switches the plugin off: endpoints and middlewares that use it are refused", examples=[False])
    config: dict[str, Any] = Field(default_factory=dict, description="the plugin's own settings (see `plugins.<plugin>.config`); `enabled` may be written here too", examples=[{"targets": [{"name": "api-1", "url": "http://127.0.0.1:3001"}]}])


class PluginListEntry(PluginEntry):
    """One entry of `plugins` in list form (`- type: name`)."""

    type: str = Field(description="the plugin's name, in the list form of `plugins`", examples=["proxy"])


class MiddlewareSettings(StrictModel):
    name: str = Field(min_length=1, description="the name endpoints list in their `middleware`; unique", examples=["browser-cors"])
    plugin: str = Field(min_length=1, description="the plugin that provides the middleware: auth, cors, fault, rate_limit or transform", examples=["cors"])
    config: dict[str, Any] = Field(default_factory=dict, description="the middleware's settings: the `path`/`methods` filter and the plugin's own keys (see `middlewares[].config`)", examples=[{"origins": ["https://app.example.com"]}])


class EndpointSettings(StrictModel):
    path: str = Field(description="the route: literal segments and parameters {name}, {name:int}, {name:uuid}, or {name:path} (the rest of the path, last segment only)", examples=["/orders/{id}"])
    method: str | list[str] | None = Field(None, description="a method or a list; `methods` is an alias", examples=["POST"])
    methods: str | list[str] | None = Field(None, description="the same as `method` (write one of the two); default GET", examples=[["GET", "HEAD"]])
    description: str | None = Field(None, description="what the endpoint is for; also the operation's description in captured OpenAPI", examples=["Look up one order"])
    host: str | None = Field(None, description="glob on the request's host", examples=["api.example.com"])
    handler: str = Field(min_length=1, description="what answers: static, mock, proxy, metrics, auth.register, auth.login, auth.validate, or a Python handler (handlers/x.py, handlers/x.py:function, package.module:function, or inline code defining `def handler(request)`)", examples=["proxy", "handlers/orders.py:get_order"])
    config: dict[str, Any] = Field(default_factory=dict, description="the handler's settings and the endpoint's own sections, each under its name (see `endpoints[].config.<section>`)", examples=[{"static": {"status": 200, "body": {"id": "{{path.id}}"}}}])
    middleware: list[str] = Field(default_factory=list, description="names of `middlewares` applied to this endpoint, in order (besides those whose own path/methods filter matches it)", examples=[["browser-cors"]])
    transform: dict[str, Any] | None = Field(None, description="endpoint-level transforms: {request: …, response: …}", examples=[{"response": {"headers": {"Cache-Control": "no-store"}}}])

    @field_validator("method", "methods")
    @classmethod
    def _known_methods(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        for item in items:
            if item.upper() not in HTTP_METHODS:
                raise ValueError(
                    f"unknown HTTP method {item!r} (expected one of {', '.join(sorted(HTTP_METHODS))})"
                )
        if isinstance(value, list) and not value:
            raise ValueError("expected at least one method")
        return value

    @model_validator(mode="after")
    def _one_method_key(self) -> EndpointSettings:
        if self.method is not None and self.methods is not None:
            raise ValueError("write either 'method' or 'methods', not both")
        return self

    @property
    def method_set(self) -> frozenset[str]:
        raw = self.method if self.method is not None else self.methods
        if raw is None:
            return frozenset({"GET"})
        items = [raw] if isinstance(raw, str) else raw
        return frozenset(item.upper() for item in items)


class BlueprintSettings(StrictModel):
    name: str = Field(min_length=1, description="the API's name, shown in logs and on the status page", examples=["orders-api"])
    version: str = Field("1.0.0", description="the blueprint's own version, as text (`1.0` in YAML is read as the text 1.0)", examples=["2.1.0"])
    description: str | None = Field(None, description="what the API is, for readers", examples=["Orders API in front of the legacy backend"])
    server: ServerSettings = Field(default_factory=ServerSettings, description="the listener of `backworks run`, and request limits for every endpoint", examples=[{"port": 9000}])
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings, description="the status page", examples=[{"path": "/status"}])
    plugins: dict[str, PluginEntry] | list[PluginListEntry] = Field(default_factory=dict, description="plugin settings: a map of plugin name to {enabled, config}, or a list of {type, enabled, config}; a plugin that an endpoint or middleware uses runs with its defaults even when not listed", examples=[{"proxy": {"config": {"targets": [{"name": "api-1", "url": "http://127.0.0.1:3001"}]}}}])
    middlewares: list[MiddlewareSettings] = Field(default_factory=list, description="named middlewares (auth, cors, rate_limit, fault, transform) that endpoints use", examples=[[{"name": "browser-cors", "plugin": "cors", "config": {"origins": ["https://app.example.com"], "path": "/api/*"}}]])
    endpoints: list[EndpointSettings] = Field(min_length=1, description="the routes, and what answers each; at least one", examples=[[{"path": "/hello", "handler": "static", "config": {"static": {"body": {"message": "hello"}}}}]])

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # `version: 1.0` is a float in YAML; authors mean the text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class MiddlewareFilter(StrictModel):
    """Keys every middleware config accepts; plugins extend this model with their own."""

    path: str | None = Field(None, description="a path glob: the middleware applies to the requests it matches, besides endpoints that list the middleware; `*` matches within and across segments", examples=["/api/*"])
    methods: list[str] | None = Field(None, description="the methods the middleware applies to (with `path`, both must match); default: all", examples=[["POST", "PUT", "DELETE"]])

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        upper = [item.upper() for item in value]
        unknown = [m for m in upper if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method {unknown[0]!r}")
        return upper

