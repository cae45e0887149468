"""backworks_core.loader: YAML → validated, located settings, or every error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from addons.proxy import ProxyPluginConfig
from backworks_core.handlers.python import PythonConfig
from backworks_core.handlers.static import StaticConfig
from backworks_core.loader import load_blueprint
from backworks_core.diagnostics import BlueprintError

from .conftest import diagnostic_lines

TARGETS = """
      targets:
        - {name: one, url: "http://127.0.0.1:3001"}
        - {name: two, url: "http://127.0.0.1:3002", weight: 2}
"""


def by_path(diagnostics):
    return {d.key_path: d for d in diagnostics}


# -- plugins: map form, list form, `enabled` ------------------------------------------------


def test_plugins_map_and_list_forms_mean_the_same(project, load):
    map_form = project.blueprint(
        """
        name: maps
        plugins:
          proxy:
            enabled: true
            config:
              targets:
                - {name: one, url: "http://127.0.0.1:3001"}
                - {name: two, url: "http://127.0.0.1:3002", weight: 2}
        endpoints:
          - {path: /x, handler: proxy}
        """,
        "map.yaml",
    )
    list_form = project.blueprint(
        """
        name: lists
        plugins:
          - type: proxy
            config:
              targets:
                - {name: one, url: "http://127.0.0.1:3001"}
                - {name: two, url: "http://127.0.0.1:3002", weight: 2}
        endpoints:
          - {path: /x, handler: proxy}
        """,
        "list.yaml",
    )
    a, b = load(map_form), load(list_form)
    assert isinstance(a.plugin_configs["proxy"], ProxyPluginConfig)
    assert a.plugin_configs == b.plugin_configs
    assert [(t.name, t.url, t.weight) for t in a.plugin_configs["proxy"].targets] == [
        ("one", "http://127.0.0.1:3001", 1.0),
        ("two", "http://127.0.0.1:3002", 2.0),
    ]
    assert a.plugin_locs["proxy"] == ("plugins", "proxy", "config")
    assert b.plugin_locs["proxy"] == ("plugins", 0, "config")


@pytest.mark.parametrize(
    "plugins",
    [
        "plugins:\n  proxy:\n    enabled: false\n",
        "plugins:\n  proxy:\n    config: {enabled: false}\n",
        "plugins:\n  - type: proxy\n    config: {enabled: false}\n",
        "plugins:\n  - type: proxy\n    enabled: false\n",
    ],
    ids=["map", "map-inside-config", "list-inside-config", "list"],
)
def test_disabled_plugin_is_not_configured_and_its_handler_is_refused(project, load, load_errors, plugins):
    path = project.blueprint(
        "name: disabled\n" + plugins + "endpoints:\n  - {path: /ok, handler: static, config: {static: {}}}\n"
    )
    assert load(path).plugin_configs == {}

    path.write_text(path.read_text() + "  - {path: /p, handler: proxy}\n")
    (error,) = load_errors(path)
    assert error.key_path == "endpoints[1].handler"
    assert error.message == "handler 'proxy' belongs to plugin 'proxy', which is disabled in `plugins`"


def test_enabled_inside_config_must_be_a_boolean(project, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          - type: proxy
            config: {enabled: maybe}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path)
    assert str(error) == f"{path}:4:23: plugins[0].config.enabled: expected true or false, got 'maybe'"


def test_plugin_listed_twice_in_list_form(project, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          - {type: proxy}
          - {type: proxy}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path)
    assert (error.line, error.key_path) == (4, "plugins[1].type")
    assert error.message == "plugin 'proxy' is listed twice (also at plugins[0])"


def test_plugin_config_is_validated_with_the_plugins_own_field_names(project, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          proxy:
            config:
              targetz: []
              load_balancing: round_robin
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path)
    assert str(error) == f"{path}:5:7: plugins.proxy.config.targetz: unknown key 'targetz'; did you mean 'targets'?"


# -- environment ----------------------------------------------------------------------------


def test_environment_variables_and_defaults(project, load):
    path = project.blueprint(
        """
        name: ${API_NAME}
        server:
          port: ${PORT:-9000}
          host: ${HOST:-0.0.0.0}
        endpoints:
          - path: /hello
            handler: static
            config:
              static: {body: "hello ${WHO}", headers: {X-Env: "${WHO:-nobody}"}}
        """
    )
    loaded = load(path, env={"API_NAME": "env-api", "WHO": "ada", "HOST": "10.0.0.1"})
    assert loaded.settings.name == "env-api"
    assert loaded.settings.server.port == 9000
    assert loaded.settings.server.host == "10.0.0.1"
    static = loaded.endpoints[0].sections["static"]
    assert isinstance(static, StaticConfig)
    assert static.body == "hello ada"
    assert static.headers == {"X-Env": "ada"}


def test_environment_is_the_one_passed_not_the_process_environment(project, load_errors, monkeypatch):
    monkeypatch.setenv("BW_TEST_ONLY_IN_PROCESS", "set")
    path = project.blueprint(
        """
        name: ${BW_TEST_ONLY_IN_PROCESS}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path, env={})
    assert error.key_path == "name"
    assert (error.line, error.col) == (1, 7)
    assert "BW_TEST_ONLY_IN_PROCESS is not set" in error.message


