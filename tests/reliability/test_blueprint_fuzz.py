"""Blueprint fuzzing: thousands of generated and mutated blueprints, each one either valid or
rejected with located errors (file:line:col: key.path: message); never a traceback, never a hang.

Most cases run in-process through compile_blueprint, as the core addon and `backworks validate`
do; a sample runs through the real `backworks validate` command and through the core addon
inside mitmproxy's test context. BACKWORKS_FUZZ_SEED repeats a run; BACKWORKS_FUZZ_SCALE scales
the counts.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.core import Backworks
from tests.reliability.fuzzing import (
    BlueprintChecker,
    Seed,
    Tally,
    alias_bomb,
    blueprints,
    collect_seeds,
    copy_examples,
    dump,
    text_mutation,
    tree_mutation,
)

pytestmark = [pytest.mark.reliability]

SEED = int(os.environ.get("BACKWORKS_FUZZ_SEED") or random.randrange(2**32))
SCALE = float(os.environ.get("BACKWORKS_FUZZ_SCALE", "1"))
COUNTS = {"generated": 1000, "tree-mutated": 1000, "text-mutated": 800}


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@dataclass
class Workspace:
    root: Path
    examples: Path
    scratch: Path
    seeds: list[Seed]
    checker: BlueprintChecker
    env: dict[str, str]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("blueprint-fuzz")
    examples = copy_examples(root)
    scratch = root / "scratch"
    scratch.mkdir()
    env = {
        "JWT_SECRET": "fuzz-secret-" + "x" * 32,
        "FUZZ_JWT_SECRET": "fuzz-secret-" + "y" * 32,
        "AUTH_USERS_FILE": str(root / "users.json"),
        "DEMO_BACKEND_URL": "http://127.0.0.1:3001",
        "BACKWORKS_PORT": "8080",
        "ADMIN_PORT": "9901",
        "FUZZ_URL": "http://127.0.0.1:3001",
        **{f"BACKEND_{i}_URL": f"http://127.0.0.1:{3000 + i}" for i in (1, 2, 3)},
    }
    seeds = collect_seeds(examples, scratch)
    return Workspace(root, examples, scratch, seeds, BlueprintChecker(env), env)


def any_case(ws: Workspace) -> st.SearchStrategy[tuple[str, Path, bytes]]:
    """One blueprint from any of the three strategies: (strategy, folder, content)."""
    return st.one_of(
        blueprints.map(lambda data: ("generated", ws.scratch, dump(data).encode())),
        tree_mutation(ws.seeds).map(lambda t: ("tree-mutated", t[0].folder, t[2])),
        text_mutation(ws.seeds).map(lambda t: ("text-mutated", t[0].folder, t[2])),
    )


# --------------------------------------------------------------------------------------
# In-process: the bulk of the cases


def test_every_seed_blueprint_compiles_or_fails_located(workspace: Workspace, report: Callable[[str], None]) -> None:
    """The corpus itself: the examples, the scaffold, and every blueprint in the tests and docs."""
    tally = Tally()
    for item in workspace.seeds:
        tally.add("seeds", item.origin, workspace.checker.check(item.folder, item.text))
    examples = [s for s in workspace.seeds if s.shipped]
    for item in examples:  # the shipped examples must stay valid
        assert workspace.checker.check(item.folder, item.text).valid, item.origin
    report(f"seed corpus: {len(workspace.seeds)} blueprints ({len(examples)} shipped examples, the scaffold, the rest from tests/ and docs/)")
    for line in tally.lines():
        report(line)


def test_generated_blueprints(workspace: Workspace, report: Callable[[str], None]) -> None:
    """Structured strategies over the real names, with plausible and wrong-typed values."""
    tally = Tally()

    @seed(SEED)
    @fuzz_settings(COUNTS["generated"])
    @given(blueprints)
    def run(data: dict) -> None:
        tally.add("generated", "", workspace.checker.check(workspace.scratch, dump(data)))

    run()
    report(f"hypothesis seed {SEED}")
    for line in tally.lines():
        report(line)
    assert sum(tally.cases.values()) >= COUNTS["generated"] * SCALE * 0.9
    assert tally.valid["generated"] > 0, "no generated blueprint was valid: the strategies lost touch with the format"


def test_mutated_blueprints(workspace: Workspace, report: Callable[[str], None]) -> None:
    """Every seed mutated: structurally (keys, types, ranges, unicode, nesting) and at the YAML level."""
    tally = Tally()

    @seed(SEED)
    @fuzz_settings(COUNTS["tree-mutated"])
    @given(tree_mutation(workspace.seeds))
    def tree(case: tuple[Seed, str, bytes]) -> None:
        origin, label, content = case
        tally.add("tree-mutated", f"{origin.origin} {label}", workspace.checker.check(origin.folder, content))

    @seed(SEED)
    @fuzz_settings(COUNTS["text-mutated"])
    @given(text_mutation(workspace.seeds))
    def text(case: tuple[Seed, str, bytes]) -> None:
        origin, label, content = case
        tally.add("text-mutated", f"{origin.origin} {label}", workspace.checker.check(origin.folder, content))

    tree()
    text()
    for line in tally.lines():
        report(line)
    assert tally.cases["tree-mutated"] >= COUNTS["tree-mutated"] * SCALE * 0.9
    assert tally.cases["text-mutated"] >= COUNTS["text-mutated"] * SCALE * 0.9


HOSTILE = {
    "alias bomb, 9 levels x 9 (387M values)": alias_bomb(9, 9, merge=False) + "name: bomb\nendpoints: *a8\n",
    "alias bomb, 30 levels x 10": alias_bomb(30, 10, merge=False) + "name: bomb\nendpoints: [{path: /x, handler: static, config: {static: {body: *a29}}}]\n",
    "merge-key bomb, 12 levels x 9": alias_bomb(12, 9, merge=True) + "name: bomb\nendpoints: [{path: /x, handler: static, config: {static: {body: *a11}}}]\n",
    "flow nesting 100,000 deep": "name: deep\nendpoints: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "block nesting 2,000 deep": "name: deep\nx:\n" + "".join("  " * i + "k:\n" for i in range(1, 2000)),
    "a 1 MB line": "name: long\ndescription: " + "a" * 1_000_000 + "\nendpoints: [{path: /x, handler: static, config: {static: {}}}]\n",
    "1,000 endpoints on one path": "name: many\nendpoints:\n" + "  - {path: /x, handler: static, config: {static: {}}}\n" * 1000,
    "1,000 distinct endpoints": "name: many\nendpoints:\n" + "".join(f"  - {{path: '/x{i}/{{id}}', handler: static, config: {{static: {{}}}}}}\n" for i in range(1000)),
    "a 10,000-digit number": "name: big\nendpoints: [{path: /x, handler: static, config: {static: {status: " + "9" * 10_000 + "}}}]\n",
    "binary garbage": bytes(range(256)) * 40,
    "only a BOM": "\ufeff",
    "null document": "~\n",
    "a list at the top": "- name: x\n",
    "tabs for indentation": "name: x\nendpoints:\n\t- path: /x\n",
    "python tag": "name: !!python/object/apply:os.system ['touch /tmp/backworks-fuzz-pwned']\nendpoints: [{path: /x, handler: static, config: {static: {}}}]\n",
}


@pytest.mark.parametrize("label", list(HOSTILE))
def test_hostile_set_pieces(label: str, workspace: Workspace, report: Callable[[str], None]) -> None:
    """The classics, each bounded: alias bombs, extreme nesting, huge lines, many endpoints."""
    content = HOSTILE[label]
    outcome = workspace.checker.check(workspace.scratch, content)
    report(f"{label}: {'valid' if outcome.valid else f'{outcome.errors} located error(s)'} in {outcome.seconds * 1000:.0f} ms")
    assert outcome.seconds < 10
    if "bomb" in label or "nesting" in label or "python tag" in label or "digit" in label or "garbage" in label:
        assert not outcome.valid
    if "distinct" in label or "line" in label:
        assert outcome.valid
    assert not Path("/tmp/backworks-fuzz-pwned").exists()


# --------------------------------------------------------------------------------------
# The real command and the real addon, on a sample


SUMMARY = re.compile(r"^(?P<file>\S+\.yaml): (?:OK: .*|(?P<count>\d+) errors?)$", re.M)


def test_backworks_validate_command_on_a_sample(workspace: Workspace, report: Callable[[str], None]) -> None:
    """50 fuzzed blueprints through the `backworks validate` subprocess, ten files per run."""
    sample: list[tuple[str, Path, bytes]] = []

    @seed(SEED)
    @fuzz_settings(50)
    @given(any_case(workspace))
    def collect(case: tuple[str, Path, bytes]) -> None:
        if len(sample) < 50:
            sample.append(case)

    collect()
    files = []
    for index, (_, folder, content) in enumerate(sample):
        path = folder / f"cli-sample-{index}.yaml"
        path.write_bytes(content)
        files.append(path)
    exits: dict[int, int] = {}
    slowest = 0.0
    try:
        for batch in (files[i : i + 10] for i in range(0, len(files), 10)):
            started = time.monotonic()
            done = subprocess.run(
                [str(Path(sys.executable).parent / "backworks"), "validate", *map(str, batch)],
                capture_output=True, text=True, errors="replace", timeout=120, cwd=workspace.root, env={**os.environ, **workspace.env},
            )
            slowest = max(slowest, time.monotonic() - started)
            output = done.stdout + done.stderr
            assert done.returncode in (0, 1), output
            assert "Traceback" not in output, output
            summaries = {m["file"]: m["count"] for m in SUMMARY.finditer(output)}
            assert set(summaries) == {str(p) for p in batch}, output
            assert (done.returncode == 1) == any(summaries.values()), output
            for line in output.splitlines():
                if not SUMMARY.match(line) and line.strip():  # every other line is a located diagnostic
                    assert re.match(r"^\S+\.yaml:\d+:\d+: \S", line), line
            exits[done.returncode] = exits.get(done.returncode, 0) + 1
    finally:
        for path in files:
            path.unlink(missing_ok=True)
    report(f"{len(files)} fuzzed blueprints through `backworks validate` in {(len(files) + 9) // 10} runs: exit codes {dict(sorted(exits.items()))}, slowest run {slowest:.1f} s, no traceback")


def test_core_addon_configure_on_a_sample(workspace: Workspace, report: Callable[[str], None]) -> None:
    """A handful of fuzzed blueprints set as the core addon's `blueprint` option in mitmproxy's
    test context: configure accepts them or raises OptionsError naming the file and the errors."""
    outcomes = {"accepted": 0, "OptionsError": 0}
    registry = workspace.checker.registry

    @seed(SEED)
    @fuzz_settings(16)
    @given(any_case(workspace))
    def run(case: tuple[str, Path, bytes]) -> None:
        _, folder, content = case
        path = folder / "addon-sample.yaml"
        path.write_bytes(content)
        addon = Backworks(registry, [plugin() for plugin in registry.plugins.values()])
        with taddons.context(addon) as tctx:
            try:
                tctx.configure(addon, blueprint=str(path))
            except exceptions.OptionsError as exc:
                text = str(exc)
                assert text.startswith(f"{path}: ") and " in blueprint:\n" in text, text
                assert all(re.match(rf"^  {re.escape(str(path))}(:\d+:\d+)?: \S", line) for line in text.splitlines()[1:]), text
                assert addon.gateway is None
                outcomes["OptionsError"] += 1
            else:
                assert addon.gateway is not None
                outcomes["accepted"] += 1
                tctx.configure(addon, blueprint=None)

    run()
    for item in [s for s in workspace.seeds if s.shipped]:
        addon = Backworks(registry, [plugin() for plugin in registry.plugins.values()])
        path = item.folder / "addon-example.yaml"
        path.write_text(item.text)
        with taddons.context(addon) as tctx:
            tctx.configure(addon, blueprint=str(path))  # the shipped examples load
            assert addon.gateway is not None
            tctx.configure(addon, blueprint=None)
        outcomes["accepted"] += 1
    report(f"core addon configure on {sum(outcomes.values())} blueprints (16 fuzzed + the shipped examples): {outcomes}")
