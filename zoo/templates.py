"""The `keras:` template of a mapping rule (docs/recipe-format.md, "Templates").

A template is text with placeholders in braces. `{1}` / `{name}` insert a captured group of the
rule's regex as it is; anything else in braces is a small index expression such as `{g1+1}` or
`{first[g1]+g2}`: integers, the captured groups (`g<n>` or a named group, read as integers),
lookups in the recipe's `tables`, `+ - * //` and parentheses. Expressions are parsed with `ast`
and only those nodes are accepted, then evaluated by walking the tree here: never eval().

`parse_template`/`check_template` (load time) refuse everything else; `render_template` (mapping
time) fails when a group is not an integer or a table has no such entry. All raise TemplateError;
the callers add the file and the rule.
"""
from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from functools import lru_cache

_PLACEHOLDER = re.compile(r"{([^{}]*)}")
_NUMBERED = re.compile(r"g(\d+)")
_DIGITS = re.compile(r"[0-9]+")        # ASCII only: int() would also take '٣' or ' 3'
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv}
MAX_EXPRESSION = 100                   # a placeholder longer than this is not an index formula


class TemplateError(ValueError):
    """A template that cannot be parsed, or cannot be filled for one torch module."""


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple          # literal strings and (placeholder text, ast node) pairs, in order
    groups: frozenset     # group references: ints (numbered) and strs (named)
    tables: frozenset     # names of the tables it looks up


def _placeholder(src: str) -> ast.expr:
    if _DIGITS.fullmatch(src):             # the classic `{1}`: group 1, same as `{g1}`
        return ast.Name(id=f"g{int(src)}", ctx=ast.Load())
    if not src.strip():
        raise TemplateError("empty placeholder {}")
    if len(src) > MAX_EXPRESSION:
        raise TemplateError(f"expression {{{src[:40]}...}} is longer than {MAX_EXPRESSION} "
                            "characters")
    try:
        return ast.parse(src.strip(), mode="eval").body
    except SyntaxError as e:
        raise TemplateError(f"bad expression {{{src}}}: {e.msg}") from None


def _group_ref(name: str):
    m = _NUMBERED.fullmatch(name)
    return int(m.group(1)) if m else name


def _groups(node) -> set:
    groups: set = set()
    _check(node, "", groups, set())
    return groups


def _check(node, src, groups: set, tables: set) -> None:
    """Accept only integer literals, group names, table[...] lookups and + - * //."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return
    if isinstance(node, ast.Name):
        groups.add(_group_ref(node.id))
        return
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        tables.add(node.value.id)
        _check(node.slice, src, groups, tables)
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        _check(node.left, src, groups, tables)
        _check(node.right, src, groups, tables)
        return
    raise TemplateError(f"expression {{{src}}}: {ast.unparse(node)!r} is not allowed (only "
                        "integers, groups g<n> or by name, table[...] lookups, + - * // and "
                        "parentheses)")


@lru_cache(maxsize=1024)
def parse_template(text: str) -> Template:
    """Split and check a template (independently of any regex: see `check_template`)."""
    parts: list = []
    groups: set = set()
    tables: set = set()
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        src = m.group(1)
        node = _placeholder(src)
        used: set = set()
        _check(node, src, used, tables)
        if not used:
            # `{1+1}` meant as "group 1 plus 1" would silently give 2: say how to write it
            raise TemplateError(f"expression {{{src}}} uses no captured group (a bare number "
                                "in an expression is a number: write g1 for group 1)")
        groups |= used
        parts += [text[pos:m.start()], (src, node)]
        pos = m.end()
    parts.append(text[pos:])
    if any("{" in p or "}" in p for p in parts if isinstance(p, str)):
        raise TemplateError(f"unbalanced brace in {text!r}")
    return Template(text, tuple(p for p in parts if p != ""), frozenset(groups),
                    frozenset(tables))


def check_template(text: str, regex: re.Pattern) -> Template:
    """parse + every group the template uses exists in `regex`."""
    t = parse_template(text)
    clash = sorted(n for n in regex.groupindex if _NUMBERED.fullmatch(n))
    if clash:
        raise TemplateError(f"named group(s) {clash} of {regex.pattern!r} read as numbered "
                            "groups in a template; rename them")
    for part in t.parts:
        if isinstance(part, str):
            continue
        src, node = part
        for g in sorted(_groups(node), key=str):
            if isinstance(g, int) and g <= regex.groups or g in regex.groupindex:
                continue
            which = "" if _DIGITS.fullmatch(src) or src == g else f" (group {g})"
            hint = "; a table is looked up as name[...]" if isinstance(g, str) else ""
            raise TemplateError(f"template {text!r} refers to {{{src}}}{which} but regex "
                                f"{regex.pattern!r} has {regex.groups} group(s)"
                                + (f" named {sorted(regex.groupindex)}" if regex.groupindex
                                   else "") + hint)
    return t


def _describe(node) -> str:
    if isinstance(node, ast.Name):
        return f"group {_group_ref(node.id)}"
    return repr(ast.unparse(node))


def _int(value, node, src) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    raise TemplateError(f"expression {{{src}}}: {_describe(node)} is {value!r}, not an integer")


def _eval(node, match, tables, src):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return match.group(_group_ref(node.id))
    if isinstance(node, ast.Subscript):
        name = node.value.id
        table, key = tables[name], _eval(node.slice, match, tables, src)
        if isinstance(table, dict):
            if str(key) not in table:
                raise TemplateError(f"expression {{{src}}}: table {name!r} has no entry "
                                    f"{str(key)!r} (it has {sorted(table)})")
            return table[str(key)]
        i = _int(key, node.slice, src)
        if not 0 <= i < len(table):   # a negative index would silently count from the end
            raise TemplateError(f"expression {{{src}}}: index {i} is outside table {name!r} "
                                f"({len(table)} entries)")
        return table[i]
    a = _int(_eval(node.left, match, tables, src), node.left, src)
    b = _int(_eval(node.right, match, tables, src), node.right, src)
    if isinstance(node.op, ast.FloorDiv) and b == 0:
        raise TemplateError(f"expression {{{src}}}: division by zero")
    return _OPS[type(node.op)](a, b)


def render_template(template: Template, match: re.Match, tables: dict) -> str:
    """Fill the template for one regex match; `tables` holds every table it looks up."""
    out = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        src, node = part
        value = _eval(node, match, tables, src)
        out.append("" if value is None else str(value))   # unmatched optional group: ""
    return "".join(out)
