"""Python handlers: the four ways to name one, what `request` holds, and what comes back."""

from __future__ import annotations

import logging
import sys

import pytest

from backworks_core.handlers.python import HandlerRef, parse_handler_ref, to_response

from .conftest import body_json

HANDLERS = '''
import asyncio
import threading

RELEASE = threading.Event()


def handler(request):
    return {"from": "handler"}


def echo(request):
    return {
        "method": request.method,
        "path": request.path,
        "params": request.params,
        "tags": request.query.get_all("tag"),
        "q": request.query.get("q"),
        "content_type": request.headers["CONTENT-TYPE"],
        "custom": request.headers.get("x-custom"),
        "body_is_bytes": isinstance(request.body, bytes),
        "body": request.body.decode(),
        "json": request.json,
        "user": request.user,
        "request_id": request.request_id,
    }


async def async_echo(request):
    await asyncio.sleep(0)
    return {"async": True, "id": request.params["id"]}


def structured(request):
    return {"status": 201, "headers": {"X-Created": "yes", "Location": "/things/9"}, "body": {"id": 9}}


def structured_text(request):
    return {"status": 202, "body": "accepted"}


def looks_structured(request):
    # a "status" key among other keys is plain data, not a response
    return {"status": "ok", "count": 2}


def plain_list(request):
    return [1, "two", None]


def plain_text(request):
    return "just text"


def nothing(request):
    return None


def fails(request):
    raise ValueError("secret-detail-123 in the handler")


def bad_status(request):
    return {"status": 42}


async def slow_async(request):
    await asyncio.sleep(30)
    return {"never": True}


def slow_sync(request):
    RELEASE.wait(10)  # released by the test once the 504 is out
    return {"late": True}


def own_timeout(request):
    raise TimeoutError("the database did not answer")


def echo_header(request):
    return {"status": 200, "headers": {"X-Echo": request.query.get("v", "")}, "body": "ok"}


def snapshot(request):
    request.headers["X-Injected"] = "1"
    request.params["id"] = "changed"
    return {"ok": True}
'''


@pytest.fixture
def python_gateway(project, compile_gateway):
    project.write("handlers/api.py", HANDLERS)
    project.write("myapp/__init__.py", "")
    project.write(
        "myapp/views.py",
        """
        def show(request):
            return {"module": __name__, "id": request.params["id"]}
        """,
    )
    path = project.blueprint(
        """
        name: python-test
        endpoints:
          - {path: /default, handler: handlers/api.py}
          - {path: "/echo/{id}", method: [GET, POST], handler: "handlers/api.py:echo"}
          - {path: "/async/{id:int}", handler: "handlers/api.py:async_echo"}
          - {path: /structured, method: POST, handler: "handlers/api.py:structured"}
          - {path: /structured-text, handler: "handlers/api.py:structured_text"}
          - {path: /looks-structured, handler: "handlers/api.py:looks_structured"}
          - {path: /list, handler: "handlers/api.py:plain_list"}
          - {path: /text, handler: "handlers/api.py:plain_text"}
          - {path: /nothing, handler: "handlers/api.py:nothing"}
          - {path: /fails, handler: "handlers/api.py:fails"}
          - {path: /bad-status, handler: "handlers/api.py:bad_status"}
          - path: /slow-async
            handler: "handlers/api.py:slow_async"
            config: {python: {timeout: 0.05}}
          - path: /slow-sync
            handler: "handlers/api.py:slow_sync"
            config: {python: {timeout: 50ms}}
          - {path: "/snapshot/{id}", handler: "handlers/api.py:snapshot"}
          - {path: /own-timeout, handler: "handlers/api.py:own_timeout"}
          - {path: /echo-header, handler: "handlers/api.py:echo_header"}
          - {path: "/module/{id}", handler: "myapp.views:show"}
          - path: /inline
            method: POST
            handler: |
              def handler(request):
                  data = request.json or {}
                  return {"status": 200, "body": {"doubled": data.get("n", 0) * 2}}
          - path: /inline-async
            handler: |
              async def handler(request):
                  return {"inline": "async", "method": request.method}
        """
    )
    yield compile_gateway(path)
    sys.modules.pop("myapp.views", None)
    sys.modules.pop("myapp", None)


