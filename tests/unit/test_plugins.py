"""The plugin registry (built-ins plus `backworks.plugins` entry points) and the middleware mechanism.

The third-party plugin is a real distribution on disk (`bw_tagger` + `bw_tagger-1.0.dist-info`,
see conftest.py), found through importlib.metadata exactly as an installed package would be.
"""

from __future__ import annotations

import logging

import pytest

from addons import builtin_plugins
from addons.proxy import ProxyPlugin
from backworks_core.plugins import BrokenPlugin, Plugin, PluginRegistry

from .conftest import body_json, diagnostic_lines

# -- discovery ------------------------------------------------------------------------------


def test_without_third_party_packages_only_builtins(registry):
    assert registry.names() == ["auth", "capture", "cors", "fault", "metrics", "proxy", "rate_limit", "transform"]
    assert registry.handler_owner == {"proxy": "proxy", "auth.register": "auth", "auth.login": "auth", "auth.validate": "auth", "metrics": "metrics"}
    assert set(registry.sections) == {"proxy", "metrics"}
    assert registry.broken == {}


def test_discover_finds_the_installed_distribution(discovered):
    assert discovered.names() == ["auth", "capture", "cors", "fault", "metrics", "needs_proxy", "needy", "proxy", "rate_limit", "tagger", "transform"]
    tagger = discovered.plugins["tagger"]
    assert issubclass(tagger, Plugin)
    assert tagger.__module__ == "bw_tagger"
    assert discovered.plugins["proxy"] is ProxyPlugin
    assert discovered.handler_owner == {
        "proxy": "proxy", "auth.register": "auth", "auth.login": "auth", "auth.validate": "auth", "metrics": "metrics", "tagger.record": "tagger"
    }


def test_discover_records_broken_entry_points(discovered, caplog):
    assert set(discovered.broken) == {"brokenplug", "notaplugin", "misnamed"}
    assert discovered.broken["brokenplug"].reason == "ModuleNotFoundError: No module named 'bw_missing_module_xyz'"
    assert discovered.broken["notaplugin"].reason == "bw_tagger:EVENTS is not a backworks Plugin subclass"
    assert discovered.broken["misnamed"].reason == "bw_tagger:Misnamed is named 'something_else', not 'misnamed'"


def test_a_broken_entry_point_is_logged(third_party, caplog):
    caplog.set_level(logging.WARNING)
    PluginRegistry.discover(builtin_plugins())
    assert "plugin 'brokenplug' (bw_missing_module_xyz:Plugin) failed to load" in caplog.text


