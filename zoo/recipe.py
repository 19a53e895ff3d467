"""Recipe schema: one YAML file per architecture family (see docs/recipe-format.md).

Loading is pure Python + PyYAML so that the catalogue can be listed without torch or TensorFlow.
Every error names the file, the variant or rule, and what is wrong.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.checks import positive_number
from zoo.errors import RecipeError
from zoo.io_spec import DEFAULT_OUTPUTS, LAYOUTS, default_inputs, parse_inputs, parse_outputs
from zoo.names import VARIANT_NAME, WEIGHT_TAG
from zoo.safe_regex import backtracking_problem
from zoo.templates import TemplateError, check_template, parse_template
from zoo.transforms import TRANSFORMS

SOURCE_KINDS = ("timm", "torchvision", "python")
DEFAULT_TOLERANCE = 1e-4
DEFAULT_PREPROCESSING = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "crop_pct": 0.875,
}

_FAMILY_KEYS = {"family", "description", "license", "input_size", "preprocessing", "tolerance",
                "classifier", "features", "ignore", "tables", "mapping", "variants", "inputs",
                "outputs", "feature_layout", "geometry"}
_VARIANT_KEYS = {"torch", "keras", "license", "input_size", "preprocessing", "tolerance", "features",
                 "tables", "inputs", "outputs", "tags", "classifier"}
_RULE_KEYS = {"torch", "keras", "transform", "args", "only", "skip", "module_type", "note"}
_PREPROC_KEYS = set(DEFAULT_PREPROCESSING)
# a torch module path (`fc`, `head.fc`, `classifier.5`): attribute names and Sequential indices
MODULE_PATH = re.compile(r"(?:[A-Za-z_]\w*|\d+)(?:\.(?:[A-Za-z_]\w*|\d+))*")
# How a checkpoint tensor tells the geometry it was fine-tuned at (`geometry: {tensor, kind}`);
# zoo/conversion/geometry.py has one reader per kind.
GEOMETRY_KINDS = ("pos_embed", "window_table", "grid_table")


@dataclass(frozen=True)
class Rule:
    """One mapping rule: a regex over a PyTorch *module path* -> a Keras layer path template."""
    index: int
    torch: re.Pattern
    keras: str
    transform: str
    args: dict
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    module_type: str | None = None   # torch module class name the rule is restricted to
    tables: dict = field(default_factory=dict)   # the variant's tables the template looks up

    def applies_to(self, variant: str) -> bool:
        if self.only and not any(fnmatch.fnmatchcase(variant, g) for g in self.only):
            return False
        return not any(fnmatch.fnmatchcase(variant, g) for g in self.skip)

    def describe(self) -> str:
        return f"rule #{self.index} ({self.torch.pattern!r} -> {self.keras!r}, {self.transform})"


@dataclass(frozen=True)
class Variant:
    name: str                  # catalogue name without weight tag, e.g. "timm/resnet50"
    source: str                # "timm:resnet50" | "torchvision:resnet50" | "python:mod:callable"
    source_kwargs: dict
    builder: str               # Keras builder name registered in zoo.models
    builder_kwargs: dict
    license: str | None
    input_size: int
    preprocessing: dict
    tolerance: float
    features: list[tuple[str, str]]     # (torch module, keras layer) compared during validation
    recipe: "Recipe" = field(repr=False, compare=False)

    @property
    def source_kind(self) -> str:
        return self.source.split(":", 1)[0]

    tables: dict = field(default_factory=dict)   # name -> list or mapping, for templates
    inputs: tuple | None = None    # declared InputSpecs (None: one image input)
    outputs: tuple | None = None   # declared OutputSpecs (None: one classification `logits`)
    # The source's weight sets this variant lists (`timm/resnet50.a1_in1k`); the first is what the
    # untagged name means. Empty for `python:` sources, whose weights are the user's checkpoints.
    tags: tuple[str, ...] = ()
    # The variant's own `classifier` when its head is not where the recipe's others have it
    # (LR-ASPP among the segmentation models, torchvision's MaxViT among timm's); None: the recipe's.
    own_classifier: str | None = None

    @property
    def default_tag(self) -> str | None:
        return self.tags[0] if self.tags else None

    def input_specs(self, in_chans: int | None = None) -> tuple:
        """The declared inputs, or the default image input with `in_chans` channels. in_chans
        changes the channels of a declared image input (the first one)."""
        if self.inputs is None:
            return default_inputs(in_chans or 3)
        if in_chans is None:
            return self.inputs
        images = [i for i, s in enumerate(self.inputs) if s.layout == "image"]
        if not images:
            raise RecipeError(f"{self.name}: in_chans sets the channels of an image input; the "
                              f"recipe declares no image input ({[s.name for s in self.inputs]})")
        first = self.inputs[images[0]]
        specs = list(self.inputs)
        specs[images[0]] = dataclasses.replace(first, shape=(in_chans, *first.shape[1:]))
        return tuple(specs)

    def output_specs(self) -> tuple:
        return DEFAULT_OUTPUTS if self.outputs is None else self.outputs

    @property
    def classifier(self) -> str | None:
        """Torch module path of the classification layer, whose weight's first axis is the class
        count (read from a module that does not say it, and named in the --num-classes hint)."""
        return self.own_classifier or self.recipe.classifier

    @property
    def classifies(self) -> bool:
        """Whether the model has a classification output (then num_classes means something)."""
        return any(s.metric == "classification" for s in self.output_specs())

    @property
    def rules(self) -> list[Rule]:
        """The rules for this variant, each carrying the tables its template looks up."""
        return [dataclasses.replace(r, tables={t: self.tables[t]
                                               for t in parse_template(r.keras).tables})
                if parse_template(r.keras).tables else r
                for r in self.recipe.mapping if r.applies_to(self.name)]

    def fingerprint(self) -> str:
        """Hash of everything in the recipe that affects this variant's conversion."""
        payload = {
            "source": self.source, "source_kwargs": self.source_kwargs, "builder": self.builder,
            "builder_kwargs": self.builder_kwargs, "input_size": self.input_size,
            "preprocessing": self.preprocessing, "tolerance": self.tolerance,
            "features": self.features, "ignore": [p.pattern for p in self.recipe.ignore],
            "mapping": [(r.torch.pattern, r.keras, r.transform, r.args, r.module_type)
                        + ((r.tables,) if r.tables else ()) for r in self.rules],
        }
        # only when declared: the image classifiers' fingerprints (and --resume) stay as they were
        if self.inputs is not None:
            payload["inputs"] = [s.to_json() for s in self.inputs]
        if self.recipe.feature_layout is not None:
            payload["feature_layout"] = self.recipe.feature_layout
        if self.outputs is not None:
            payload["outputs"] = [s.to_json() for s in self.outputs]
        if self.own_classifier is not None:   # it can change the class count read from torch
            payload["classifier"] = self.own_classifier
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Recipe:
    path: Path
    family: str
    description: str
    classifier: str | None
    features: list[tuple[str, str]]     # family default; variants may override
    ignore: list[re.Pattern]
    mapping: list[Rule]
    variants: dict[str, Variant] = field(default_factory=dict)
    # the layout of the torch `features` outputs when it is not the first input's: `tensor` for
    # models whose maps are channels-last in torch too (Swin's (B, H, W, C) stages)
    feature_layout: str | None = None
    # the checkpoint tensor that tells the patch grid or window a checkpoint was fine-tuned at
    geometry: "GeometrySpec | None" = None


