"""Recipes fuzzed with hypothesis: whatever a recipe file holds — random structures and types,
non-finite numbers, deep nesting, huge files, backtracking regexes, arbitrary text — loading it
gives a valid recipe or a RecipeError, never another exception and never a hang (the deadline:
generous, because CI machines are shared; a catastrophic backtrack takes minutes to hours)."""
import math
import re
from datetime import timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ROOT
from zoo.errors import RecipeError
from zoo.recipe import Recipe, load_recipe

pytestmark = pytest.mark.hostile("fuzzing")

VALID = yaml.safe_load((ROOT / "recipes" / "resnet.yaml").read_text())
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=30), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from([".inf", "-.inf", ".nan", "1e400", "timm/resnet18",
                                     "conv2d", "resnet", "(a+)+$", "(.*)*x", "[", "{1+}"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)


def _load(tmp_path, text, record):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        assert isinstance(load_recipe(path), Recipe)
        record("outcome", "valid recipe")
    except RecipeError:
        record("outcome", "RecipeError")


def _paths(data, prefix=()):
    """Every key path into a nested dict/list structure."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


PATHS = list(_paths(VALID))


def _replace(data, path, value):
    import copy
    data = copy.deepcopy(data)
    node = data
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return data


@FUZZ
@given(st.sampled_from(PATHS), values)
def test_a_valid_recipe_with_one_value_replaced(tmp_path, record_property, path, value):
    _load(tmp_path, yaml.safe_dump(_replace(VALID, path, value), allow_unicode=True), record_property)


@FUZZ
@given(values)
def test_random_structures(tmp_path, record_property, data):
    _load(tmp_path, yaml.safe_dump(data, allow_unicode=True), record_property)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(tmp_path, record_property, text):
    _load(tmp_path, text, record_property)


@settings(FUZZ, max_examples=25)   # each example parses thousands of levels: the slow part
@given(st.sampled_from(["[", "{a: ", "- "]), st.integers(50, 20000))
def test_deep_nesting(tmp_path, record_property, opener, depth):
    _load(tmp_path, opener * depth, record_property)


@FUZZ
@given(st.sampled_from(["(a+)+$", "(.*)*x", "(x|x?)+y", "((a*)*)*", "(\\w+\\.?)+$", "(.+)+\\.z"]))
def test_backtracking_regexes_are_refused_or_cannot_hang(tmp_path, record_property, pattern):
    """A nested repetition is refused at load time. Whatever the check lets through must still
    match module paths quickly (the deadline): tried here on a long near-miss path."""
    data = dict(VALID, ignore=[pattern])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        recipe = load_recipe(path)
    except RecipeError as e:
        assert "refused" in str(e) or "bad regular expression" in str(e)
        record_property("outcome", "refused at load")
        return
    record_property("outcome", "loaded, matched in time")
    near_miss = "layer1." * 3 + "a" * 25 + "!"
    for rx in recipe.ignore:
        rx.fullmatch(near_miss)


def test_huge_file_is_refused_quickly(tmp_path):
    (tmp_path / "big.yaml").write_text("x: " + "a" * (4 << 20))
    try:
        load_recipe(tmp_path / "big.yaml")
        raise AssertionError("a 4 MB recipe was accepted")
    except RecipeError as e:
        assert "a recipe is at most" in str(e)


def test_the_fuzzers_reach_valid_recipes():
    """The replaced-value fuzzer must also produce recipes that load (else it only tests the
    first check): the unchanged recipe and a harmless replacement load."""
    assert math.isfinite(load_recipe(ROOT / "recipes" / "resnet.yaml").variants["timm/resnet18"].tolerance)
    assert re.compile(VALID["ignore"][0])
