"""The test tiers of ``tests/conftest.py``: every test of the tree carries exactly one, the
table's entries name what exists, the default run leaves out acceptance only and
``scripts/test.sh`` runs every tier."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import TIER_OF_PATH, TIERS

ROOT = Path(__file__).resolve().parents[1]


class _Collected:
    """A plugin that keeps the items of a collect-only session."""

    items: list[Any]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = list(session.items)


def test_every_test_of_the_tree_has_exactly_one_tier(capsys) -> None:
    """Collected in this process (the modules are imported already; pyproject's addopts left
    out, so nothing is deselected): the marks ``-m`` reads, one tier each."""
    seen = _Collected()
    args = ["-o", "addopts=", "--doctest-modules", "--collect-only", "-q", "-p", "no:cacheprovider"]
    paths = [str(ROOT / "circuitlens"), str(ROOT / "tests")]
    code = pytest.main([*args, "--rootdir", str(ROOT), *paths], plugins=[seen])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert len(seen.items) > 600  # the whole tree, doctests included
    tiers = {i.nodeid: [m.name for m in i.iter_markers() if m.name in TIERS] for i in seen.items}
    wrong = {n: t for n, t in tiers.items() if len(t) != 1}
    assert not wrong, f"tests without exactly one tier: {wrong}"
    count = {t: sum(v == [t] for v in tiers.values()) for t in TIERS}
    assert all(count.values()), count  # each tier holds tests
    assert f"tiers: {count['unit']} unit, {count['integration']} integration" in out


def test_the_table_names_files_and_tests_that_exist() -> None:
    for key, tier in TIER_OF_PATH.items():
        assert tier in TIERS, key
        path, _, function = key.partition("::")
        assert (ROOT / path).exists(), f"{key}: no such path (renamed? update TIER_OF_PATH)"
        if function:
            assert f"def {function}(" in (ROOT / path).read_text(), key


def test_the_default_run_leaves_out_acceptance_and_the_script_runs_every_tier() -> None:
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    opts = shlex.split(ini["addopts"])
    assert opts[opts.index("-m") + 1] == "not acceptance"
    assert "--strict-markers" in opts  # a misspelt tier is an error, not a fourth tier
    assert {m.split(":")[0] for m in ini["markers"]} == set(TIERS)
    lines = (ROOT / "scripts" / "test.sh").read_text().splitlines()
    script = shlex.split(next(line for line in lines if line.startswith("exec ")))
    marks = len(script) - 1 - script[::-1].index("-m")  # pytest's -m, after python's
    assert script[marks + 1] == " or ".join(TIERS)
