"""Pytest hooks that record what the hostile-input, fault-injection and fuzz tests tried and how
each ended, for the README section "What we test against" (scripts/update_readme.py).

Tests opt in with `@pytest.mark.hostile("<category>")` (or a module's `pytestmark`); fuzz tests
also call `record_property("outcome", ...)` once per generated example. Results are merged into
outputs/robustness.json by test id, so a partial run updates only what it ran.
"""
import json
import os
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parent.parent / "outputs" / "robustness.json"
_seen: dict[str, dict] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "hostile(category): a hostile-input, fault or fuzz case "
                                       "listed in the README's 'What we test against'")


def _describe(item) -> str:
    doc = (getattr(item.function, "__doc__", None) or "").strip().split("\n\n")[0]
    first = " ".join(doc.split()).split(". ")[0].rstrip(".")   # the docstring's first sentence
    text = first or item.function.__name__[len("test_"):].replace("_", " ")
    case = getattr(item, "callspec", None)
    return text + (f" — `{case.id}`" if case else "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # The record rides on the report: under pytest-xdist (`make test` runs two workers) tests run
    # in worker processes, and only reports reach the controller, which writes the file.
    result = yield
    marker = item.get_closest_marker("hostile")
    if marker is None or call.when != "call":
        return
    outcomes = [v for k, v in item.user_properties if k == "outcome"]
    result.get_result().user_properties.append(("robustness", {
        "category": marker.args[0], "test": item.nodeid, "what": _describe(item),
        "outcome": "passed" if call.excinfo is None else "FAILED",
        "examples": {o: outcomes.count(o) for o in sorted(set(outcomes))} if outcomes else None,
    }))


def pytest_runtest_logreport(report):
    for key, record in report.user_properties:
        if key == "robustness":
            _seen[report.nodeid] = record


def pytest_sessionfinish(session):
    if not _seen or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    try:
        old = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        old = {}
    old.update(_seen)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=1, sort_keys=True))
    os.replace(tmp, RESULTS)