# -- the four forms -------------------------------------------------------------------------


def test_parse_handler_ref_forms():
    assert parse_handler_ref("handlers/echo.py") == HandlerRef("file", "handlers/echo.py", "handler")
    assert parse_handler_ref("handlers/echo.py:echo") == HandlerRef("file", "handlers/echo.py", "echo")
    assert parse_handler_ref("pkg.mod:func") == HandlerRef("module", "pkg.mod", "func")
    code = "def handler(request):\n    return 1\n"
    assert parse_handler_ref(code) == HandlerRef("inline", code, "handler")
    assert parse_handler_ref("async def handler(r): return 1") == HandlerRef("inline", "async def handler(r): return 1")
    assert parse_handler_ref("static-ish") is None
    assert parse_handler_ref("pkg.mod") is None


async def test_file_with_default_function(python_gateway, send):
    flow = await send(python_gateway, "GET", "/default")
    assert flow.response.status_code == 200
    assert body_json(flow.response) == {"from": "handler"}


async def test_module_function_from_a_package_in_the_blueprint_folder(python_gateway, send):
    flow = await send(python_gateway, "GET", "/module/5")
    assert body_json(flow.response) == {"module": "myapp.views", "id": "5"}


async def test_inline_code_sync_and_async(python_gateway, send):
    flow = await send(python_gateway, "POST", "/inline", headers={"Content-Type": "application/json"}, body='{"n": 21}')
    assert body_json(flow.response) == {"doubled": 42}
    flow = await send(python_gateway, "GET", "/inline-async")
    assert body_json(flow.response) == {"inline": "async", "method": "GET"}


async def test_async_handler(python_gateway, send):
    flow = await send(python_gateway, "GET", "/async/17")
    assert body_json(flow.response) == {"async": True, "id": "17"}


# -- the request ----------------------------------------------------------------------------


async def test_request_attributes(python_gateway, send):
    flow = await send(
        python_gateway,
        "POST",
        "/echo/abc?tag=a&q=1&tag=b",
        headers={"Content-Type": "application/json", "X-Custom": "yes", "X-Request-ID": "req-77"},
        body='{"name": "Ada", "n": [1, 2]}',
    )
    assert flow.response.status_code == 200
    assert body_json(flow.response) == {
        "method": "POST",
        "path": "/echo/abc",
        "params": {"id": "abc"},
        "tags": ["a", "b"],
        "q": "1",
        "content_type": "application/json",
        "custom": "yes",
        "body_is_bytes": True,
        "body": '{"name": "Ada", "n": [1, 2]}',
        "json": {"name": "Ada", "n": [1, 2]},
        "user": None,
        "request_id": "req-77",
    }


async def test_request_json_is_none_for_a_body_that_is_not_json(python_gateway, send):
    flow = await send(python_gateway, "POST", "/echo/x", headers={"Content-Type": "text/plain"}, body="not json")
    data = body_json(flow.response)
    assert (data["json"], data["body"]) == (None, "not json")
    flow = await send(python_gateway, "GET", "/echo/x", headers={"Content-Type": "text/plain"})
    data = body_json(flow.response)
    assert (data["json"], data["body"]) == (None, "")


async def test_request_is_a_snapshot(python_gateway, send):
    flow = await send(python_gateway, "GET", "/snapshot/1")
    assert body_json(flow.response) == {"ok": True}
    assert "X-Injected" not in flow.request.headers


# -- the response ---------------------------------------------------------------------------


async def test_structured_result(python_gateway, send):
    flow = await send(python_gateway, "POST", "/structured")
    assert flow.response.status_code == 201
    assert flow.response.headers["X-Created"] == "yes"
    assert flow.response.headers["Location"] == "/things/9"
    assert body_json(flow.response) == {"id": 9}


