"""https targets: certificates verified against the system CAs or a CA file, or not at all."""

from __future__ import annotations

import ssl
import textwrap
from pathlib import Path

import pytest

from tests.certs import write_self_signed
from tests.integration.harness import Upstream

pytestmark = pytest.mark.integration


self_signed = write_self_signed


@pytest.fixture
def https_upstream(tmp_path: Path):  # type: ignore[no-untyped-def]
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = Upstream("secure", ssl_context=context).start()
    yield server, cert
    server.stop()


@pytest.mark.parametrize(
    ("target_options", "status"),
    [
        ("ca_file: cert.pem", 200),
        ("", 502),  # the system CAs do not know a self-signed certificate
        ("tls_verify: false", 200),
    ],
)
def test_https_target_verification(tmp_path: Path, https_upstream, start_proxy, target_options: str, status: int) -> None:  # type: ignore[no-untyped-def]
    server, _ = https_upstream
    options = f", {target_options}" if target_options else ""
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(
        textwrap.dedent(
            f"""
            name: tls
            plugins:
              proxy: {{config: {{targets: [{{name: secure, url: "https://127.0.0.1:{server.port}/api"{options}}}]}}}}
            endpoints:
              - {{path: /x, handler: proxy}}
            """
        )
    )
    reply = start_proxy(blueprint).get("/x")
    assert reply.status == status, reply.body
    if status == 200:
        assert reply.json["path"] == "/api/x"
    else:
        assert "certificate" in reply.json["error"]
