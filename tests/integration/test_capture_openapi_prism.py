"""The OpenAPI a capture writes, used by a spec-driven tool: Prism (`@stoplight/prism-cli`) serves it.

Real traffic (a form login, a multipart upload, bearer and basic auth, seven statuses of one
path) is recorded through a capturing mitmdump in front of a real upstream; Prism then mocks the
written document. Prism validates requests against the spec (422 when a body does not fit), so
replaying the recorded form POST and upload must be accepted, and `Prefer: code=…` must select
every recorded status, with the recorded response headers.

Prism comes from the npm registry, installed into a temporary folder once per session. Without
npm (or the registry) the test is skipped locally and fails under CI (env `CI` set).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.integration.harness import Upstream, free_port, request, stop_process_group, wait_for_port
from tests.integration.test_capture import capture_blueprint, stop_gracefully

pytestmark = pytest.mark.integration

PRISM = "@stoplight/prism-cli@5"
STATUSES = (200, 201, 204, 301, 404, 418, 500)
BOUNDARY = "----backworks-prism-boundary"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
BASIC = "Basic dXNlcjpwYXNzd2Q="  # user:passwd


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this test", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prism(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The `prism` program, installed from the npm registry into a temporary folder."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _unavailable("npm/node are not installed (Prism is an npm package)")
    folder = tmp_path_factory.mktemp("prism")
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(folder), PRISM],
            capture_output=True, text=True, timeout=300,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"npm install {PRISM} took more than 300 s")
    program = folder / "node_modules" / ".bin" / "prism"
    if done.returncode != 0 or not program.exists():
        _unavailable(f"npm install {PRISM} failed: {done.stderr.strip()[-500:]}")
    return str(program)


def multipart(fields: list[tuple[str, str | None, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, media, value in fields:
        out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"".encode()
        out += (f'; filename="{filename}"'.encode() if filename else b"") + b"\r\n"
        out += f"Content-Type: {media}\r\n".encode() if media else b""
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
UPLOAD = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
UPLOAD_BODY = multipart([("title", None, None, b"Holiday"), ("count", None, None, b"3"), ("file", "cat.png", "image/png", PNG)])


def upstream() -> Upstream:
    async def login(req: web.Request) -> web.Response:
        form = await req.post()
        if form.get("password") != "correct-horse":
            return web.Response(text="<p>wrong password</p>", content_type="text/html")
        response = web.Response(status=302, headers={"Location": "/dashboard"})
        response.set_cookie("sessionid", "sess-Q7f3kP9xZ2mL8vN4", httponly=True)
        return response

    async def uploads(req: web.Request) -> web.Response:
        body = await req.read()  # the harness has read it already: req.post() would find the stream empty
        if b'filename="cat.png"' not in body:
            return web.json_response({"error": "no file"}, status=400)
        return web.json_response({"id": 17, "title": "Holiday"}, status=201, headers={"Location": "/uploads/17", "ETag": '"u17"'})

    async def items(req: web.Request) -> web.Response:
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
        headers = {"ETag": '"v2"', "Link": '</items?page=3>; rel="next"', "X-Total-Count": "42"}
        return web.json_response([{"id": 1}], headers=headers)

    async def basic(req: web.Request) -> web.Response:
        if req.headers.get("Authorization") != BASIC:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Fake Realm"'})
        return web.json_response({"user": "user"})

    def status(code: int):
        async def handler(req: web.Request) -> web.Response:
            if code in (204, 301):
                return web.Response(status=code, headers={"Location": "/status/200"} if code == 301 else {})
            return web.Response(status=code, text=f"status {code}")

        return handler

    routes = {"/login": login, "/uploads": uploads, "/items": items, "/basic-auth": basic}
    routes.update({f"/status/{code}": status(code) for code in STATUSES})
    return Upstream("openapi", routes=routes)


TRAFFIC: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("POST", "/login", FORM, b"username=ada&password=correct-horse&remember=true"),
    ("POST", "/login", FORM, b"username=grace&password=guess"),
    ("POST", "/uploads", UPLOAD, UPLOAD_BODY),
    ("GET", "/items?page=2", {"Authorization": f"Bearer {TOKEN}"}, None),
    ("GET", "/items", {}, None),
    ("GET", "/basic-auth", {"Authorization": BASIC}, None),
    ("GET", "/basic-auth", {}, None),
    *(("GET", f"/status/{code}", {}, None) for code in STATUSES),
]


def test_prism_serves_the_captured_openapi(tmp_path: Path, start_proxy, prism: str) -> None:
    from openapi_spec_validator import validate

    server = upstream().start()
    try:
        blueprint = capture_blueprint(tmp_path, "openapi.yaml", "openapi")
        blueprint.write_text(blueprint.read_text().replace("max_examples: 10", "max_examples: 2"))
        capturing = start_proxy(blueprint, "--mode", f"reverse:{server.url}")
        recorded = {(method, path): request(method, path, port=capturing.port, headers=headers, body=body).status for method, path, headers, body in TRAFFIC}
        stop_gracefully(capturing)
    finally:
        server.stop()
    assert recorded[("POST", "/uploads")] == 201 and recorded[("GET", "/status/418")] == 418
    spec = tmp_path / "openapi.yaml"
    validate(yaml.safe_load(spec.read_text()))

    port = free_port()
    log = (tmp_path / "prism.log").open("wb")
    process = subprocess.Popen(
        [prism, "mock", "-h", "127.0.0.1", "-p", str(port), str(spec)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port(port, timeout=90, process=process)

        def send(method: str, path: str, headers: dict[str, str], body: bytes | None = None, code: int | None = None):
            prefer = {"Prefer": f"code={code}"} if code is not None else {}
            return request(method, path, port=port, headers={**headers, **prefer}, body=body)

        # the recorded bodies pass Prism's request validation, and a body that does not fit is refused
        for method, path, headers, body in TRAFFIC[:3]:
            reply = send(method, path, headers, body)
            assert reply.status < 400, (path, reply.status, reply.body[:500])
        assert send("POST", "/login", FORM, b"remember=true").status == 422  # username, password missing
        assert send("POST", "/uploads", UPLOAD, multipart([("title", None, None, b"x")])).status == 422  # no file
        # every recorded status is there to choose, max_examples notwithstanding
        for code in STATUSES:
            assert send("GET", f"/status/{code}", {}, code=code).status == code
        assert send("POST", "/login", FORM, TRAFFIC[0][3], code=302).header("Location") == "/dashboard"
        assert send("POST", "/login", FORM, TRAFFIC[0][3], code=302).header("Set-Cookie")
        created = send("POST", "/uploads", UPLOAD, UPLOAD_BODY, code=201)
        assert (created.status, created.header("Location"), created.header("ETag")) == (201, "/uploads/17", '"u17"')
        # response headers, and the auth seen: bearer, or none (then 401)
        page = send("GET", "/items?page=2", {"Authorization": f"Bearer {TOKEN}"}, code=200)
        assert (page.status, page.header("X-Total-Count"), page.header("ETag")) == (200, "42", '"v2"')
        assert page.header("Link") == '</items?page=3>; rel="next"'
        assert send("GET", "/items", {}, code=401).header("WWW-Authenticate") == 'Bearer realm="api"'
        assert send("GET", "/basic-auth", {"Authorization": BASIC}, code=200).status == 200
    finally:
        stop_process_group(process)
        log.close()
