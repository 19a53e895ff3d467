"""Catalogue: names -> recipe variants. Names are `timm/<arch>` or `torchvision/<builder>`,
optionally followed by `.<weight tag>` (e.g. `timm/resnet50.a1_in1k`).

Weight tags: the catalogue lists one name per tag a variant declares (`tags:` in its recipe, the
source's default first), e.g. `timm/resnet50.a1_in1k` and `timm/resnet50.tv_in1k`; a variant
without tags (a `python:` source) is listed under its bare name. The bare name of a tagged variant
(`timm/resnet50`) is not listed (it would convert the same weights twice) but resolves to the
default tag (`resolve_name`). Any other tag the source has still converts (the source checks it).

Recipes come from the built-in ones (the repository's top-level `recipes/` folder, shipped as the
package data `zoo.recipes`) plus any folders listed in the `ZOO_RECIPE_PATH` environment variable
(os.pathsep-separated), so users can add their own.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import os
import warnings
from importlib import resources
from pathlib import Path

from zoo import names
from zoo.errors import RecipeError, UnknownModelError
from zoo.names import InvalidNameError, parse_name
from zoo.recipe import Recipe, Variant, load_recipe

# Where the recipes are in a checkout used without installing (zoo/ next to recipes/).
CHECKOUT_RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@functools.cache
def builtin_recipe_dir() -> Path:
    """The folder of the built-in recipes. Installed (wheel or editable install), they are the
    package data `zoo.recipes`, which pyproject.toml maps from the top-level `recipes/` folder; a
    checkout that was never installed (or installed before that mapping existed) has no such
    package, and its `recipes/` folder sits next to `zoo/`."""
    try:
        folder = resources.files("zoo.recipes")
    except ModuleNotFoundError:
        return CHECKOUT_RECIPES_DIR
    # A namespace package (no __init__.py) gives a MultiplexedPath over its one folder; its
    # entries are plain paths (pip installs wheels unzipped), which load_recipe needs.
    yaml = next((p for p in folder.iterdir() if p.name.endswith(".yaml")), None)
    return Path(yaml).parent if yaml is not None else CHECKOUT_RECIPES_DIR


def user_recipe_dirs() -> list[Path]:
    return [Path(p) for p in os.environ.get("ZOO_RECIPE_PATH", "").split(os.pathsep) if p]


def recipe_dirs() -> list[Path]:
    return [builtin_recipe_dir(), *user_recipe_dirs()]


class RecipeWarning(UserWarning):
    """A user recipe (ZOO_RECIPE_PATH) is broken and was skipped; the rest of the catalogue works."""


@functools.lru_cache(maxsize=8)
def _load(dirs: tuple[Path, ...]) -> tuple[dict[str, Variant], tuple[Recipe, ...]]:
    """dirs[0] is the built-in folder, the others are the user's."""
    variants: dict[str, Variant] = {}
    recipes = []
    for i, d in enumerate(dirs):
        for path in sorted(Path(d).glob("*.yaml")):
            try:
                recipe = load_recipe(path)
                clash = [n for n in recipe.variants if n in variants]
                if clash:
                    raise RecipeError(f"{path}: variant {clash[0]!r} is already defined in "
                                      f"{variants[clash[0]].recipe.path}")
            except RecipeError as e:
                if i == 0:   # the built-in catalogue must load: that is our bug
                    raise
                # One user's broken recipe must not take the catalogue down for everyone.
                warnings.warn(f"skipped user recipe: {e}", RecipeWarning, stacklevel=3)
                continue
            recipes.append(recipe)
            variants.update(recipe.variants)
    return variants, tuple(recipes)


def variants() -> dict[str, Variant]:
    return _load(tuple(recipe_dirs()))[0]


def split_name(name: str) -> tuple[str, str | None]:
    """'timm/resnet50.a1_in1k' -> ('timm/resnet50', 'a1_in1k'); InvalidNameError for anything
    that is not a safe name (see zoo.names)."""
    return parse_name(name)


def listed_names(variant: Variant) -> list[str]:
    """The catalogue names of a variant: one per declared weight tag, else its bare name."""
    return [f"{variant.name}.{t}" for t in variant.tags] or [variant.name]


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Every catalogue name (`listed_names`); pretrained=True: only those naming a weight set of
    the source (a declared tag), i.e. not the `python:` sources' bare names."""
    names = sorted(n for v in variants().values() if v.tags or not pretrained
                   for n in listed_names(v))
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_variant(name: str) -> tuple[Variant, str | None]:
    """(variant, weight tag) of a name; a bare name gets the variant's default tag. A tag the
    recipe does not declare is returned as given: the source decides whether it exists (timm and
    torchvision list theirs in the error), and `resolve_name` refuses it."""
    table = variants()
    try:
        base, tag = split_name(name)
    except InvalidNameError:
        if not isinstance(name, str) or "/" in name:
            raise
        base, tag = name, None   # 'resnet50' without its source: suggest the full names below
    if base not in table:
        # 'resnet50' without its source prefix: every source's exact arch first
        exact = [n for n in table if n.split("/", 1)[1] == base.split("/")[-1]]
        close = exact + [n for n in difflib.get_close_matches(base, list(table), n=5, cutoff=0.5)
                         if n not in exact]
        close = close[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} "
                                f"(zoo.list_models() lists all {len(table)})")
    variant = table[base]
    return variant, tag if tag is not None else variant.default_tag


def resolve_name(name: str) -> str:
    """The catalogue name `name` stands for: `timm/resnet50` -> `timm/resnet50.a1_in1k` (the
    default tag); a declared tagged name, or any name of an untagged (`python:`) variant, as is.
    A tag the recipe does not declare is an UnknownModelError listing the declared ones."""
    variant, tag = get_variant(name)
    if not variant.tags:   # a python: source: a tag is the user's own label
        return name
    if tag not in variant.tags:
        arch = variant.source.split(":", 1)[1]
        raise UnknownModelError(
            f"{variant.name} has no weight tag {tag!r} in the catalogue; its recipe "
            f"({variant.recipe.path.name}) declares {', '.join(variant.tags)} (default "
            f"{variant.default_tag}). zoo.convert('{variant.name}.<tag>') also takes the other "
            f"tags {variant.source_kind} has for {arch}")
    return f"{variant.name}.{tag}"


def output_dir(out_root: str | Path, name: str) -> Path:
    return names.output_dir(out_root, name)