async def test_structured_text_result(python_gateway, send):
    flow = await send(python_gateway, "GET", "/structured-text")
    assert flow.response.status_code == 202
    assert flow.response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert flow.response.get_content() == b"accepted"


async def test_a_status_key_among_others_is_plain_json(python_gateway, send):
    flow = await send(python_gateway, "GET", "/looks-structured")
    assert flow.response.status_code == 200
    assert body_json(flow.response) == {"status": "ok", "count": 2}


@pytest.mark.parametrize(
    "path, content_type, content",
    [
        ("/list", "application/json", b'[1,"two",null]'),
        ("/text", "text/plain; charset=utf-8", b"just text"),
        ("/nothing", None, b""),
    ],
)
async def test_plain_values(python_gateway, send, path, content_type, content):
    flow = await send(python_gateway, "GET", path)
    assert flow.response.status_code == 200
    assert flow.response.headers.get("Content-Type") == content_type
    assert flow.response.get_content() == content


def test_to_response_rejects_a_bad_status():
    with pytest.raises(TypeError, match="status 42"):
        to_response({"status": 42})
    with pytest.raises(TypeError, match="status '200'"):
        to_response({"status": "200", "body": "x"})


# -- failures -------------------------------------------------------------------------------


async def test_exception_is_a_500_with_request_id_and_the_traceback_only_in_the_log(python_gateway, send, caplog):
    caplog.set_level(logging.ERROR)
    flow = await send(python_gateway, "GET", "/fails", headers={"X-Request-ID": "boom-1"})
    response = flow.response
    assert response.status_code == 500
    body = body_json(response)
    assert set(body) == {"error", "status", "request_id"}
    assert body["status"] == 500
    assert body["request_id"] == "boom-1"
    assert response.headers["X-Request-ID"] == "boom-1"
    text = response.get_content().decode()
    assert "secret-detail-123" not in text
    assert "Traceback" not in text
    assert "api.py" not in text

    records = [r for r in caplog.records if "boom-1" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)
    assert "secret-detail-123" in caplog.text
    assert "Traceback" in caplog.text


async def test_unusable_return_value_is_a_500(python_gateway, send, caplog):
    flow = await send(python_gateway, "GET", "/bad-status", headers={"X-Request-ID": "bad-1"})
    assert flow.response.status_code == 500
    assert body_json(flow.response)["request_id"] == "bad-1"
    assert "status 42" in caplog.text


async def test_async_timeout_is_a_504(python_gateway, send):
    flow = await send(python_gateway, "GET", "/slow-async", headers={"X-Request-ID": "slow-1"})
    assert flow.response.status_code == 504
    assert body_json(flow.response) == {"error": "handler timed out after 0.05s", "status": 504, "request_id": "slow-1"}


async def test_sync_timeout_is_a_504(python_gateway, send):
    (endpoint,) = [e for e in python_gateway.endpoints if e.template == "/slow-sync"]
    release = endpoint.spec.python_function.__globals__["RELEASE"]
    try:
        flow = await send(python_gateway, "GET", "/slow-sync")
        assert not release.is_set()  # the handler was still running when the 504 was sent
    finally:
        release.set()
    assert flow.response.status_code == 504
    assert body_json(flow.response)["error"] == "handler timed out after 0.05s"


async def test_a_timeout_error_raised_by_the_handler_is_a_500_not_a_504(python_gateway, send, caplog):
    caplog.set_level(logging.ERROR)
    flow = await send(python_gateway, "GET", "/own-timeout", headers={"X-Request-ID": "own-1"})
    assert flow.response.status_code == 500
    assert body_json(flow.response) == {
        "error": "handler failed; see the gateway log for this request id",
        "status": 500,
        "request_id": "own-1",
    }
    assert "the database did not answer" in caplog.text
    assert "Traceback" in caplog.text


