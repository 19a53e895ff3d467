"""No import cycles in zoo/: every module is parsed (ast, nothing is imported) and the graph of its
imports of other zoo modules must be acyclic.

Module-level imports may form no cycle at all. Imports inside functions (deferred so that `import
zoo` stays free of torch/TensorFlow, or so that torch is imported before TensorFlow) are checked
as well: a cycle through them is allowed only through an edge of DEFERRED_OK, each with its reason.
"""
import ast

from helpers import ROOT

ZOO = ROOT / "zoo"

# (importer, imported): why this function-level import may close a cycle
DEFERRED_OK = {
    ("zoo.versions", "zoo"): "library_versions() reads zoo.__version__ when a report is written, "
                             "long after `zoo` finished importing; zoo/__init__ imports zoo.api, "
                             "whose convert() defers zoo.conversion.pipeline (torch), which "
                             "records the versions",
}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def zoo_modules():
    return {module_name(p): p for p in sorted(ZOO.rglob("*.py"))}


def imports(path, name, known):
    """[(imported zoo module, deferred)] of one file; deferred = inside a function body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, deferred):
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names if a.name in known)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                for a in child.names:
                    # `from zoo.conversion import mapping` imports the submodule itself
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                    if target in known:
                        found.append((target, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def graph(deferred_too, allowed=()):
    """zoo module -> the zoo modules it imports (at module level, or anywhere), minus `allowed`."""
    mods = zoo_modules()
    return {name: {t for t, deferred in imports(path, name, mods)
                   if t != name and (deferred_too or not deferred) and (name, t) not in allowed}
            for name, path in mods.items()}


def cycles(g):
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return sorted(found)


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b"], ["c", "d"]]


def test_import_parser_sees_module_level_and_deferred_imports(tmp_path):
    text = ("import zoo.a\nimport numpy\nfrom . import b\nfrom .a import thing\n"
            "if True:\n    from zoo import c\n"
            "def f():\n    from zoo.d import x\n")
    known = {"zoo", "zoo.a", "zoo.b", "zoo.c", "zoo.d", "zoo.pkg", "zoo.pkg.b"}
    (tmp_path / "mod.py").write_text(text)
    assert sorted(imports(tmp_path / "mod.py", "zoo.m", known)) == [
        ("zoo.a", False), ("zoo.a", False), ("zoo.b", False), ("zoo.c", False), ("zoo.d", True)]
    # in a package's __init__, `.` is the package itself
    (tmp_path / "__init__.py").write_text(text)
    assert sorted(imports(tmp_path / "__init__.py", "zoo.pkg", known)) == [
        ("zoo.a", False), ("zoo.c", False), ("zoo.d", True), ("zoo.pkg.b", False)]


def test_no_module_level_import_cycle():
    assert cycles(graph(deferred_too=False)) == []


def test_no_import_cycle_even_through_deferred_imports():
    assert cycles(graph(deferred_too=True, allowed=DEFERRED_OK)) == []
    mods = zoo_modules()
    for edge in DEFERRED_OK:    # each allowance is a deferred import still needed to break a cycle
        importer, imported = edge
        kinds = [d for t, d in imports(mods[importer], importer, mods) if t == imported]
        assert kinds and all(kinds), f"{edge} is no longer a deferred import"
        assert cycles(graph(deferred_too=True, allowed=set(DEFERRED_OK) - {edge})), \
            f"{edge} closes no cycle any more: drop it from DEFERRED_OK"


def test_pipeline_and_diff_do_not_import_each_other():
    g = graph(deferred_too=True)
    assert "zoo.conversion.diff" not in g["zoo.conversion.pipeline"]
    assert "zoo.conversion.pipeline" not in g["zoo.conversion.divergence"]