@dataclass(frozen=True)
class GeometrySpec:
    tensor: re.Pattern    # full match against state_dict keys; the first match is read
    kind: str             # one of GEOMETRY_KINDS


def _geometry(path, data):
    if data is None:
        return None
    _check_keys(path, "geometry", data, {"tensor", "kind"}, required=("tensor", "kind"))
    if data["kind"] not in GEOMETRY_KINDS:
        _fail(path, "geometry.kind", f"must be one of {list(GEOMETRY_KINDS)}, got {data['kind']!r}")
    return GeometrySpec(_regex(path, "geometry.tensor", data["tensor"]), data["kind"])


def _fail(path, where, msg):
    raise RecipeError(f"{path}: {where}: {msg}")


def _check_keys(path, where, data, allowed, required=()):
    if not isinstance(data, dict):
        _fail(path, where, f"expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        _fail(path, where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = [k for k in required if k not in data]
    if missing:
        _fail(path, where, f"missing required key(s) {missing}")


def _preprocessing(path, where, data, base):
    if data is None:
        return dict(base)
    _check_keys(path, f"{where}: preprocessing", data, _PREPROC_KEYS)
    out = dict(base, **data)
    for k in ("mean", "std"):
        v = out[k]
        if not (isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)):
            _fail(path, f"{where}: preprocessing.{k}", f"expected a list of numbers, got {v!r}")
    if any(s <= 0 for s in out["std"]):
        _fail(path, f"{where}: preprocessing.std", "every std must be > 0")
    if len(out["mean"]) != len(out["std"]):
        _fail(path, f"{where}: preprocessing", f"mean has {len(out['mean'])} values but std has "
                                               f"{len(out['std'])}; give one per input channel")
    crop = out["crop_pct"]
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not (0 < crop <= 1):
        _fail(path, f"{where}: preprocessing.crop_pct", f"must be in (0, 1], got {out['crop_pct']}")
    if out["interpolation"] not in ("nearest", "bilinear", "bicubic"):
        _fail(path, f"{where}: preprocessing.interpolation",
              f"must be nearest|bilinear|bicubic, got {out['interpolation']!r}")
    return out