def test_unset_variable_does_not_hide_the_other_errors(project, load_errors):
    """All errors at once: an unset variable is one error among the others, not a stop."""
    path = project.blueprint(
        """
        name: x
        endpoints:
          - path: /a
            handler: static
            config: {static: {body: "${GREETING}"}}
          - path: /b
            handler: statik
        """
    )
    errors = by_path(load_errors(path))
    assert set(errors) == {"endpoints[0].config.static.body", "endpoints[1].handler"}
    assert "GREETING is not set" in errors["endpoints[0].config.static.body"].message
    assert errors["endpoints[1].handler"].message.startswith("unknown handler 'statik'; did you mean 'static'?")


# -- paths relative to the blueprint --------------------------------------------------------


def test_paths_are_relative_to_the_blueprint_not_the_cwd(project, load, tmp_path, monkeypatch):
    project.write(
        "handlers/hello.py",
        """
        def handler(request):
            return {"hello": request.params["name"]}
        """,
    )
    project.write("certs/server.pem", "(a PEM file)")
    project.blueprint(
        """
        name: rel
        server:
          tls: {cert: certs/server.pem}
        endpoints:
          - {path: "/hello/{name}", handler: handlers/hello.py}
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "handlers").mkdir()  # a decoy next to the cwd must not be used
    (elsewhere / "handlers" / "hello.py").write_text("raise RuntimeError('wrong folder')\n")
    monkeypatch.chdir(elsewhere)

    loaded = load(Path("../project/blueprint.yaml"))
    assert loaded.settings.server.tls is not None
    assert loaded.settings.server.tls.cert == str(project.root.resolve() / "certs" / "server.pem")
    spec = loaded.endpoints[0]
    assert spec.handler == "python"
    assert spec.python_function.__name__ == "handler"
    assert (project.root / "handlers" / "hello.py").resolve() in loaded.files
    assert (project.root / "blueprint.yaml").resolve() in loaded.files


# -- every error at once --------------------------------------------------------------------


def test_every_error_is_reported_at_once_with_location_and_suggestion(project, load_errors):
    path = project.blueprint(
        """
        name: many
        servr: {port: 8080}
        endpoints:
          - path: /a
            handler: static
            config:
              static: {stauts: 201}
          - path: /b
            handler: static
            config:
              static: {status: "two hundred"}
          - path: /c
            method: FETCH
            handler: static
            config: {static: {}}
        """
    )
    assert diagnostic_lines(load_errors(path)) == [
        f"{path}:2:1: servr: unknown key 'servr'; did you mean 'server'?",
        f"{path}:7:16: endpoints[0].config.static.stauts: unknown key 'stauts'; did you mean 'status'?",
        f"{path}:11:24: endpoints[1].config.static.status: expected an integer, got string 'two hundred'",
        f"{path}:13:13: endpoints[2].method: unknown HTTP method 'FETCH' (expected one of ANY, CONNECT, "
        "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE)",
    ]


def test_method_and_methods_both_given(project, load_errors):
    path = project.blueprint(
        """
        name: x
        endpoints:
          - path: /c
            method: GET
            methods: [POST]
            handler: static
            config: {static: {}}
        """
    )
    (error,) = load_errors(path)
    assert error.key_path == "endpoints[0]"
    assert error.line == 3
    assert error.message == "write either 'method' or 'methods', not both"


def test_methods_alias_and_case(project, load):
    path = project.blueprint(
        """
        name: x
        endpoints:
          - {path: /a, methods: [get, Post], handler: static, config: {static: {}}}
          - {path: /b, method: delete, handler: static, config: {static: {}}}
          - {path: /c, handler: static, config: {static: {}}}
        """
    )
    assert [e.methods for e in load(path).endpoints] == [
        frozenset({"GET", "POST"}),
        frozenset({"DELETE"}),
        frozenset({"GET"}),
    ]


def test_empty_and_non_mapping_blueprints(project, load_errors):
    empty = project.blueprint("", "empty.yaml")
    (error,) = load_errors(empty)
    assert error.message == "the blueprint is empty: it needs at least `name` and `endpoints`"
    listed = project.blueprint("- a\n- b\n", "list.yaml")
    (error,) = load_errors(listed)
    assert error.message == "expected a mapping at the top level, got list"


def test_missing_file_is_an_error_not_a_crash(project, registry):
    with pytest.raises(BlueprintError) as info:
        load_blueprint(project.root / "nope.yaml", registry, env={})
    (error,) = info.value.diagnostics
    assert error.file == str(project.root / "nope.yaml")
    assert error.message.startswith("cannot read blueprint:")


# -- routes ---------------------------------------------------------------------------------


def test_duplicate_routes_are_rejected(project, load_errors):
    path = project.blueprint(
        """
        name: dup
        endpoints:
          - {path: "/users/{id}", method: [GET, POST], handler: static, config: {static: {}}}
          - {path: "/users/:uid", method: POST, handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path)
    assert str(error) == (
        f"{path}:4:12: endpoints[1].path: duplicate route: POST /users/:uid is already defined "
        "by endpoints[0] (as /users/{id})"
    )


def test_duplicate_route_names_the_blueprint_index_after_an_invalid_endpoint(project, load_errors):
    path = project.blueprint(
        """
        name: dup
        endpoints:
          - {path: /bad, handler: statik}
          - {path: /c, handler: static, config: {static: {}}}
          - {path: /c, handler: static, config: {static: {}}}
        """
    )
    errors = by_path(load_errors(path))
    assert set(errors) == {"endpoints[0].handler", "endpoints[2].path"}
    assert errors["endpoints[2].path"].message == "duplicate route: GET /c is already defined by endpoints[1]"


def test_ambiguous_hosts_are_a_warning(project, load):
    path = project.blueprint(
        """
        name: hosts
        endpoints:
          - {path: /a, host: "*.example.com", handler: static, config: {static: {}}}
          - {path: /a, host: "api.*", handler: static, config: {static: {}}}
          - {path: /a, host: "static.test", handler: static, config: {static: {}}}
        """
    )
    loaded = load(path)
    assert len(loaded.endpoints) == 3
    (warning,) = loaded.warnings
    assert warning.severity == "warning"
    assert str(warning) == (
        f"{path}:4:12: warning: endpoints[1].path: ambiguous route: GET /a for host 'api.*' overlaps "
        "endpoints[0] for host '*.example.com'; a request for a host matching both (e.g. 'api.example.com') "
        "goes to endpoints[0]"
    )


def test_bad_path_template_is_located(project, load_errors):
    path = project.blueprint(
        """
        name: x
        endpoints:
          - {path: "/a/{id:float}", handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path)
    assert error.key_path == "endpoints[0].path"
    assert (error.line, error.col) == (3, 12)


# -- plugins, handlers and sections that do not exist ---------------------------------------


def test_unknown_plugin_with_suggestion(project, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          proxi: {}
          zzzzzz: {}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    assert diagnostic_lines(load_errors(path)) == [
        f"{path}:3:3: plugins.proxi: unknown plugin 'proxi'; did you mean 'proxy'?",
        f"{path}:4:3: plugins.zzzzzz: unknown plugin 'zzzzzz' (installed plugins: auth, capture, cors, fault, metrics, proxy, rate_limit, transform)",
    ]


def test_planned_plugin_is_named_as_not_available_yet(project, load_errors, monkeypatch):
    monkeypatch.setattr("backworks_core.loader.PLANNED_PLUGINS", frozenset({"graphql"}))
    path = project.blueprint(
        """
        name: x
        plugins:
          - type: graphql
            config: {}
        middlewares:
          - {name: gq, plugin: graphql, config: {}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    assert diagnostic_lines(load_errors(path)) == [
        f"{path}:3:5: plugins[0].type: plugin 'graphql' is not available in this version of Backworks yet",
        f"{path}:6:16: middlewares[0].plugin: plugin 'graphql' is not available in this version of Backworks yet",
    ]


def test_unknown_handler_with_suggestion(project, load_errors):
    path = project.blueprint(
        """
        name: x
        endpoints:
          - {path: /a, handler: proxxy}
        """
    )
    (error,) = load_errors(path)
    assert (error.line, error.col, error.key_path) == (3, 25, "endpoints[0].handler")
    assert error.message.startswith("unknown handler 'proxxy'; did you mean 'proxy'? (expected one of auth.login, auth.register, auth.validate, metrics, mock, proxy, static, ")


def test_config_section_for_the_wrong_handler(project, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          proxy:
            config:
              targets: [{name: one, url: "http://127.0.0.1:3001"}]
        endpoints:
          - path: /a
            handler: static
            config:
              static: {}
              proxy: {path: /b}
          - path: /b
            handler: proxy
            config:
              statik: {}
        """
    )
    assert diagnostic_lines(load_errors(path)) == [
        f"{path}:11:7: endpoints[0].config.proxy: config.proxy is for handler 'proxy'; this endpoint's handler is 'static'",
        f"{path}:15:7: endpoints[1].config.statik: unknown config section 'statik'; did you mean 'static'?",
    ]


def test_static_handler_needs_its_section(project, load_errors):
    path = project.blueprint(
        """
        name: x
        endpoints:
          - {path: /a, handler: static}
        """
    )
    (error,) = load_errors(path)
    assert error.key_path == "endpoints[0].config"
    assert error.message == "handler 'static' needs `config.static` (status, headers, body, delay)"


def test_python_handler_gets_default_section(project, load):
    project.write("h.py", "def handler(request):\n    return 1\n")
    path = project.blueprint(
        """
        name: x
        endpoints:
          - {path: /a, handler: h.py}
          - {path: /b, handler: h.py, config: {python: {timeout: 250ms}}}
        """
    )
    a, b = load(path).endpoints
    assert a.sections == {"python": PythonConfig(timeout=30.0)}
    assert b.sections["python"].timeout == 0.25


# -- requirements and middlewares (with a real third-party plugin) --------------------------


def test_requires_names_both_plugins(project, discovered, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          needy: {}
          needs_proxy: {}
          proxy: {enabled: false}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    assert diagnostic_lines(load_errors(path, registry_=discovered)) == [
        f"{path}:3:10: plugins.needy.config: plugin 'needy' requires plugin 'metrics_store', which is not installed",
        f"{path}:4:16: plugins.needs_proxy.config: plugin 'needs_proxy' requires plugin 'proxy', which this blueprint disables",
    ]


def test_unused_middleware_warning(project, discovered, load):
    path = project.blueprint(
        """
        name: x
        middlewares:
          - {name: listed, plugin: tagger, config: {tag: a}}
          - {name: filtered, plugin: tagger, config: {tag: b, path: "/x*"}}
          - {name: idle, plugin: tagger, config: {tag: c}}
        endpoints:
          - {path: /x, handler: tagger.record, middleware: [listed]}
        """
    )
    loaded = load(path, registry_=discovered)
    assert [m.name for m in loaded.middlewares] == ["listed", "filtered", "idle"]
    assert diagnostic_lines(loaded.warnings) == [
        f"{path}:5:12: warning: middlewares[2].name: middleware 'idle' has no path/methods filter and no "
        "endpoint lists it: it applies to nothing"
    ]


def test_middleware_errors(project, discovered, load_errors):
    path = project.blueprint(
        """
        name: x
        middlewares:
          - {name: a, plugin: tagger, config: {tag: a, methods: [FETCH]}}
          - {name: a, plugin: tagger, config: {tag: b}}
          - {name: p, plugin: proxy}
          - {name: t, plugin: tagger, config: {tga: x}}
        endpoints:
          - {path: /x, handler: tagger.record, middleware: [a, tt, nothing_like_it]}
        """
    )
    assert diagnostic_lines(load_errors(path, registry_=discovered)) == [
        f"{path}:3:57: middlewares[0].config.methods: unknown HTTP method 'FETCH'",
        f"{path}:4:12: middlewares[1].name: middleware name 'a' is already used by middlewares[0]",
        f"{path}:5:23: middlewares[2].plugin: plugin 'proxy' offers no middleware (plugins that do: auth, cors, fault, rate_limit, tagger, transform)",
        f"{path}:6:39: middlewares[3].config.tag: required key 'tag' is missing",
        f"{path}:6:40: middlewares[3].config.tga: unknown key 'tga'; did you mean 'tag'?",
        f"{path}:8:56: endpoints[0].middleware[1]: no middleware named 'tt'; did you mean 't'?",
        f"{path}:8:60: endpoints[0].middleware[2]: no middleware named 'nothing_like_it' is defined in `middlewares`",
    ]
