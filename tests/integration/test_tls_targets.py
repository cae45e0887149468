"""https targets: certificates verified against the system CAs or a CA file, or not at all."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.harness import Upstream

pytestmark = pytest.mark.integration


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


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
