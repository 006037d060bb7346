"""The house rules, checked: import layers (import-linter's contract in pyproject.toml), one name per thing across
the library packages, and no module in a library package that parses a command line."""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("mosaic_core", "encoder", "mosaic_alm", "eval")


def _modules(*packages):
    for pkg in packages:
        yield from sorted((REPO / pkg).rglob("*.py"))


def test_import_layers_contract_holds():
    """mosaic_core <- encoder <- mosaic_alm <- eval <- recipes: nothing imports a layer above it; no import circle
    inside a package; no recipe imports another (the three contracts in pyproject.toml)."""
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout, res.stdout[-2000:]


@pytest.mark.parametrize("module, line, contract", [
    ("encoder/masking.py", "from mosaic_alm import projector", "Layers"),
    ("mosaic_alm/audio_lm.py", "from mosaic_alm import artifact", "No import circle"),
    ("eval/results.py", "from eval import run_report", "No import circle"),
    ("recipes/tag.py", "from recipes import import_release", "No recipe imports another"),
])
def test_import_contracts_catch_a_violation(tmp_path, module, line, contract):
    """Each contract on a copy of the tree with one offending import added must fail (the checks can fail)."""
    import shutil

    for pkg in (*LIBRARIES, "recipes"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / module
    bad.write_text(bad.read_text() + f"\n{line}  # noqa: E402,F401\n")
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--config", "pyproject.toml", "--no-cache"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and "1 broken" in res.stdout, res.stdout[-2000:]
    broken = res.stdout[res.stdout.index("Broken contracts"):]
    assert contract in broken, broken[-2000:]


def test_recipe_independence_contract_names_every_recipe():
    """A new recipe module is covered by the independence contract (only the dispatcher, cli, is left out)."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    listed = {m for c in contracts if c["type"] == "independence" for m in c["modules"]}
    recipes = {f"recipes.{p.stem}" for p in (REPO / "recipes").glob("*.py") if p.stem not in ("__init__", "cli")}
    assert listed == recipes, (sorted(recipes - listed), sorted(listed - recipes))


def test_public_names_are_unique_across_packages():
    """A class or function name means one thing: no two modules of the kit define the same public name (recipes
    may each have a ``main``)."""
    where = defaultdict(list)
    for path in _modules(*LIBRARIES, "recipes"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if node.name == "main" and path.parent.name == "recipes":
                    continue
                where[node.name].append(str(path.relative_to(REPO)))
    dupes = {k: v for k, v in where.items() if len(v) > 1}
    assert not dupes, dupes


def test_module_names_are_unique_across_packages():
    """A module name means one thing: no two modules of the kit share a file name (``__init__.py`` aside), so
    ``report`` or ``model`` never needs its package to say which one is meant."""
    where = defaultdict(list)
    for path in _modules(*LIBRARIES, "recipes"):
        if path.name != "__init__.py":
            where[path.stem].append(str(path.relative_to(REPO)))
    dupes = {k: v for k, v in where.items() if len(v) > 1}
    assert not dupes, dupes


def test_module_name_check_can_fail(tmp_path, monkeypatch):
    """The same scan finds a twin when one is there."""
    for pkg in ("eval", "recipes"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "report.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    try:
        test_module_names_are_unique_across_packages()
    except AssertionError as e:
        assert "report" in str(e)
    else:
        raise AssertionError("two report.py files were not caught")


def test_library_packages_parse_no_command_line():
    """Jobs live in recipes/: no library module imports argparse."""
    offenders = [str(p.relative_to(REPO)) for p in _modules(*LIBRARIES)
                 if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in
                        ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert not offenders, offenders
