"""The README's results tables are rendered from results/*/report.json, so the two cannot drift apart.

Each table sits between `<!-- results-table: PATH ENV -->` and `<!-- /results-table -->` and must
equal `report.results_table` of that report.json and env.
"""

from __future__ import annotations

import json
import re

from conftest import ROOT

import report

BLOCK = re.compile(r"<!-- results-table: (\S+) (\S+) -->\n(.*?)\n<!-- /results-table -->", re.S)


def test_every_results_table_in_the_readme_matches_its_report():
    readme = (ROOT / "README.md").read_text()
    blocks = BLOCK.findall(readme)
    assert blocks, "the README has no results tables"
    for path, env, table in blocks:
        data = json.loads((ROOT / path).read_text())
        assert table == report.results_table(data, env), f"README table of {path} ({env}) differs from the report"