def _positive_number(path, where, value, kind=float):
    try:
        return positive_number(value, kind)
    except ValueError as e:
        _fail(path, where, str(e))


def _classifier(path, where, value):
    if value is not None and not (isinstance(value, str) and MODULE_PATH.fullmatch(value)):
        _fail(path, where, f"expected a torch module path such as 'fc' or 'classifier.5', "
                           f"got {value!r}")
    return value


def _feature_layout(path, value):
    if value is not None and value not in LAYOUTS:
        _fail(path, "feature_layout", f"expected one of {list(LAYOUTS)}, got {value!r}")
    return value


def _regex(path, where, pattern):
    if not isinstance(pattern, str):
        _fail(path, where, f"expected a regular expression string, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        _fail(path, where, f"bad regular expression {pattern!r}: {e}")
    problem = backtracking_problem(pattern)
    if problem:
        _fail(path, where, f"regular expression {pattern[:80]!r} refused: {problem}")
    return compiled


def _rule(path, i, data) -> Rule:
    where = f"mapping rule #{i}"
    _check_keys(path, where, data, _RULE_KEYS, required=("torch", "keras", "transform"))
    rx = _regex(path, f"{where}.torch", data["torch"])
    name = data["transform"]
    if not isinstance(name, str) or name not in TRANSFORMS:
        _fail(path, where, f"unknown transform {name!r}; known: {sorted(TRANSFORMS)}")
    args = data.get("args") or {}
    if not isinstance(args, dict):
        _fail(path, f"{where}.args", "expected a mapping")
    try:
        TRANSFORMS[name].check_args(args)
    except ValueError as e:
        _fail(path, f"{where}.args", str(e))
    template = data["keras"]
    if not isinstance(template, str) or not template:
        _fail(path, f"{where}.keras", "expected a non-empty template string")
    try:   # placeholders and expressions refer to groups of the regex (tables: _check_tables)
        check_template(template, rx)
    except TemplateError as e:
        _fail(path, f"{where}.keras", str(e))
    globs = {}
    for k in ("only", "skip"):
        v = data.get(k) or []
        if isinstance(v, str):
            v = [v]
        if not all(isinstance(g, str) for g in v):
            _fail(path, f"{where}.{k}", "expected a list of variant-name globs")
        globs[k] = tuple(v)
    module_type = data.get("module_type")
    if module_type is not None and not (isinstance(module_type, str) and module_type.isidentifier()):
        _fail(path, f"{where}.module_type", f"expected a torch module class name, got {module_type!r}")
    return Rule(i, rx, template, name, args, globs["only"], globs["skip"], module_type)


def _source(path, where, spec):
    if not isinstance(spec, str) or spec.split(":", 1)[0] not in SOURCE_KINDS:
        _fail(path, where, f"source must be 'timm:<name>', 'torchvision:<builder>' or "
                           f"'python:<module>:<callable>', got {spec!r}")
    parts = spec.split(":")
    if (parts[0] == "python" and (len(parts) != 3 or not all(parts))) or \
            (parts[0] != "python" and (len(parts) != 2 or not parts[1])):
        _fail(path, where, f"malformed source {spec!r}")
    return spec


def _features(path, where, features):
    if not (isinstance(features, list) and all(isinstance(f, list) and len(f) == 2 and
                                               all(isinstance(s, str) for s in f) for f in features)):
        _fail(path, where, "expected a list of [torch_module, keras_layer] pairs")
    return [tuple(f) for f in features]


def _io(path, where, kind, data):
    """`inputs:` / `outputs:` (zoo/io_spec.py); None when not declared."""
    if data is None:
        return None
    try:
        return (parse_inputs if kind == "inputs" else parse_outputs)(data, where)
    except ValueError as e:   # the message names the entry (where) already
        raise RecipeError(f"{path}: {e}") from None


def _tags(path, where, data, source) -> tuple[str, ...]:
    """`tags: [a1_in1k, tv_in1k]`: the source's weight tags, the default first (checked against
    the installed timm/torchvision by tests/test_tags.py; loading needs neither)."""
    if data is None:
        return ()
    if source.startswith("python:"):
        _fail(path, where, "a python: source has no weight tags of its own (its weights are "
                           "checkpoints you pass to convert); remove `tags:`")
    if not (isinstance(data, list) and data and all(isinstance(t, str) for t in data)):
        _fail(path, where, f"expected a non-empty list of weight tags, got {data!r}")
    bad = [t for t in data if not WEIGHT_TAG.fullmatch(t)]
    if bad:
        _fail(path, where, f"invalid weight tag(s) {bad}: a tag is letters, digits, '_' and '-'")
    if len(set(data)) != len(data):
        _fail(path, where, f"duplicate weight tag in {data}")
    return tuple(data)


def _scalar(x) -> bool:
    return isinstance(x, (int, str)) and not isinstance(x, bool)


def _tables(path, where, data) -> dict:
    """name -> list (looked up by an integer) or mapping (by the captured text) of ints/strings."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(path, where, "expected a mapping of table name -> list or mapping")
    out = {}
    for name, table in data.items():
        if not (isinstance(name, str) and name.isidentifier()):
            _fail(path, where, f"table name {name!r} is not an identifier")
        if isinstance(table, dict) and all(_scalar(k) for k in table):
            table = {str(k): v for k, v in table.items()}   # groups are text: 3 and '3' alike
        values = table.values() if isinstance(table, dict) else table
        if not (isinstance(table, (list, dict)) and table and all(_scalar(v) for v in values)):
            _fail(path, f"{where}.{name}", "expected a non-empty list, or mapping, of integers "
                                           f"or names, got {table!r}")
        out[name] = table
    return out


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_RECIPE_BYTES = 1 << 20   # the largest built-in recipe is ~8 KB; a huge file is a mistake


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check one recipe; any problem is a RecipeError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise RecipeError(f"{path}: cannot read: {e}") from None
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {size} bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes")
    try:
        return _parse_recipe(path)
    except RecipeError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, AttributeError, KeyError) as e:
        # Values of a shape no check above anticipated (unhashable keys, nesting deeper than the
        # parser's recursion): still the recipe's fault, reported as such.
        raise RecipeError(f"{path}: malformed recipe ({type(e).__name__}: {str(e)[:200]})") \
            from None


def _parse_recipe(path: Path) -> Recipe:
    from zoo.models import BUILDERS, is_builder_name  # pure Python; builders import keras lazily

    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read: {e}") from None
    _check_keys(path, "top level", data, _FAMILY_KEYS, required=("family", "mapping", "variants"))
    base_pre = _preprocessing(path, "family", data.get("preprocessing"), DEFAULT_PREPROCESSING)
    base_tol = _positive_number(path, "tolerance", data.get("tolerance", DEFAULT_TOLERANCE))
    base_size = _positive_number(path, "input_size", data.get("input_size", 224), int)

    features = _features(path, "features", data.get("features") or [])
    tables = _tables(path, "tables", data.get("tables"))
    base_io = {k: _io(path, k, k, data.get(k)) for k in ("inputs", "outputs")}
    if not isinstance(data.get("ignore") or [], list):
        _fail(path, "ignore", "expected a list of regular expressions")
    ignore = [_regex(path, f"ignore #{i}", p) for i, p in enumerate(data.get("ignore") or [])]
    if not isinstance(data["mapping"], list) or not data["mapping"]:
        _fail(path, "mapping", "expected a non-empty list of rules")
    rules = [_rule(path, i, r) for i, r in enumerate(data["mapping"])]

    recipe = Recipe(path, str(data["family"]), str(data.get("description", "")),
                    _classifier(path, "classifier", data.get("classifier")), features, ignore, rules,
                    feature_layout=_feature_layout(path, data.get("feature_layout")),
                    geometry=_geometry(path, data.get("geometry")))
    if not isinstance(data["variants"], dict) or not data["variants"]:
        _fail(path, "variants", "expected a non-empty mapping of catalogue name -> variant")
    for name, v in data["variants"].items():
        where = f"variant {name!r}"
        if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
            _fail(path, where, "catalogue names look like '<source>/<arch>' (no weight tag "
                                "here: list the tags under `tags:`)")
        _check_keys(path, where, v, _VARIANT_KEYS, required=("torch", "keras"))
        _check_keys(path, f"{where}.torch", v["torch"], {"source", "kwargs"}, required=("source",))
        _check_keys(path, f"{where}.keras", v["keras"], {"builder", "kwargs"},
                    required=("builder",))
        src = _source(path, f"{where}.torch.source", v["torch"]["source"])
        builder = v["keras"]["builder"]
        if not isinstance(builder, str) or not is_builder_name(builder):
            _fail(path, f"{where}.keras.builder",
                  f"unknown Keras builder {builder!r}; known: {sorted(BUILDERS)} or "
                  f"python:<module>:<callable>")
        for k in ("torch", "keras"):
            if not isinstance(v[k].get("kwargs") or {}, dict):
                _fail(path, f"{where}.{k}.kwargs", "expected a mapping")
        recipe.variants[name] = Variant(
            name=name, source=src, source_kwargs=dict(v["torch"].get("kwargs") or {}),
            builder=builder, builder_kwargs=dict(v["keras"].get("kwargs") or {}),
            license=v.get("license", data.get("license")),
            input_size=_positive_number(path, f"{where}.input_size",
                                        v.get("input_size", base_size), int),
            preprocessing=_preprocessing(path, where, v.get("preprocessing"), base_pre),
            tolerance=_positive_number(path, f"{where}.tolerance", v.get("tolerance", base_tol)),
            features=_features(path, f"{where}.features", v["features"]) if "features" in v
            else features,
            tables=dict(tables, **_tables(path, f"{where}.tables", v.get("tables"))),
            **{k: _io(path, f"{where}.{k}", k, v[k]) if k in v else base_io[k]
               for k in ("inputs", "outputs")},
            tags=_tags(path, f"{where}.tags", v.get("tags"), src),
            own_classifier=_classifier(path, f"{where}.classifier", v.get("classifier")),
            recipe=recipe)
    for r in rules:
        for g in r.only + r.skip:
            if not any(fnmatch.fnmatchcase(n, g) for n in recipe.variants):
                _fail(path, f"mapping rule #{r.index}", f"glob {g!r} matches no variant")
        _check_tables(path, r, recipe.variants)
    return recipe


def _check_tables(path, rule: Rule, variants: dict) -> None:
    """Every table the rule's template looks up is defined for every variant the rule serves."""
    used = parse_template(rule.keras).tables
    for name, v in variants.items():
        missing = sorted(used - set(v.tables)) if rule.applies_to(name) else []
        if missing:
            _fail(path, f"mapping rule #{rule.index}.keras",
                  f"template {rule.keras!r} looks up table(s) {missing}, which variant {name!r} "
                  f"does not define (it has {sorted(v.tables)}): declare them under `tables:` "
                  f"(top level or the variant's), or restrict the rule with `only:`")


def variant_summary(v: Variant) -> dict[str, Any]:
    return {"name": v.name, "family": v.recipe.family, "source": v.source,
            "builder": v.builder, "input_size": v.input_size, "license": v.license,
            "tags": list(v.tags)}
