"""addons/dispatch.py: the event table calls what mitmproxy's own dispatch calls, in its order."""

from __future__ import annotations

import importlib.util
import logging
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import addonmanager, exceptions, hooks, options
from mitmproxy.proxy.layers.http import _hooks as http_hooks
from mitmproxy.test import taddons, tflow
from mitmproxy.tools.dump import DumpMaster

from addons import dispatch
from addons.dispatch import OPTION, CachedDispatch, EventTable, handlers_for, version_supported

ROOT = Path(__file__).resolve().parents[2]

# What a test addon does when an event reaches it.
BEHAVIOURS = ("sync", "async", "raise", "halt", "none")


class Recorder:
    """An addon whose `request` hook records its name and then does what it was told."""

    def __init__(self, name: str, log: list[str], behaviour: str = "sync", children: list[Any] | None = None) -> None:
        self.name = name
        self.log = log
        if children is not None:
            self.addons = children
        if behaviour == "none":
            return
        if behaviour == "async":

            async def request(flow: Any) -> None:
                self.log.append(self.name)

        else:

            def request(flow: Any) -> None:
                self.log.append(self.name)
                if behaviour == "raise":
                    raise ValueError(f"{self.name} failed")
                if behaviour == "halt":
                    raise exceptions.AddonHalt()

        self.request = request


def request_event() -> hooks.Hook:
    return http_hooks.HttpRequestHook(tflow.tflow())


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def dispatched(manager: addonmanager.AddonManager, event: hooks.Hook) -> list[str]:
    """The errors mitmproxy logged while dispatching `event` (the calls go to each Recorder's log)."""
    collected = Collected()
    logger = logging.getLogger("mitmproxy.addonmanager")
    logger.addHandler(collected)
    try:
        await manager.trigger_event(event)
    finally:
        logger.removeHandler(collected)
    return collected.messages


def build(tree: list[tuple[str, list[str]]], log: list[str]) -> list[Recorder]:
    """Top-level addons from (behaviour, children's behaviours) pairs, named by position."""
    chain = []
    for i, (behaviour, children) in enumerate(tree):
        kids = [Recorder(f"a{i}.{j}", log, b) for j, b in enumerate(children)]
        chain.append(Recorder(f"a{i}", log, behaviour, kids if kids else None))
    return chain


TREES = st.lists(st.tuples(st.sampled_from(BEHAVIOURS), st.lists(st.sampled_from(BEHAVIOURS), max_size=3)), max_size=6)


@settings(max_examples=150, deadline=None)
@given(tree=TREES)
async def test_the_table_calls_what_mitmproxy_calls_with_the_same_errors_and_halts(tree: list[tuple[str, list[str]]]) -> None:
    """Differential: any tree of sync, async, failing and halting hooks, both dispatches."""
    outcomes = []
    for cached in (False, True):
        log: list[str] = []
        with taddons.context() as tctx:
            manager = tctx.master.addons
            for addon in build(tree, log):
                manager.add(addon)
            if cached:
                EventTable(manager).install()
            errors = await dispatched(manager, request_event())
        outcomes.append((log, [e.split(":")[0] for e in errors], len(errors)))
    assert outcomes[0] == outcomes[1]


async def test_a_failing_child_ends_its_addon_not_the_event() -> None:
    log: list[str] = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        manager.add(*build([("sync", ["raise", "sync"]), ("async", [])], log))
        EventTable(manager).install()
        errors = await dispatched(manager, request_event())
    assert log == ["a0", "a0.0", "a1"]  # a0.1 is not called: its parent's safecall ended with a0.0
    assert errors == ["Addon error: a0.0 failed"]


async def test_options_error_propagates_and_halt_ends_the_event() -> None:
    log: list[str] = []

    class Refuses:
        def request(self, flow: Any) -> None:
            raise exceptions.OptionsError("refused")

    with taddons.context() as tctx:
        manager = tctx.master.addons
        halting, after = build([("halt", []), ("sync", [])], log)
        manager.add(halting, after)
        EventTable(manager).install()
        assert await dispatched(manager, request_event()) == []
        assert log == ["a0"]
        manager.add(Refuses())
        manager.remove(halting)
        with pytest.raises(exceptions.OptionsError, match="refused"):
            await manager.trigger_event(request_event())


def test_modules_are_skipped_and_a_non_callable_is_kept_to_be_reported() -> None:
    class ImportsAModule:
        request = types.ModuleType("request")

    class NotCallable:
        request = 42

    log: list[str] = []
    calls = Recorder("plain", log)
    rows = handlers_for([ImportsAModule(), NotCallable(), calls], "request")
    assert [type(r.addon).__name__ for r in rows] == ["NotCallable", "Recorder"]
    assert rows[1].members == (calls,)


