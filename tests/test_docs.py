"""docs/pitfalls.md names the tests that guard each pitfall: every `tests/<file>.py::<name>` it
cites must be a test function of that file (found with ast, nothing imported), and every pitfall
either cites one or says that no test guards it."""
import ast
import re

from helpers import ROOT

PITFALLS = ROOT / "docs" / "pitfalls.md"
LINK = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def functions_of(path):
    """Names of the test functions of a test file: module-level or in a Test* class."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return {n for n in names if n.startswith("test")}


def broken_links(text, root):
    """The links of `text` that do not resolve to a test function under `root`."""
    broken = []
    for path, name in LINK.findall(text):
        file = root / path
        if not file.is_file() or name not in functions_of(file):
            broken.append(f"{path}::{name}")
    return broken


def test_link_checker_catches_missing_files_and_functions(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "def test_real():\n    pass\n\ndef helper():\n    pass\n\n"
        "class TestGroup:\n    def test_method(self):\n        pass\n")
    text = ("`tests/test_a.py::test_real` `tests/test_a.py::test_method` "
            "`tests/test_a.py::test_gone` `tests/test_a.py::helper` `tests/test_b.py::test_real`")
    assert broken_links(text, tmp_path) == ["tests/test_a.py::test_gone", "tests/test_a.py::helper",
                                            "tests/test_b.py::test_real"]


def test_every_pitfall_test_link_resolves():
    text = PITFALLS.read_text()
    assert len(LINK.findall(text)) >= 30       # the page really cites its tests
    assert broken_links(text, ROOT) == []


def test_every_pitfall_cites_a_test_or_says_none_guards_it():
    """Each bold-titled entry (a paragraph starting with **...**) names a test or says so."""
    text = PITFALLS.read_text()
    entries = re.split(r"\n(?=\*\*)", text)[1:]
    assert len(entries) >= 25
    for entry in entries:
        entry = entry.split("\n## ")[0]
        title = entry.split("**")[1]
        assert LINK.search(entry) or "no test guards" in entry.lower(), title


def test_nothing_points_to_the_old_pitfalls_file():
    """The checklist used to live outside the repository; code and docs point here instead."""
    stale = [str(p.relative_to(ROOT)) for folder in ("zoo", "scripts", "tests", "docs", "examples")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml")
             and p.is_file() and "CONVERSION_PITFALLS" in p.read_text()
             and p.name != "test_docs.py"]
    stale += ["README.md"] if "CONVERSION_PITFALLS" in (ROOT / "README.md").read_text() else []
    assert stale == []
    assert "docs/pitfalls.md" in (ROOT / "README.md").read_text()
