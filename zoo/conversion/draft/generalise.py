r"""Generalise matched pairs into regex rules (zoo.conversion.draft).

Two ways to read a torch module path as a skeleton with variable parts:
  "numbers":  the digit runs  ('layer1.0.conv1' -> 'layer(\d+)\.(\d+)\.conv(\d+)'), the
              template refers to the keras path's digit runs ('stage{1}_block{2}_conv{3}');
  "segments": the dotted path segments ('Mixed_5b.branch1x1.conv' -> '(\w+)\.(\w+)\.conv'),
              the template to the same text in the keras path ('{1}_{2}_conv').
Both give exact rules; the draft uses the one that needs fewer rules.
"""
from __future__ import annotations

import itertools
import re

from zoo.conversion.draft.model import DraftError, DraftRule, Pair

_NUM = re.compile(r"\d+")
_BOUNDARY = r"(?<![A-Za-z0-9]){}(?![A-Za-z0-9])"


def _split(path, mode="numbers"):
    """(text between the variable parts, variable parts):
    numbers:  'layer1.0.conv1' -> (('layer', '.', '.conv', ''), ('1', '0', '1'));
    segments: 'layer1.0.conv1' -> (('', '.', '.', ''), ('layer1', '0', 'conv1'))."""
    if mode == "numbers":
        return tuple(_NUM.split(path)), tuple(_NUM.findall(path))
    parts = tuple(path.split("."))
    return ("",) + (".",) * (len(parts) - 1) + ("",), parts


def _regex(text, values_per_pos, literal, mode):
    """values_per_pos: the values each position takes over the rule's pairs."""
    out = [re.escape(text[0])]
    for pos, values in enumerate(values_per_pos):
        if pos in literal:
            out.append(re.escape(next(iter(values))))
        else:
            out.append(r"(\d+)" if mode == "numbers" or all(v.isdigit() for v in values)
                       else r"(\w+)")
        out.append(re.escape(text[pos + 1]))
    return "".join(out)


def _esc(text):
    return text.replace("{", "{{").replace("}", "}}")


def _numbers_template(pairs, variable):
    """Template over the keras digit runs, each either a group (a variable torch position with
    the same value in every pair) or a literal (the same value in every pair); None if some run
    is neither. Prefers groups, in order."""
    kparts = {_split(p.keras.path)[0] for p in pairs}
    if len(kparts) != 1:
        return None
    ktext = kparts.pop()
    tnums = [_split(p.torch.path)[1] for p in pairs]
    knums = [_split(p.keras.path)[1] for p in pairs]
    out, last = [_esc(ktext[0])], -1
    for r in range(len(knums[0])):
        refs = [g for g in variable if all(tn[g] == kn[r] for tn, kn in zip(tnums, knums))]
        later = [g for g in refs if g >= last]
        if refs:
            last = (later or refs)[0]
            out.append(f"{{{variable.index(last) + 1}}}")
        elif len({kn[r] for kn in knums}) == 1:
            out.append(knums[0][r])
        else:
            return None
        out.append(_esc(ktext[r + 1]))
    return "".join(out)


def _segments_template(pairs, variable):
    """Template in which each variable torch segment is found, left to right and between
    separators, in the keras path; None unless every pair gives the same template."""
    found = set()
    for p in pairs:
        values = _split(p.torch.path, "segments")[1]
        kpath, out, at = p.keras.path, [], 0
        for n, pos in enumerate(variable, start=1):
            m = re.compile(_BOUNDARY.format(re.escape(values[pos]))).search(kpath, at)
            if m is None:
                return None
            out += [_esc(kpath[at:m.start()]), f"{{{n}}}"]
            at = m.end()
        found.add("".join(out) + _esc(kpath[at:]))
    return found.pop() if len(found) == 1 else None


