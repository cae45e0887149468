"""The configuration reference (docs/configuration.md) is generated from the models and stays true.

- the committed file is what `backworks reference` renders now (the drift check CI runs);
- every key of every model has a description and an example;
- every example, completed into a blueprint at its place, compiles with the real loader;
- `backworks reference --check` fails on a file that differs.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from addons.dashboard import status_page_endpoints
from backworks_cli.cli import main
from backworks_core.diagnostics import BlueprintError
from backworks_core.compiler import compile_blueprint
from backworks_cli.reference import Example, builtin_registry, examples, missing, render, walk
from tests.certs import private_pem, self_signed

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "configuration.md"
ENV = {"JWT_SECRET": "Vq8rT2mZ7xLw4nHc9pKd3sFj6yBg1aNe5uQo0tRi8vWx2zCb7hMk4lPs9dGf3jYu"}  # no demo-secret warning
# Keys the loader warns about whatever their value: the warning is the point.
WARNED_BY_DESIGN = {
    "middlewares[].config.allow_header": "any client can inject faults",
    # The admin listener's opt-ins and the ports it replaced (backworks_core/admin.py).
    "server.admin.expose_on_api": "served on the API's listener to any client",
    "dashboard.port": "deprecated (removed in the next release)",
    # A collection needs two endpoints (/orders + /orders/{id}); the example has one.
    "endpoints[].config.mock.state": "no collection was recognised",
    "plugins.metrics.config.port": "deprecated (removed in the next release)",
    **{
        f"endpoints[].config.metrics.{key}": "serves the gateway's metrics"
        for key in ("format", "include_proxy_metrics", "include_circuit_breaker_status", "include_health_check_status")
    },
}

SECTIONS = walk(builtin_registry())
EXAMPLES = list(examples(SECTIONS))


def test_committed_reference_is_up_to_date():
    assert COMMITTED.exists(), "docs/configuration.md is missing: run ./run.sh reference -o docs/configuration.md"
    assert COMMITTED.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is out of date: run ./run.sh reference -o docs/configuration.md"
    )


def test_render_is_deterministic():
    assert render() == render()


def test_every_key_has_a_description_and_an_example():
    problems = missing(SECTIONS)
    assert not problems, "keys lacking a description or an example:\n" + "\n".join(problems)


def test_the_reference_covers_every_plugin_section_and_middleware():
    titles = {section.place.title for section in SECTIONS} | {p.title for s in SECTIONS for p in s.also}
    registry = builtin_registry()
    for name, plugin in registry.plugins.items():
        assert f"plugins.{name}.config" in titles
        if plugin.MiddlewareConfig is not None:
            assert f"middlewares[].config (plugin: {name})" in titles
    for section in ("static", "mock", "python", "limits", "validate", *registry.sections):
        assert f"endpoints[].config.{section}" in titles
    assert "endpoints[].transform" in titles
    keys = sum(len(section.keys) for section in SECTIONS)
    assert keys >= 200 and len(EXAMPLES) >= keys


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the files examples name: certificates, keys, a Python handler."""
    root = tmp_path_factory.mktemp("reference-examples")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed(key, "reference.example", ip=None, days=30)
    key_pem = private_pem(key)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (root / "certs").mkdir()
    (root / "certs" / "gateway.pem").write_bytes(cert_pem + key_pem)
    (root / "certs" / "upstream-ca.pem").write_bytes(cert_pem)
    (root / "keys").mkdir()
    (root / "keys" / "private.pem").write_bytes(key_pem)
    (root / "keys" / "public.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (root / "handlers").mkdir()
    (root / "handlers" / "orders.py").write_text("def get_order(request):\n    return {'id': request.params['id']}\n")
    (root / "captured.yaml.data").mkdir()  # a mock's examples_file, as `backworks capture` writes it
    (root / "captured.yaml.data" / "001-get-users.jsonl").write_text('{"status": 200, "body": {"users": []}}\n')
    return root


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.section}:{e.key}:{i}" for i, e in enumerate(EXAMPLES)])
def test_example_loads_with_the_real_loader(example: Example, project: Path):
    path = project / f"example-{EXAMPLES.index(example)}.yaml"
    path.write_text(yaml.safe_dump(example.blueprint, sort_keys=False, allow_unicode=True))
    registry = builtin_registry()
    plugins = {name: plugin() for name, plugin in registry.plugins.items()}
    shown = yaml.safe_dump(example.snippet, sort_keys=False)
    try:
        gateway = compile_blueprint(path, registry, plugins, env=ENV, pages=[status_page_endpoints])
    except BlueprintError as exc:
        pytest.fail(f"the example of {example.path} does not load:\n{shown}\n" + "\n".join(str(d) for d in exc.diagnostics))
    warnings = [str(w) for w in gateway.warnings]
    expected = WARNED_BY_DESIGN.get(example.path)
    if expected is not None:
        assert any(expected in w for w in warnings), warnings
    else:
        assert not warnings, f"the example of {example.path} loads with warnings:\n{shown}\n" + "\n".join(warnings)


def test_example_snippet_puts_the_key_at_its_place():
    (example,) = [e for e in EXAMPLES if e.path == "plugins.proxy.config.targets[].weight"]
    targets = [{"name": "api-1", "url": "http://127.0.0.1:3001", "weight": 3}]
    # weights matter under weighted policies only: the example says so rather than draw a warning
    assert example.snippet == {"plugins": {"proxy": {"config": {"load_balancing": "weighted_round_robin", "targets": targets}}}}
    assert example.blueprint["endpoints"], "a blueprint needs an endpoint to load"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_cli_prints_and_writes_the_reference(tmp_path: Path):
    status, out, _ = run_cli("reference")
    assert status == 0 and out == render()
    target = tmp_path / "configuration.md"
    assert run_cli("reference", "-o", str(target))[0] == 0
    assert target.read_text(encoding="utf-8") == render()


def test_check_passes_on_a_fresh_copy_and_fails_on_a_modified_one(tmp_path: Path):
    copy = tmp_path / "configuration.md"
    copy.write_text(render(), encoding="utf-8")
    assert run_cli("reference", "--check", str(copy))[0] == 0

    copy.write_text(render() + "\nedited by hand\n", encoding="utf-8")
    status, _, err = run_cli("reference", "--check", str(copy))
    assert status == 1
    assert f"{copy} is out of date: run ./run.sh reference -o {copy}" in err

    status, _, err = run_cli("reference", "--check", str(tmp_path / "absent.md"))
    assert status == 1 and "cannot read" in err
