"""Lineage in a real browser: headless Chromium (Debian's package) driven by Playwright opens the
webserver's UI and shows the archive → local / r2 / b2 fan-out with every check passed."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from backup_assets.testing import browser
from backup_assets.testing.dagster_stack import ASSETS, CHECKS

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
FAN_OUT = {("tenant_archive", copy) for copy in ("local_copy", "r2_copy", "b2_copy")}

# Each node of the graph is an SVG foreignObject; each edge a path "M x1,y1 C … x2,y2" leaving the
# right side of its source and ending (minus the arrowhead) at the left side of its target.
GRAPH_JS = """() => {
  const svg = document.querySelector('svg[class*=svgContainer]');
  if (!svg) return null;
  const nodes = Array.from(svg.querySelectorAll('foreignObject')).map(f => ({
    x: +f.getAttribute('x'), y: +f.getAttribute('y'), w: +f.getAttribute('width'),
    h: +f.getAttribute('height'), text: f.textContent || ''}));
  const edges = Array.from(svg.querySelectorAll(':scope > path[marker-end]')).map(p => {
    const n = (p.getAttribute('d').match(/-?[0-9.]+/g) || []).map(Number);
    return n.length >= 4 ? [n[0], n[1], n[n.length - 2], n[n.length - 1]] : null;
  }).filter(Boolean);
  return {nodes, edges};
}"""


MISSING = browser.missing()
# Skipped where the browser is absent, except under CI: CI installs it (.ci/install-browser).
needs_browser = pytest.mark.skipif(bool(MISSING) and not os.environ.get("CI"), reason=f"no browser: {MISSING}")


def _node_name(node: dict) -> str:
    """The asset a node shows (its text starts with the name), else the start of its text."""
    text = node["text"].strip()
    return next((a for a in ASSETS if text.startswith(a)), text[:40])


def _edges(graph: dict) -> set[tuple[str, str]]:
    """(source, target) names from the rendered edge geometry."""

    def at(x, y, side):
        for node in graph["nodes"]:
            edge_x = node["x"] + (node["w"] if side == "right" else 0)
            if abs(x - edge_x) <= 12 and node["y"] <= y <= node["y"] + node["h"]:
                return _node_name(node)
        return None

    found = set()
    for x1, y1, x2, y2 in graph["edges"]:
        source, target = at(x1, y1, "right"), at(x2, y2, "left")
        if source and target:
            found.add((source, target))
    return found


@needs_browser
def test_lineage_and_checks_in_browser(e2e_stack, tmp_path):
    if MISSING:
        pytest.fail(f"browser test cannot run under CI: {MISSING}")
    stack = e2e_stack
    # The operator's backup of every active tenant, into the stack's instance: all four assets and
    # their checks. All of them: a node's check badge sums up every partition's latest results, and
    # tests before this one may have left a copy failing its verify check.
    stack.cli(sys.executable, "-m", "backup_assets.cli", "backup", "--all", timeout=600)
    expected = {(a, c) for a, cs in CHECKS.items() for c in cs}
    for tenant in stack.active_tenants:
        latest = stack.latest_checks(tenant)
        assert {k for k, v in latest.items() if v["status"] == "SUCCEEDED"} == expected, (tenant, latest)

    shot = tmp_path / "lineage.png"
    try:
        with browser.chromium_page() as page:
            _lineage(page, stack.url, shot)
            _archive_checks(page, stack.url, tmp_path / "tenant_archive_checks.png")
    finally:  # the screenshots go with the test output, pass or fail
        ARTIFACTS.mkdir(exist_ok=True)
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, ARTIFACTS / png.name)
        print(f"lineage screenshot: {shot} (copy: {ARTIFACTS / shot.name})")


def _lineage(page, url: str, shot: Path) -> None:
    page.goto(f"{url}/asset-groups")
    page.get_by_text("Global asset lineage").first.wait_for()
    browser.dismiss_community_dialog(page)  # fresh instance: "Join the Dagster community" → Skip
    graph_svg = page.locator("svg[class*=svgContainer]")
    nodes = {a: graph_svg.locator("foreignObject", has_text=re.compile(rf"^\s*{a}")) for a in ASSETS}
    for node in nodes.values():  # the node's check badge once live data has loaded: "N / M …"
        node.get_by_text(re.compile(r"^\s*\d+\s*/\s*\d+")).first.wait_for()
    browser.dismiss_community_dialog(page, 0)  # in case it came late: nothing may cover the graph
    page.screenshot(path=str(shot), full_page=True)

    graph = page.evaluate(GRAPH_JS)
    assert graph is not None, "no asset graph rendered"
    assert {_node_name(n) for n in graph["nodes"]} == set(ASSETS), graph["nodes"]
    assert _edges(graph) == FAN_OUT, graph["edges"]
    texts = {a: node.text_content() for a, node in nodes.items()}
    for asset in ASSETS:
        assert re.search(r"Asset checks\s*2\s*/\s*2\s*Passed", texts[asset]), texts


def _archive_checks(page, url: str, shot: Path) -> None:
    """The archive's Checks tab: both checks listed, their latest execution passed."""
    page.goto(f"{url}/assets/tenant_archive?view=checks")
    for check in CHECKS["tenant_archive"]:
        page.get_by_text(check, exact=True).first.wait_for()
    page.get_by_text("Passed", exact=True).first.wait_for()
    browser.dismiss_community_dialog(page, 0)
    page.screenshot(path=str(shot), full_page=True)
    assert page.get_by_text("Succeeded", exact=True).count() == len(CHECKS["tenant_archive"]), page.inner_text("body")[
        :2000
    ]
