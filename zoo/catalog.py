"""Catalogue: names -> recipe variants. Names are `timm/<arch>` or `torchvision/<builder>`,
optionally followed by `.<weight tag>` (e.g. `timm/resnet50.a1_in1k`).

Recipes come from the repository's `recipes/` folder plus any folders listed in the
`ZOO_RECIPE_PATH` environment variable (os.pathsep-separated), so users can add their own.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from pathlib import Path

from zoo.errors import RecipeError, UnknownModelError
from zoo.recipe import Recipe, Variant, load_recipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def recipe_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("ZOO_RECIPE_PATH", "").split(os.pathsep) if p]
    return [RECIPES_DIR, *extra]


@functools.lru_cache(maxsize=8)
def _load(dirs: tuple[Path, ...]) -> tuple[dict[str, Variant], tuple[Recipe, ...]]:
    variants: dict[str, Variant] = {}
    recipes = []
    for d in dirs:
        for path in sorted(Path(d).glob("*.yaml")):
            recipe = load_recipe(path)
            recipes.append(recipe)
            for name, v in recipe.variants.items():
                if name in variants:
                    raise RecipeError(f"{path}: variant {name!r} is already defined in "
                                      f"{variants[name].recipe.path}")
                variants[name] = v
    return variants, tuple(recipes)


def variants() -> dict[str, Variant]:
    return _load(tuple(recipe_dirs()))[0]


def split_name(name: str) -> tuple[str, str | None]:
    """'timm/resnet50.a1_in1k' -> ('timm/resnet50', 'a1_in1k')."""
    base, _, tag = name.partition(".")
    return base, (tag or None)


def list_models(pattern: str | None = None) -> list[str]:
    names = sorted(variants())
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_variant(name: str) -> tuple[Variant, str | None]:
    base, tag = split_name(name)
    table = variants()
    if base not in table:
        # 'resnet50' without its source prefix: every source's exact arch first
        exact = [n for n in table if n.split("/", 1)[1] == base.split("/")[-1]]
        close = exact + [n for n in difflib.get_close_matches(base, list(table), n=5, cutoff=0.5)
                         if n not in exact]
        close = close[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} "
                                f"(zoo.list_models() lists all {len(table)})")
    return table[base], tag


def output_dir(out_root: str | Path, name: str) -> Path:
    return Path(out_root) / name
