"""Send a list of HTTP requests with real clients and print what came back (bench/fidelity.py's client).

Run by bench/fidelity.py with the Python of its throwaway venv (python-requests and httpie are
installed there, not in the project's .venv): ``python fidelity_driver.py BASE_URL < requests.json``.
Reads a JSON list of requests on stdin, each ``{"id", "client", "method", "path", "headers":
[[name, value], ...], "body": base64 or null, "follow": bool}``, sends them one after another,
in the given order, to BASE_URL (always http://127.0.0.1:PORT) with the named client:

- ``curl``: the curl binary (``-D`` for the headers, ``-o`` for the body, ``-L`` to follow);
- ``requests``: python-requests, one fresh Session per request (no cookie jar carried over);
- ``httpie``: the ``http`` command of the venv (``--print=hb --pretty=none``, ``--raw`` body).

Prints one JSON list: ``{"id", "status", "headers", "body" (base64), "decoded", "error"}`` per request, the
final answer when redirects are followed. curl gives the body as sent (compressed when the server
compressed it); requests and httpie decode it: bench/fidelity.py decodes before comparing.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT = 10  # seconds per request


def _parse_head(block: bytes) -> tuple[int, list[list[str]]]:
    lines = block.decode("latin-1").replace("\r\n", "\n").split("\n")
    status = int(lines[0].split()[1])
    headers = [[k.strip(), v.strip()] for k, _, v in (ln.partition(":") for ln in lines[1:] if ":" in ln)]
    return status, headers


def via_curl(url: str, req: dict, work: Path) -> tuple[int, list[list[str]], bytes]:
    head, body = work / "head", work / "body"
    for f in (head, body):
        f.unlink(missing_ok=True)
    argv = ["curl", "-sS", "-g", "--path-as-is", "--max-time", str(TIMEOUT), "-D", str(head), "-o", str(body)]
    argv += ["-I"] if req["method"] == "HEAD" else ["-X", req["method"]]
    if req.get("follow"):
        argv.append("-L")
    for name, value in req["headers"]:
        argv += ["-H", f"{name}: {value}" if value else f"{name};"]
    if req.get("body") is not None:
        data = work / "data"
        data.write_bytes(base64.b64decode(req["body"]))
        argv += ["--data-binary", f"@{data}"]
    proc = subprocess.run([*argv, url], capture_output=True, timeout=TIMEOUT + 5, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"curl exit {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")
    blocks = [b for b in head.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n") if b.startswith(b"HTTP/")]
    status, headers = _parse_head(blocks[-1])
    return status, headers, body.read_bytes() if body.exists() and req["method"] != "HEAD" else b""


def via_requests(url: str, req: dict) -> tuple[int, list[list[str]], bytes]:
    import requests  # the throwaway venv's

    with requests.Session() as session:
        session.trust_env = False  # never a proxy from the environment
        data = base64.b64decode(req["body"]) if req.get("body") is not None else None
        answer = session.request(
            req["method"], url, headers=dict(req["headers"]), data=data, allow_redirects=bool(req.get("follow")), timeout=TIMEOUT
        )
        headers = [[k, v] for k, v in answer.raw.headers.items()]
        return answer.status_code, headers, answer.content


def via_httpie(url: str, req: dict) -> tuple[int, list[list[str]], bytes]:
    http = str(Path(sys.executable).with_name("http"))
    argv = [http, "--ignore-stdin", "--pretty=none", "--print=hb", "--timeout", str(TIMEOUT)]
    if req.get("follow"):
        argv.append("--follow")
    if req.get("body") is not None:
        argv += ["--raw", base64.b64decode(req["body"]).decode("utf-8")]
    argv += [req["method"], url]
    argv += [f"{name}:{value}" if value else f"{name};" for name, value in req["headers"]]
    env = dict(os.environ, HTTPIE_CONFIG_DIR=tempfile.gettempdir() + "/fidelity-httpie-none")
    proc = subprocess.run(argv, capture_output=True, timeout=TIMEOUT + 5, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"httpie exit {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    if body.endswith(b"\n\n"):
        body = body[:-2]  # httpie's own separator after the body on a non-terminal
    status, headers = _parse_head(head)
    return status, headers, body


def main() -> int:
    base = sys.argv[1].rstrip("/")
    assert base.startswith("http://127.0.0.1:"), base  # loopback only
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for req in json.load(sys.stdin):
            url = base + req["path"]
            try:
                if req["client"] == "curl":
                    status, headers, body = via_curl(url, req, Path(tmp))
                elif req["client"] == "requests":
                    status, headers, body = via_requests(url, req)
                else:
                    status, headers, body = via_httpie(url, req)
                decoded = req["client"] != "curl"  # requests and httpie decode Content-Encoding themselves
                results.append({"id": req["id"], "status": status, "headers": headers, "body": base64.b64encode(body).decode(), "decoded": decoded, "error": None})
            except Exception as exc:  # noqa: BLE001 - reported per request, the run goes on
                results.append({"id": req["id"], "status": 0, "headers": [], "body": "", "error": f"{type(exc).__name__}: {exc}"})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
