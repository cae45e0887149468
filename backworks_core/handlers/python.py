"""Python handlers: a file, `file.py:function`, `package.module:function`, or inline code.

Handlers are imported when the blueprint loads, so a missing file or function is a located
blueprint error rather than a failing request. Sync handlers run in a worker thread so a slow
one never stalls the proxy's event loop; both kinds are bounded by `config.python.timeout`.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.coretypes.multidict import MultiDict
from pydantic import Field

from backworks_core.bodies import BodyError, loads_json
from backworks_core.context import Identity, RequestContext, json_bytes, reason_phrase, utf8
from backworks_core.limits import request_body
from backworks_core.model import StrictModel
from backworks_core.templates import has_crlf
from backworks_core.validation import PositiveDuration

logger = logging.getLogger(__name__)

_MODULE_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")
_FILE_REF = re.compile(r"^(?P<file>[^\n:]+\.py)(:(?P<func>[A-Za-z_]\w*))?$")
DEFAULT_FUNCTION = "handler"


class PythonConfig(StrictModel):
    timeout: PositiveDuration = Field(30.0, description="a handler running longer is answered with 504", examples=["5s"])


class HandlerLoadError(ValueError):
    """The handler reference cannot be turned into a callable; the message says why."""


@dataclass(frozen=True)
class HandlerRef:
    kind: str  # "file" | "module" | "inline"
    target: str  # file path, module name, or the code itself
    function: str = DEFAULT_FUNCTION


def parse_handler_ref(text: str) -> HandlerRef | None:
    """Classify a `handler:` value that is not a built-in handler name; None if it is none of the forms."""
    stripped = text.strip()
    if "\n" in stripped or re.match(r"^(async\s+)?def\s", stripped):
        return HandlerRef("inline", text)
    if file_match := _FILE_REF.match(stripped):
        return HandlerRef("file", file_match["file"], file_match["func"] or DEFAULT_FUNCTION)
    if _MODULE_REF.match(stripped):
        module, function = stripped.rsplit(":", 1)
        return HandlerRef("module", module, function)
    return None


def load_handler(ref: HandlerRef, base_dir: Path, label: str) -> tuple[Callable[..., Any], Path | None]:
    """Import the handler; returns the callable and the file to watch for changes (if any)."""
    if ref.kind == "inline":
        namespace: dict[str, Any] = {"__name__": f"backworks_inline_{_short_hash(label)}"}
        try:
            exec(compile(ref.target, f"<{label}>", "exec"), namespace)
        except SyntaxError as exc:
            raise HandlerLoadError(f"inline handler has a syntax error on its line {exc.lineno}: {exc.msg}") from exc
        except Exception as exc:
            raise HandlerLoadError(f"inline handler failed while loading: {type(exc).__name__}: {exc}") from exc
        return _function(namespace, ref.function, "the inline code"), None
    if ref.kind == "file":
        path = (base_dir / ref.target).resolve()
        if not path.is_file():
            raise HandlerLoadError(f"handler file {ref.target} not found (looked at {path})")
        module_name = f"backworks_handler_{_short_hash(str(path))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise HandlerLoadError(f"{ref.target} line {exc.lineno}: syntax error: {exc.msg}") from exc
        except Exception as exc:
            raise HandlerLoadError(f"{ref.target} failed while loading: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(path.parent))
        return _function(vars(module), ref.function, ref.target), path
    # A module on the import path; the blueprint's folder is searched first.
    sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(ref.target)
        file_name: str | None = getattr(module, "__file__", None)  # builtins have none, namespace packages None
        module_file = Path(file_name).resolve() if file_name else None
        if module_file and base_dir.resolve() in module_file.parents:
            module = importlib.reload(module)  # the project's own code: pick up edits on reload
    except ImportError as exc:
        raise HandlerLoadError(f"cannot import module {ref.target!r}: {exc}") from exc
    except Exception as exc:
        raise HandlerLoadError(f"module {ref.target!r} failed while loading: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(base_dir))
    watched = module_file if module_file and base_dir.resolve() in module_file.parents else None
    return _function(vars(module), ref.function, f"module {ref.target}"), watched


def _function(namespace: Mapping[str, Any], name: str, where: str) -> Callable[..., Any]:
    function = namespace.get(name)
    if function is None:
        defined = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("_") and inspect.isfunction(v))
        hint = f" (it defines: {', '.join(defined)})" if defined else ""
        raise HandlerLoadError(f"{where} has no function {name!r}{hint}")
    if not callable(function):
        raise HandlerLoadError(f"{name!r} in {where} is not a function")
    return function


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class HandlerRequest:
    """The `request` a Python handler receives: a snapshot, so handlers cannot corrupt the flow."""

    def __init__(self, ctx: RequestContext) -> None:
        request = ctx.flow.request
        self.method: str = request.method
        self.path: str = request.path.split("?", 1)[0]
        self.params: dict[str, str] = dict(ctx.params)
        self.query: MultiDict = MultiDict(request.query.fields)
        self.headers: http.Headers = request.headers.copy()
        # Decoded here, bounded: over the endpoint's limit (or the default) once its Content-Encoding
        # is undone → BodyError, answered 413/415/400 before the handler runs (backworks_core.bodies).
        self.body: bytes = request_body(ctx)
        self.user: Identity | None = ctx.user
        self.request_id: str = ctx.request_id

    @cached_property
    def json(self) -> Any:
        """The body as JSON; None when it is not JSON. Nested deeper than 64 levels: JsonTooDeep,
        which the gateway answers 400 (the handler's own `except Exception` aside)."""
        if not self.body:
            return None
        try:
            return loads_json(self.body)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"<HandlerRequest {self.method} {self.path} id={self.request_id}>"


_STRUCTURED_KEYS = frozenset({"status", "headers", "body"})


def to_response(result: Any) -> http.Response:
    """A plain JSON value is a 200; a mapping of only `status`/`headers`/`body` with a status is structured."""
    if isinstance(result, http.Response):
        return result
    status, headers, body = 200, {}, result
    if isinstance(result, Mapping) and "status" in result and set(result) <= _STRUCTURED_KEYS:
        status = result["status"]
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise TypeError(f"handler returned status {status!r}; expected an integer from 100 to 599")
        headers = dict(result.get("headers") or {})
        body = result.get("body")
    content, content_type = _encode_body(body)
    response = http.Response.make(status, content)
    response.reason = response.reason or reason_phrase(status)
    if content_type and content:
        response.headers["Content-Type"] = content_type
    for name, value in headers.items():
        name, value = str(name), str(value)
        if has_crlf(name) or has_crlf(value):
            raise ValueError(f"handler returned header {name!r} whose name or value carries CR or LF")
        response.headers[name] = value
    return response


def _encode_body(body: Any) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if isinstance(body, bytes | bytearray):
        return bytes(body), "application/octet-stream"
    if isinstance(body, str):
        return utf8(body), "text/plain; charset=utf-8"
    return json_bytes(body), "application/json"


class PythonHandler:
    def __init__(self, function: Callable[..., Any], config: PythonConfig, label: str) -> None:
        self.function = function
        self.timeout = config.timeout
        self.label = label
        self.is_async = inspect.iscoroutinefunction(function)

    async def _invoke(self, request: HandlerRequest) -> Any:
        if self.is_async:
            result = await self.function(request)
        else:
            result = await asyncio.to_thread(self.function, request)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def __call__(self, ctx: RequestContext) -> http.Response:
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                result = await self._invoke(HandlerRequest(ctx))
        except TimeoutError:
            if not deadline.expired():  # the handler's own TimeoutError is a failure like any other
                logger.exception("[%s] handler %s raised", ctx.request_id, self.label)
                return ctx.error(500, "handler failed; see the gateway log for this request id")
            logger.warning("[%s] handler %s timed out after %ss", ctx.request_id, self.label, self.timeout)
            return ctx.error(504, f"handler timed out after {self.timeout:g}s")
        except BodyError:
            raise  # the request body: the gateway answers 413/415/400 (call_handler)
        except Exception:
            logger.exception("[%s] handler %s raised", ctx.request_id, self.label)
            return ctx.error(500, "handler failed; see the gateway log for this request id")
        try:
            return to_response(result)
        except Exception as exc:
            logger.error("[%s] handler %s returned an unusable value: %s", ctx.request_id, self.label, exc)
            return ctx.error(500, "handler returned a value that cannot be sent; see the gateway log")