async def test_a_hook_rebound_or_a_class_swapped_after_the_table_is_built_is_honoured() -> None:
    """As mitmdump's Dumper becomes a NamingDumper in `running` (addons/shown_target.py)."""
    log: list[str] = []

    class Plain:
        def request(self, flow: Any) -> None:
            log.append("plain")

    class Swapped(Plain):
        def request(self, flow: Any) -> None:
            log.append("swapped")

    with taddons.context() as tctx:
        manager = tctx.master.addons
        addon = Plain()
        manager.add(addon)
        EventTable(manager).install()
        await dispatched(manager, request_event())
        addon.__class__ = Swapped
        await dispatched(manager, request_event())
        addon.request = lambda flow: log.append("rebound")  # type: ignore[method-assign]
        await dispatched(manager, request_event())
    assert log == ["plain", "swapped", "rebound"]


async def test_a_non_callable_hook_is_reported_as_mitmproxy_reports_it() -> None:
    class NotCallable:
        request = 42

    log: list[str] = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        manager.add(NotCallable(), Recorder("after", log))
        EventTable(manager).install()
        errors = await dispatched(manager, request_event())
    assert log == ["after"]
    assert len(errors) == 1 and "not callable" in errors[0]


async def test_addons_added_registered_or_removed_later_are_seen() -> None:
    """The table is rebuilt after add, remove, clear and register (how scripts load their children)."""
    log: list[str] = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        first = Recorder("first", log)
        holder = Recorder("holder", log, "none", children=[])
        manager.add(first, holder)
        EventTable(manager).install()
        await dispatched(manager, request_event())
        assert log == ["first"]

        child = Recorder("child", log)
        manager.register(child)  # what a script does with its module, then lists it as a child
        holder.addons.append(child)
        log.clear()
        await dispatched(manager, request_event())
        assert log == ["first", "child"]

        manager.add(Recorder("added", log))
        manager.remove(first)
        log.clear()
        await dispatched(manager, request_event())
        assert log == ["child", "added"]

        manager.clear()
        log.clear()
        await dispatched(manager, request_event())
        assert log == []


async def test_running_and_done_go_through_mitmproxys_dispatch() -> None:
    seen: list[str] = []

    class Lifecycle:
        def running(self) -> None:
            seen.append("running")

    with taddons.context() as tctx:
        manager = tctx.master.addons
        table = EventTable(manager)
        table.install()
        manager.add(Lifecycle())
        await manager.trigger_event(hooks.RunningHook())
        assert seen == ["running"] and table.rows == {}


def test_the_option_installs_and_removes_the_table() -> None:
    addon = CachedDispatch()
    with taddons.context(addon) as tctx:
        manager = tctx.master.addons
        tctx.configure(addon, **{OPTION: True})
        assert addon.table is not None and addon.table.installed()
        assert manager.trigger_event.__self__ is addon.table  # type: ignore[attr-defined]
        tctx.configure(addon, **{OPTION: False})
        assert addon.table is None
        assert "trigger_event" not in manager.__dict__ and "register" not in manager.__dict__
        assert manager.trigger_event.__func__ is addonmanager.AddonManager.trigger_event  # type: ignore[attr-defined]


def test_uninstall_leaves_a_newer_table_in_place() -> None:
    """A reloaded script's instance installs its own before the old one's `done` runs."""
    with taddons.context() as tctx:
        manager = tctx.master.addons
        old, new = EventTable(manager), EventTable(manager)
        old.install()
        new.install()
        old.uninstall()
        assert new.installed()
        new.uninstall()
        assert "trigger_event" not in manager.__dict__


def test_unknown_mitmproxy_versions_keep_mitmproxys_dispatch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert version_supported("11.0.2") and version_supported("12.1.1")
    assert not version_supported("13.0.0") and not version_supported("dev")
    monkeypatch.setattr(dispatch, "VERSION", "13.0.0")
    monkeypatch.setattr(dispatch, "version_supported", lambda: False)
    addon = CachedDispatch()
    with caplog.at_level(logging.INFO, logger="addons.dispatch"), taddons.context(addon) as tctx:
        tctx.configure(addon, **{OPTION: True})
        assert addon.table is None and "trigger_event" not in tctx.master.addons.__dict__
    assert any("13.0.0" in r.getMessage() and "own dispatch stays" in r.getMessage() for r in caplog.records)


def load_backworks_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("backworks_script_for_dispatch", ROOT / "backworks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_mitmdumps_whole_chain_table_matches_mitmproxys_walk_for_every_hook() -> None:
    """mitmdump's default addons with backworks.py's as a script's children, every known hook."""
    master = DumpMaster(options.Options(), with_termlog=False, with_dumper=True)
    script = load_backworks_script()
    holder = types.SimpleNamespace(addons=[script], name="scriptholder")
    master.addons.add(holder)
    manager = master.addons
    for name in sorted(hooks.all_hooks):
        walked = [func for top in manager.chain for _, func in manager._iter_hooks(top, hooks.all_hooks[name].__new__(hooks.all_hooks[name]))]
        tabled = [getattr(member, name) for row in handlers_for(manager.chain, name) for member in row.members]
        assert tabled == walked, name
    assert any(row.addon is holder for row in handlers_for(manager.chain, "request"))
