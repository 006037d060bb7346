"""The command-line arguments a results folder's recipe file (``results/<folder>/recipe.yaml``) stands for, one a
line, for its ``run.sh``:

    mapfile -t ARGS < <(.venv/bin/python results/recipe_args.py results/<folder>/recipe.yaml)

A recipe file records what the folder's committed JSON was made with (read from that JSON, not from today's
``recipes.pipeline.PRESETS``): ``examples`` / ``max_test`` become ``--examples`` / ``--max-test`` of
``mosaic-alm alm-experiment`` and ``overrides`` (``key=value``) follow as they are. Other keys are left to the
script that reads the file.
"""

from __future__ import annotations

import sys

import yaml

OPTIONS = {"examples": "--examples", "max_test": "--max-test"}


def recipe_args(path: str) -> list[str]:
    with open(path) as f:
        recipe = yaml.safe_load(f) or {}
    args: list[str] = []
    for key, flag in OPTIONS.items():
        if recipe.get(key) is not None:
            args += [flag, str(recipe[key])]
    return args + [str(o) for o in recipe.get("overrides") or []]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python results/recipe_args.py RECIPE.yaml")
    print("\n".join(recipe_args(sys.argv[1])))
