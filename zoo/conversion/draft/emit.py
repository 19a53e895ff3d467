"""Write the draft recipe: the structures zoo.recipe reads (dicts and lists) go through
yaml.safe_dump, then the review comments are attached line by line above the keys and rules they
are about (zoo.conversion.draft). The comments never change the data: yaml.safe_load of the text
gives back exactly `recipe_data(...)`."""
from __future__ import annotations

import yaml

from zoo.conversion.draft.model import DraftRule

IGNORE = [r".*\.num_batches_tracked"]
# wide enough that no rule or feature pair is wrapped over several lines
_WIDTH = 1 << 16


def rule_data(rule: DraftRule) -> dict:
    """One mapping rule as a recipe holds it (docs/recipe-format.md)."""
    out = {"torch": rule.torch}
    if rule.module_type:
        out["module_type"] = rule.module_type
    out.update(keras=rule.keras, transform=rule.transform)
    if rule.args:
        out["args"] = rule.args
    return out


def recipe_data(name, source, source_kwargs, builder, builder_kwargs, rules, features,
                classifier, io: dict | None = None) -> dict:
    """io: `input_size`, `inputs`, `outputs` where they differ from the defaults."""
    torch_spec = {"source": source} | ({"kwargs": source_kwargs} if source_kwargs else {})
    keras_spec = {"builder": builder} | ({"kwargs": builder_kwargs} if builder_kwargs else {})
    data = {"family": name.split("/", 1)[1],
            "description": f"Draft mapping {source} -> {builder}; review before use."}
    data.update(io or {})
    if classifier:
        data["classifier"] = classifier
    if features:
        data["features"] = [[t, k] for t, k in features]
    data.update(ignore=list(IGNORE), mapping=[rule_data(r) for r in rules],
                variants={name: {"torch": torch_spec, "keras": keras_spec}})
    return data


def attach_comments(text: str, above: dict[tuple, list[str]]) -> str:
    """Insert comment lines into `text` (a YAML document): above[(key,)] goes above a top-level
    key, above[(key, i)] above item i of the sequence under that key, each at that line's
    indentation. Positions come from yaml.compose, so the dumper's layout is not guessed."""
    root = yaml.compose(text)
    lines = text.splitlines()
    keys = {k.value: (k, v) for k, v in root.value}
    at: dict[int, list[str]] = {}
    for where, comments in above.items():
        key_node, value_node = keys[where[0]]
        node = key_node if len(where) == 1 else value_node.value[where[1]]
        line = node.start_mark.line
        indent = lines[line][:len(lines[line]) - len(lines[line].lstrip())]
        at.setdefault(line, []).extend(f"{indent}# {c}" for c in comments)
    out = []
    for i, line in enumerate(lines):
        out += at.get(i, [])
        out.append(line)
    return "\n".join(out) + "\n"


def draft_text(data: dict, rules: list[DraftRule], source: str, builder: str, traced: str,
               feature_note: str | None, notes: list[str], unmatched_torch, unmatched_keras,
               io_notes: dict[str, list[str]] | None = None) -> str:
    """The YAML draft: `data` dumped, with the header, the uncertain rules' comments and the list
    of unmatched tensors (name and shape) as comments. traced: the traced input, in words;
    io_notes: comments above the `inputs`/`outputs` keys."""
    header = [f"DRAFT written by scripts/new_recipe.py: {source} -> Keras builder {builder}.",
              "Review every rule (comments mark those chosen by order only, with several fitting",
              "transforms or with differing hyper-parameters), then set preprocessing, input_size,",
              "features and tolerance. Schema: docs/recipe-format.md",
              f"traced at {traced}"]
    free = any(None in i["shape"] for i in data.get("inputs", [{"shape": [None]}]))
    if "input_size" not in data and free:
        header.append("input_size: 224         # TODO: validation resolution")
    header.append("preprocessing: {...}    # TODO: mean/std/interpolation/crop_pct (timm's and "
                  "torchvision's own are applied at conversion)")
    above: dict[tuple, list[str]] = {("family",): header}
    for key, comments in (io_notes or {}).items():
        if comments and key in data:
            above[key,] = comments
    if "features" in data:
        above["features",] = [f"inferred: keras stage<i> layers and the torch module with the same "
                              f"output shape at {traced}; review"]
    if feature_note:
        above["ignore",] = [feature_note]
    above["mapping",] = ["regex over the torch module path -> keras layer, first match wins"] + \
        ([] if rules else ["nothing could be matched"])
    for i, rule in enumerate(rules):
        if rule.comments:
            above["mapping", i] = rule.comments
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=_WIDTH)
    footer = list(notes)
    if unmatched_torch or unmatched_keras:
        footer.append("NOT MATCHED: add rules (or ignore patterns) for these, or fix the Keras builder.")
        footer.append(f"torch tensors not matched ({len(unmatched_torch)}):")
        footer += [f"  {k} {list(s)}" for k, s in unmatched_torch]
        footer.append(f"keras variables not matched ({len(unmatched_keras)}):")
        footer += [f"  {k} {list(s)}" for k, s in unmatched_keras]
    else:
        footer.append("every torch tensor and every keras variable is matched")
    return attach_comments(text, above) + "".join(f"# {c}\n" for c in footer)
