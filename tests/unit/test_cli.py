"""The `backworks` command: validate, schema and init."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from backworks_cli.cli import main

# -- validate -------------------------------------------------------------------------------

FIVE_MISTAKES = """
name: five
servr: {port: 8080}
endpoints:
  - path: /c
    handler: static
    config: {static: {}}
  - path: /c
    handler: static
    config: {static: {}}
  - path: /a
    handler: statik
  - path: /b
    method: FETCH
    handler: static
    config: {static: {}}
  - path: /d
    handler: static
    config:
      static: {status: "two hundred"}
"""


def test_validate_reports_five_located_errors(project, capsys):
    path = project.blueprint(FIVE_MISTAKES)
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:2:1: servr: unknown key 'servr'; did you mean 'server'?",
        f"{path}:7:11: endpoints[1].path: duplicate route: GET /c is already defined by endpoints[0]",
        f"{path}:11:14: endpoints[2].handler: unknown handler 'statik'; did you mean 'static'? (expected one of "
        "auth.login, auth.register, auth.validate, metrics, mock, proxy, static, or a Python handler: handlers/x.py, handlers/x.py:function, package.module:function, or "
        "inline code defining `def handler(request)`)",
        f"{path}:13:13: endpoints[3].method: unknown HTTP method 'FETCH' (expected one of ANY, CONNECT, DELETE, GET, "
        "HEAD, OPTIONS, PATCH, POST, PUT, TRACE)",
        f"{path}:19:24: endpoints[4].config.static.status: expected an integer, got string 'two hundred'",
        f"{path}: 5 errors",
    ]


def test_validate_valid_blueprint(project, capsys):
    path = project.blueprint(
        """
        name: fine
        endpoints:
          - {path: /a, handler: static, config: {static: {body: ok}}}
          - {path: /b, handler: static, config: {static: {body: ok}}}
        """
    )
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK: 'fine', 2 endpoint(s)\n"
    assert err == ""


def test_validate_prints_warnings_and_exits_0(project, capsys):
    path = project.blueprint(
        """
        name: warned
        endpoints:
          - {path: /a, host: "*.example.com", handler: static, config: {static: {}}}
          - {path: /a, host: "api.*", handler: static, config: {static: {}}}
        """
    )
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK: 'warned', 2 endpoint(s), 1 warning(s)\n"
    assert err.splitlines() == [
        f"{path}:4:12: warning: endpoints[1].path: ambiguous route: GET /a for host 'api.*' overlaps endpoints[0] "
        "for host '*.example.com'; a request for a host matching both (e.g. 'api.example.com') goes to endpoints[0]"
    ]


def test_validate_several_files(project, capsys):
    good = project.blueprint("name: g\nendpoints:\n  - {path: /a, handler: static, config: {static: {}}}\n", "good.yaml")
    bad = project.blueprint("name: b\nendpoints: []\n", "bad.yaml")
    assert main(["validate", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{good}: OK: 'g', 1 endpoint(s)\n"
    assert err.splitlines()[-1] == f"{bad}: 1 error"


def test_validate_reports_load_and_build_errors_together(project, capsys):
    """All errors at once: a proxy path typo is found in the same run as an unknown handler."""
    path = project.blueprint(
        """
        name: two-kinds
        plugins:
          proxy:
            config:
              targets: [{name: a, url: "http://127.0.0.1:3001"}]
        endpoints:
          - path: "/users/{id}"
            handler: proxy
            config:
              proxy: {path: "/people/{idd}"}
          - {path: /x, handler: statik}
        """
    )
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:10:21: endpoints[0].config.proxy.path: path parameter {{idd}} is not in the endpoint's path" in err
    assert f"{path}:11:25: endpoints[1].handler: unknown handler 'statik'" in err
    assert err.splitlines()[-1] == f"{path}: 2 errors"


def test_validate_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{missing}: cannot read blueprint:")


# -- schema ---------------------------------------------------------------------------------


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/$defs/"), ref
        node = schema["$defs"][ref.removeprefix("#/$defs/")]
    return node


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def conforms(schema: dict[str, Any], node: Any, value: Any) -> bool:
    """A small JSON Schema checker for the keywords the blueprint schema uses."""
    if node is True:
        return True
    if node is False:
        return False
    node = resolve(schema, node)
    if "type" in node:
        kind = node["type"]
        if kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, _TYPES[kind])
        if not ok:
            return False
    if "const" in node and value != node["const"]:
        return False
    if "enum" in node and value not in node["enum"]:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            return False
        if "maximum" in node and value > node["maximum"]:
            return False
        if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
            return False
    if isinstance(value, str):
        if "minLength" in node and len(value) < node["minLength"]:
            return False
        if "pattern" in node and not re.search(node["pattern"], value):
            return False
    if isinstance(value, list):
        if "minItems" in node and len(value) < node["minItems"]:
            return False
        if "items" in node and not all(conforms(schema, node["items"], item) for item in value):
            return False
    if isinstance(value, dict):
        properties = node.get("properties", {})
        if any(key not in value for key in node.get("required", [])):
            return False
        for key, item in value.items():
            if key in properties:
                if not conforms(schema, properties[key], item):
                    return False
            elif "additionalProperties" in node and not conforms(schema, node["additionalProperties"], item):
                return False
    if "anyOf" in node and not any(conforms(schema, sub, value) for sub in node["anyOf"]):
        return False
    if "oneOf" in node and sum(conforms(schema, sub, value) for sub in node["oneOf"]) != 1:
        return False
    for sub in node.get("allOf", []):
        if "if" in sub and conforms(schema, sub["if"], value) and not conforms(schema, sub["then"], value):
            return False
    return True


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["schema"]) == 0
    return json.loads(buffer.getvalue())


def test_schema_is_json_schema_2020_12(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://backworks.dev/schema/blueprint-v1.json"
    assert schema["title"] == "Backworks blueprint"
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"name", "endpoints"}
    assert schema["additionalProperties"] is False

    known = {
        "$defs", "$id", "$ref", "$schema", "additionalProperties", "allOf", "anyOf", "const", "default",
        "description", "enum", "examples", "exclusiveMinimum", "if", "items", "maximum", "minItems", "minLength", "minimum",
        "oneOf", "pattern", "properties", "required", "then", "title", "type",
    }

    def check(node: Any) -> None:
        if isinstance(node, bool):
            return
        assert isinstance(node, dict), node
        assert set(node) <= known, set(node) - known
        if "$ref" in node:
            resolve(schema, node)
        if "type" in node:
            assert node["type"] in {"object", "array", "string", "integer", "number", "boolean", "null"}
        for key in ("properties", "$defs"):
            for sub in node.get(key, {}).values():
                check(sub)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                check(sub)
        for key in ("items", "additionalProperties", "if", "then"):
            if key in node:
                check(node[key])

    check(schema)


def test_schema_includes_the_proxy_plugin_config(schema):
    map_form, list_form = schema["properties"]["plugins"]["anyOf"]
    proxy = map_form["properties"]["proxy"]
    assert set(proxy["properties"]) == {"enabled", "config"}
    config = resolve(schema, proxy["properties"]["config"])
    assert {"targets", "load_balancing", "hash_on", "circuit_breaker", "health_check", "retries",
            "upstreams", "transform_request", "transform_response", "timeout"} <= set(config["properties"])
    target = resolve(schema, config["properties"]["targets"]["items"])
    assert {"name", "url", "weight", "timeout", "health_check"} <= set(target["properties"])
    load_balancing = config["properties"]["load_balancing"]
    load_balancing = load_balancing["anyOf"][0] if "anyOf" in load_balancing else load_balancing  # or ${VAR}
    assert set(load_balancing["enum"]) == {
        "round_robin", "weighted_round_robin", "least_connections", "ip_hash", "consistent_hash", "random",
    }
    (proxy_item,) = [item for item in list_form["items"]["oneOf"] if item["properties"]["type"] == {"const": "proxy"}]
    assert proxy_item["required"] == ["type"]


def test_schema_includes_endpoint_config_sections(schema):
    endpoint = schema["$defs"]["EndpointSettings"]
    config = endpoint["properties"]["config"]
    assert set(config["properties"]) == {"static", "mock", "python", "limits", "validate", "proxy", "metrics"}
    assert config["additionalProperties"] is False
    assert {"status", "headers", "body", "delay"} == set(resolve(schema, config["properties"]["static"])["properties"])
    assert {"upstream", "path", "strip_prefix", "add_prefix"} <= set(resolve(schema, config["properties"]["proxy"])["properties"])


def test_schema_accepts_real_blueprints(schema):
    scaffold = yaml.safe_load((Path(__file__).parents[2] / "backworks_core" / "scaffold" / "blueprint.yaml").read_text())
    assert conforms(schema, schema, scaffold)
    original = yaml.safe_load((Path(__file__).parents[1] / "data" / "original-examples" / "proxy-advanced.yaml").read_text())
    original["endpoints"] = [e for e in original["endpoints"] if e["handler"] != "metrics"]
    assert conforms(schema, schema, original)


def test_schema_rejects_what_the_loader_rejects(schema):
    base = {"name": "x", "endpoints": [{"path": "/a", "handler": "static", "config": {"static": {}}}]}
    assert conforms(schema, schema, base)
    assert not conforms(schema, schema, {**base, "servr": {}})
    assert not conforms(schema, schema, {"name": "x"})
    bad_section = {"name": "x", "endpoints": [{"path": "/a", "handler": "static", "config": {"statik": {}}}]}
    assert not conforms(schema, schema, bad_section)
    bad_policy = {**base, "plugins": {"proxy": {"config": {"load_balancing": "fastest"}}}}
    assert not conforms(schema, schema, bad_policy)


@pytest.mark.parametrize("delay", [0, 0.5, "250ms", "30s", "5m", "1h", "1m30s"])
def test_schema_accepts_durations_as_the_loader_does(schema, delay):
    blueprint = {"name": "x", "endpoints": [{"path": "/a", "handler": "static", "config": {"static": {"delay": delay}}}]}
    assert conforms(schema, schema, blueprint)
    pool = {"name": "x", "plugins": {"proxy": {"config": {"timeout": delay}}}, "endpoints": blueprint["endpoints"]}
    # a timeout must be above zero (the loader refuses 0), a delay may be 0
    assert conforms(schema, schema, pool) is (delay != 0)


@pytest.mark.parametrize("delay", [-1, "soon", "5 minutes", True])
def test_schema_rejects_bad_durations(schema, delay):
    blueprint = {"name": "x", "endpoints": [{"path": "/a", "handler": "static", "config": {"static": {"delay": delay}}}]}
    assert not conforms(schema, schema, blueprint)


@pytest.mark.parametrize(
    "text", ["250ms", "1.5s", ".5m", "30", "2.", "1m30s", "1h2m3s4ms", " 30s ", "5 m", "", "ms", "1d", "-1s", ".5.5m", "1s 2s"]
)
def test_schema_duration_pattern_agrees_with_the_loader(text):
    from backworks_core.schema import DURATION_SCHEMA
    from backworks_core.validation import parse_duration

    (pattern,) = [option["pattern"] for option in DURATION_SCHEMA["anyOf"] if option["type"] == "string"]
    try:
        parse_duration(text)
        accepted = True
    except ValueError:
        accepted = False
    assert bool(re.search(pattern, text)) is accepted


def test_schema_accepts_enabled_inside_plugin_config(schema):
    endpoints = [{"path": "/a", "handler": "static", "config": {"static": {}}}]
    assert conforms(schema, schema, {"name": "x", "plugins": [{"type": "proxy", "config": {"enabled": False}}], "endpoints": endpoints})
    assert conforms(schema, schema, {"name": "x", "plugins": {"proxy": {"config": {"enabled": True}}}, "endpoints": endpoints})


def test_schema_output_file(tmp_path, capsys):
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert capsys.readouterr().err == f"wrote {target}\n"
    assert json.loads(target.read_text())["title"] == "Backworks blueprint"


# -- init -----------------------------------------------------------------------------------


def test_init_creates_a_project_that_validates(tmp_path, capsys):
    target = tmp_path / "starter"
    assert main(["init", str(target)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"created a starter project in {target}/\n")
    assert (target / "blueprint.yaml").is_file()
    assert (target / "handlers" / "hello.py").is_file()
    assert not list(target.rglob("__pycache__"))

    assert main(["validate", str(target / "blueprint.yaml")]) == 0
    assert capsys.readouterr().out == f"{target / 'blueprint.yaml'}: OK: 'my-api', 2 endpoint(s)\n"


def test_init_into_an_existing_empty_directory(tmp_path, capsys):
    target = tmp_path / "empty"
    target.mkdir()
    assert main(["init", str(target)]) == 0
    assert (target / "blueprint.yaml").is_file()


def test_init_refuses_a_non_empty_directory(tmp_path, capsys):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["init", str(target)]) == 2
    assert capsys.readouterr().err == f"backworks init: {target} exists and is not empty; choose a new directory\n"
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"


def test_init_refuses_a_file(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    assert main(["init", str(target)]) == 2
    assert capsys.readouterr().err == f"backworks init: {target} is a file; choose a new directory\n"
    assert target.read_text() == "mine"


async def test_init_project_serves_its_endpoints(tmp_path, compile_gateway, send, capsys):
    target = tmp_path / "served"
    assert main(["init", str(target)]) == 0
    gateway = compile_gateway(target / "blueprint.yaml")
    flow = await send(gateway, "GET", "/hello/ada")
    assert flow.response.status_code == 200
    assert flow.response.headers["X-Greeting"] == "yes"
    assert json.loads(flow.response.get_content()) == {"message": "Hello, ada!"}
    flow = await send(gateway, "GET", "/hello")
    assert json.loads(flow.response.get_content())["message"] == "Hello from my-api"


def test_validate_finds_an_endpoint_on_the_status_page_path_when_exposed_on_the_api(project, capsys):
    path = project.blueprint(
        """