def _make_rule(pairs, literal, all_paths, mode, module_type=None):
    """The rule mapping exactly `pairs` (one torch skeleton) with the torch positions in
    `literal` kept literal, or None. all_paths: torch module path -> class name."""
    if len({p.transform for p in pairs}) != 1 or \
            len({repr(p.args) for p in pairs}) != 1:
        return None
    text, first = _split(pairs[0].torch.path, mode)
    values = [{_split(p.torch.path, mode)[1][pos] for p in pairs} for pos in range(len(first))]
    if len(pairs) == 1:   # one pair is no evidence of a pattern: a literal rule
        literal = tuple(range(len(first)))
    # a position with one value that the template does not need is literal as well
    literal = set(literal) | {pos for pos, v in enumerate(values) if len(v) == 1 and mode == "segments"}
    variable = [pos for pos in range(len(first)) if pos not in literal]
    template = (_numbers_template if mode == "numbers" else _segments_template)(pairs, variable)
    if template is None:
        return None
    used = {int(n) - 1 for n in re.findall(r"(?<!{){(\d+)}", template)}
    unused = [pos for i, pos in enumerate(variable) if i not in used and len(values[pos]) == 1]
    if unused:            # renumber without them
        return _make_rule(pairs, tuple(literal | set(unused)), all_paths, mode, module_type)
    regex = _regex(text, values, literal, mode)
    rx = re.compile(regex)
    covered = {p.torch.path for p in pairs}
    if any(rx.fullmatch(path) for path, typ in all_paths.items()
           if path not in covered and module_type in (None, typ)):
        return None       # it would also catch a module outside these pairs
    for p in pairs:       # and must reproduce every pair exactly
        m = rx.fullmatch(p.torch.path)
        if not m or template.format(m.group(0), *m.groups()) != p.keras.path:
            return None
    return DraftRule(regex, template, pairs[0].transform, list(pairs), pairs[0].args, module_type)


def _generalise_group(group, all_paths, mode, module_type=None):
    npos = len(_split(group[0].torch.path, mode)[1])
    rules, remaining = [], list(group)
    for k in range(npos + 1):
        while remaining:
            best = None
            for lit in itertools.combinations(range(npos), k):
                parts: dict[tuple, list[Pair]] = {}
                for p in remaining:
                    values = _split(p.torch.path, mode)[1]
                    parts.setdefault(tuple(values[q] for q in lit), []).append(p)
                made = [r for r in (_make_rule(ps, lit, all_paths, mode, module_type)
                                    for ps in parts.values()) if r is not None]
                score = (sum(len(r.pairs) for r in made), -len(made))
                if made and (best is None or score > best[0]):
                    best = (score, made)
            if best is None:
                break
            rules += best[1]
            done = {id(p) for r in best[1] for p in r.pairs}
            remaining = [p for p in remaining if id(p) not in done]
    if remaining:   # cannot happen: literal rules always fit; never drop a pair silently
        raise DraftError(f"could not write rules for {[p.torch.path for p in remaining]}")
    return rules


def generalise(pairs: list[Pair], all_paths: dict[str, str], mode: str = "numbers") -> list[DraftRule]:
    """Rules covering exactly the matched pairs: per torch skeleton, the fewest torch positions
    are made literal (partitioning the pairs by their values there) until every part has one
    template; at worst one literal rule per pair. Where torch module types tell apart what the
    path cannot (VGG's `features.<i>` convs and BatchNorms), rules per type (`module_type`) are
    used if they are fewer. No rule matches a torch module (all_paths: path -> class name)
    outside its pairs."""
    by_skeleton: dict[tuple, list[Pair]] = {}
    for p in pairs:
        by_skeleton.setdefault(_split(p.torch.path, mode)[0], []).append(p)
    rules = []
    for group in by_skeleton.values():
        plain = _generalise_group(group, all_paths, mode)
        types = sorted({p.torch.type_name for p in group})
        if len(plain) > 1 and len(types) > 1 and all(t.isidentifier() for t in types):
            typed = [r for t in types for r in _generalise_group(
                [p for p in group if p.torch.type_name == t], all_paths, mode, t)]
            if len(typed) < len(plain):
                plain = typed
        rules += plain
    rules.sort(key=lambda r: min(p.torch.index for p in r.pairs))
    return rules


def best_rules(pairs: list[Pair], all_paths: dict[str, str]) -> list[DraftRule]:
    """The shorter of the two tables (numbers first on a tie)."""
    return min((generalise(pairs, all_paths, mode) for mode in ("numbers", "segments")), key=len)