def test_a_broken_plugin_is_reported_when_a_blueprint_names_it(project, discovered, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          brokenplug: {}
        middlewares:
          - {name: m, plugin: misnamed}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    assert diagnostic_lines(load_errors(path, registry_=discovered)) == [
        f"{path}:3:15: plugins.brokenplug: plugin 'brokenplug' is installed but failed to load: "
        "ModuleNotFoundError: No module named 'bw_missing_module_xyz'",
        f"{path}:5:23: middlewares[0].plugin: plugin 'misnamed' is installed but failed to load: "
        "bw_tagger:Misnamed is named 'something_else', not 'misnamed'",
    ]


def test_a_broken_plugin_nobody_names_does_not_matter(project, discovered, load):
    path = project.blueprint("name: x\nendpoints:\n  - {path: /ok, handler: static, config: {static: {}}}\n")
    assert load(path, registry_=discovered).settings.name == "x"


def test_third_party_cannot_take_a_builtin_name(caplog):
    class FakeProxy(Plugin):
        name = "proxy"
        handlers = ("fake",)

    caplog.set_level(logging.WARNING)
    registry = PluginRegistry([ProxyPlugin, FakeProxy])
    assert registry.plugins["proxy"] is ProxyPlugin
    assert "fake" not in registry.handler_owner
    assert "plugin 'proxy' from" in caplog.text
    assert "ignored: the name is taken" in caplog.text


def test_registry_accepts_broken_list():
    registry = PluginRegistry([], [BrokenPlugin("x", "why")])
    assert registry.names() == []
    assert registry.broken == {"x": BrokenPlugin("x", "why")}


def test_requires_missing_plugin_names_both(project, discovered, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          - type: needy
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path, registry_=discovered)
    assert error.key_path == "plugins[0].config"
    assert error.message == "plugin 'needy' requires plugin 'metrics_store', which is not installed"


def test_requires_satisfied(project, discovered, load):
    path = project.blueprint(
        """
        name: x
        plugins:
          needs_proxy: {}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    assert set(load(path, registry_=discovered).plugin_configs) == {"needs_proxy"}


def test_third_party_plugin_config_is_strict(project, discovered, load_errors):
    path = project.blueprint(
        """
        name: x
        plugins:
          tagger: {config: {colour: red}}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    (error,) = load_errors(path, registry_=discovered)
    assert error.key_path == "plugins.tagger.config.colour"
    assert error.message == "unknown key 'colour'"


# -- middlewares through the gateway --------------------------------------------------------

MIDDLEWARE_BLUEPRINT = """
name: middleware-test
middlewares:
  - {name: first, plugin: tagger, config: {tag: first}}
  - {name: api_only, plugin: tagger, config: {tag: api, path: "/api/*"}}
  - {name: posts, plugin: tagger, config: {tag: posts, methods: [post]}}
  - {name: api_posts, plugin: tagger, config: {tag: api_posts, path: "/api/*", methods: [POST]}}
  - {name: exact, plugin: tagger, config: {tag: exact, path: /api/resources}}
  - {name: last, plugin: tagger, config: {tag: last}}
  - {name: idle, plugin: tagger, config: {tag: idle}}
endpoints:
  - {path: /plain, handler: tagger.record}
  - {path: /listed, method: [GET, POST], handler: tagger.record, middleware: [last, first]}
  - {path: "/api/{name}", method: [GET, POST], handler: tagger.record}
  - {path: "/api/resources/:id", handler: tagger.record, middleware: [exact]}
  - {path: /api/resources, handler: tagger.record}
"""


@pytest.fixture
def mw_gateway(project, discovered, compile_gateway, tagger_events):
    path = project.blueprint(MIDDLEWARE_BLUEPRINT)
    return compile_gateway(path, registry_=discovered)


async def tags_for(gateway, send, method, path):
    flow = await send(gateway, method, path)
    assert flow.response.status_code == 200, flow.response.get_content()
    tags = body_json(flow.response)["tags"]
    assert flow.response.headers.get("X-Tags", "") == ",".join(tags)
    return tags


async def test_no_filter_and_no_reference_applies_to_nothing(mw_gateway, send, tagger_events):
    assert await tags_for(mw_gateway, send, "GET", "/plain") == []
    assert tagger_events == ["handler"]


async def test_applied_by_reference_in_blueprint_order(mw_gateway, send, tagger_events):
    # the endpoint lists [last, first]; the blueprint defines first before last
    assert await tags_for(mw_gateway, send, "GET", "/listed") == ["first", "last"]
    assert tagger_events == ["request:first", "request:last", "handler", "response:last", "response:first"]


async def test_applied_by_path_filter(mw_gateway, send):
    assert await tags_for(mw_gateway, send, "GET", "/api/users") == ["api"]


async def test_applied_by_method_filter(mw_gateway, send):
    # `methods: [post]` is case-insensitive; the reference and the filter unite
    assert await tags_for(mw_gateway, send, "POST", "/listed") == ["first", "posts", "last"]


async def test_path_and_method_filters_together(mw_gateway, send):
    assert await tags_for(mw_gateway, send, "POST", "/api/users") == ["api", "posts", "api_posts"]
    assert await tags_for(mw_gateway, send, "GET", "/api/users") == ["api"]


async def test_union_of_reference_and_filter(mw_gateway, send):
    # `exact` filters on /api/resources only, yet /api/resources/:id lists it: both apply
    assert await tags_for(mw_gateway, send, "GET", "/api/resources/7") == ["api", "exact"]
    assert await tags_for(mw_gateway, send, "GET", "/api/resources") == ["api", "exact"]


async def test_method_filter_for_get_also_covers_head(project, discovered, compile_gateway, send, tagger_events):
    """The router serves HEAD with the GET endpoint; a GET-only guard must guard that HEAD too."""
    path = project.blueprint(
        """
        name: head
        middlewares:
          - {name: guard, plugin: tagger, config: {tag: guard, path: "/x", methods: [GET], action: answer}}
        endpoints:
          - {path: /x, handler: tagger.record}
        """
    )
    gateway = compile_gateway(path, registry_=discovered)
    get = await send(gateway, "GET", "/x")
    assert get.response.status_code == 418
    head = await send(gateway, "HEAD", "/x")
    assert head.response.status_code == 418
    assert "handler" not in tagger_events


@pytest.mark.parametrize("request_path", ["/api/resources", "/api/resources/", "/api/%72esources", "/api/resources?x=1"])
async def test_path_filter_sees_the_path_the_router_matched(project, discovered, compile_gateway, send, tagger_events, request_path):
    """Every spelling the router sends to /api/resources must meet the middleware filtering on it."""
    path = project.blueprint(
        """
        name: spellings
        middlewares:
          - {name: guard, plugin: tagger, config: {tag: guard, path: /api/resources, action: answer}}
        endpoints:
          - {path: /api/resources, handler: tagger.record}
        """
    )
    gateway = compile_gateway(path, registry_=discovered)
    flow = await send(gateway, "GET", request_path)
    assert flow.response.status_code == 418, f"{request_path} reached the handler without the middleware"
    assert "handler" not in tagger_events


def test_middlewares_for(mw_gateway):
    listed = next(e for e in mw_gateway.endpoints if e.template == "/listed")
    names = [m.name for m in mw_gateway.middlewares_for(listed, "DELETE", "/listed")]
    assert names == ["first", "last"]
    assert [m.has_filter for m in mw_gateway.middlewares] == [False, True, True, True, True, False, False]


MIDDLEWARE_ACTIONS = """
name: actions
middlewares:
  - {name: before, plugin: tagger, config: {tag: before, path: "/*"}}
  - {name: action, plugin: tagger, config: {tag: action, path: "/*", action: ACTION}}
  - {name: after, plugin: tagger, config: {tag: after, path: "/*"}}
endpoints:
  - {path: /x, handler: tagger.record}
"""


async def test_a_middleware_that_raises_denies_the_request(project, discovered, compile_gateway, send, tagger_events, caplog):
    caplog.set_level(logging.ERROR)
    gateway = compile_gateway(project.blueprint(MIDDLEWARE_ACTIONS.replace("ACTION", "raise")), registry_=discovered)
    flow = await send(gateway, "GET", "/x", headers={"X-Request-ID": "deny-1"})
    assert flow.response.status_code == 500
    assert body_json(flow.response) == {
        "error": "middleware 'action' failed; the request was denied",
        "status": 500,
        "request_id": "deny-1",
    }
    # fail closed: the handler never ran, nor did anything after the failing middleware
    assert tagger_events == ["request:before", "request:action"]
    assert "handler" not in tagger_events
    assert "denied_by=action" in flow.comment
    assert "middleware action exploded" in caplog.text


async def test_a_middleware_response_short_circuits(project, discovered, compile_gateway, send, tagger_events):
    gateway = compile_gateway(project.blueprint(MIDDLEWARE_ACTIONS.replace("ACTION", "answer")), registry_=discovered)
    flow = await send(gateway, "GET", "/x")
    assert flow.response.status_code == 418
    assert body_json(flow.response) == {"answered_by": "action"}
    # the middlewares that ran before see the response on its way out; the handler never ran
    assert tagger_events == ["request:before", "request:action", "response:action", "response:before"]
    assert flow.response.headers["X-Tags"] == "before,action"
    assert "answered_by=action" in flow.comment


async def test_a_middleware_that_raises_on_the_response_is_a_500(project, discovered, compile_gateway, send, tagger_events):
    gateway = compile_gateway(
        project.blueprint(MIDDLEWARE_ACTIONS.replace("ACTION", "raise_on_response")), registry_=discovered
    )
    flow = await send(gateway, "GET", "/x", headers={"X-Request-ID": "resp-1"})
    assert flow.response.status_code == 500
    assert body_json(flow.response) == {
        "error": "middleware 'action' failed on the response",
        "status": 500,
        "request_id": "resp-1",
    }
    assert tagger_events == [
        "request:before", "request:action", "request:after", "handler", "response:after", "response:action"
    ]


async def test_middlewares_do_not_run_on_404_or_405(mw_gateway, send, tagger_events):
    flow = await send(mw_gateway, "GET", "/api/nothing/here")
    assert flow.response.status_code == 404
    flow = await send(mw_gateway, "DELETE", "/api/users")
    assert flow.response.status_code == 405
    assert tagger_events == []