name: clash
server: {admin: {expose_on_api: true}}
dashboard: {path: /status}
endpoints:
  - {path: /status, handler: static, config: {static: {body: mine}}}
"""
    )
    assert main(["validate", str(path)]) == 1
    _, err = capsys.readouterr()
    assert f"{path}:3:19: dashboard.path: /status (the status page) is also the path of endpoints[0] (GET /status)" in err


def test_validate_prints_the_located_warning_of_the_admin_opt_in(project, capsys):
    path = project.blueprint(
        """
name: open
server: {admin: {expose_on_api: true}}
endpoints:
  - {path: /status, handler: static, config: {static: {body: mine}}}
"""
    )
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}:2:33: warning: server.admin.expose_on_api: /__backworks, /__backworks/api/status are served on the API's listener to any client" in err
    assert out.endswith("1 warning(s)\n")


def test_validate_counts_only_the_blueprints_endpoints(project, capsys):
    path = project.blueprint(
        """
name: pages
plugins: {metrics: {}}
endpoints:
  - {path: /a, handler: static, config: {static: {body: a}}}
"""
    )
    assert main(["validate", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert out.strip().endswith("OK: 'pages', 1 endpoint(s)")


SHIPPED_BLUEPRINTS = sorted(
    [*(Path(__file__).parents[2] / "blueprints").rglob("*.yaml"), Path(__file__).parents[2] / "backworks_core" / "scaffold" / "blueprint.yaml"]
)


@pytest.mark.parametrize("path", SHIPPED_BLUEPRINTS, ids=lambda p: str(p.relative_to(Path(__file__).parents[2])))
def test_every_shipped_blueprint_validates_against_the_schema(schema, path):
    """With a real JSON Schema validator, `${VAR}` / `${VAR:-default}` values included."""
    from jsonschema import Draft202012Validator

    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft202012Validator(schema).iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_schema_takes_env_references_where_the_loader_does(schema):
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    base = {"name": "x", "endpoints": [{"path": "/a", "handler": "static", "config": {"static": {}}}]}
    assert validator.is_valid({**base, "server": {"port": "${PORT:-8080}", "unmatched": "${UNMATCHED}"}})
    assert not validator.is_valid({**base, "server": {"port": "eighty"}})  # still typed
    assert not validator.is_valid({**base, "server": {"port": "${PORT"}})