async def test_crlf_in_a_returned_header_is_refused(python_gateway, send, caplog):
    ok = await send(python_gateway, "GET", "/echo-header?v=fine")
    assert (ok.response.status_code, ok.response.headers["X-Echo"]) == (200, "fine")
    flow = await send(python_gateway, "GET", "/echo-header?v=a%0d%0aSet-Cookie:%20evil=1", headers={"X-Request-ID": "crlf-2"})
    assert flow.response.status_code == 500
    assert "Set-Cookie" not in flow.response.headers
    assert "X-Echo" not in flow.response.headers
    assert body_json(flow.response)["request_id"] == "crlf-2"
    assert "carries CR or LF" in caplog.text


# -- load errors are located blueprint errors -----------------------------------------------


def test_load_errors_are_located(project, load_errors):
    project.write(
        "handlers/two.py",
        """
        def alpha(request):
            return 1

        def beta(request):
            return 2

        _private = None
        """,
    )
    project.write("handlers/broken.py", "def handler(request)\n    return 1\n")
    project.write("handlers/raises.py", "raise RuntimeError('import-time failure')\n")
    path = project.blueprint(
        """
        name: x
        endpoints:
          - {path: /a, handler: handlers/missing.py}
          - {path: /b, handler: "handlers/two.py:gamma"}
          - {path: /c, handler: handlers/broken.py}
          - {path: /d, handler: handlers/raises.py}
          - {path: /e, handler: "no_such_package_bw.views:show"}
          - path: /f
            handler: |
              def handler(request)
                  return 1
          - path: /g
            handler: |
              def not_the_handler(request):
                  return 1
        """
    )
    errors = load_errors(path)
    assert [(e.line, e.col, e.key_path) for e in errors] == [
        (3, 25, "endpoints[0].handler"),
        (4, 25, "endpoints[1].handler"),
        (5, 25, "endpoints[2].handler"),
        (6, 25, "endpoints[3].handler"),
        (7, 25, "endpoints[4].handler"),
        (9, 14, "endpoints[5].handler"),
        (13, 14, "endpoints[6].handler"),
    ]
    messages = [e.message for e in errors]
    assert messages[0] == f"handler file handlers/missing.py not found (looked at {project.root.resolve()}/handlers/missing.py)"
    assert messages[1] == "handlers/two.py has no function 'gamma' (it defines: alpha, beta)"
    assert messages[2] == "handlers/broken.py line 1: syntax error: expected ':'"
    assert messages[3] == "handlers/raises.py failed while loading: RuntimeError: import-time failure"
    assert messages[4].startswith("cannot import module 'no_such_package_bw.views': No module named 'no_such_package_bw'")
    assert messages[5] == "inline handler has a syntax error on its line 1: expected ':'"
    assert messages[6] == "the inline code has no function 'handler' (it defines: not_the_handler)"


# Found by tests/reliability/test_request_fuzz.py (each was a 500 "handler failed"/"cannot be sent").


async def test_json_nested_too_deep_is_a_400_not_a_handler_failure(python_gateway, send):
    # Nesting past backworks_core.bodies.DEFAULT_MAX_DEPTH is refused when the handler reads
    # request.json (docs/security.md, "3. Bounded bodies"); it was a 500, then None.
    flow = await send(python_gateway, "POST", "/echo/x", headers={"Content-Type": "application/json"}, body="[" * 100_000)
    assert flow.response.status_code == 400
    assert body_json(flow.response)["error"] == "request body: JSON nested deeper than 64 levels"


async def test_a_lone_surrogate_from_the_request_json_can_be_sent_back(python_gateway, send):
    flow = await send(python_gateway, "POST", "/echo/x", headers={"Content-Type": "application/json"}, body='{"a": "\\ud800"}')
    assert flow.response.status_code == 200
    assert body_json(flow.response)["json"] == {"a": "\ud800"}  # as \u escapes: still valid JSON


def test_text_with_lone_surrogates_is_sent_as_utf8():
    response = to_response("caf\udce9")  # how mitmproxy hands over invalid UTF-8 (surrogateescape)
    assert response.get_content() == b"caf?"
