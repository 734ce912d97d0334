"""The docs' claim tables are what `fedmi claims` makes from the digests committed beside them, to the character:
docs/paper-claims.md's from the paper study's, docs/interference.md's from the cure study's, and likewise the
baselines' and the skew law's."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmi_flower.apps.study import Study, plan, same_settings
from fedmi_flower.records.digest import read_digests
from fedmi_flower.views.claims import BEGIN, END, claims_table, evaluate_all, replace_table

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ("paper", "paper-claims.md", "paper-short"),
    ("cure", "interference.md", "cure-short"),
    ("baselines", "label-skew-baselines.md", "baselines-short"),
    ("skew-law", "skew-law.md", "skew-law-short"),
]


@pytest.mark.parametrize(("name", "page", "folder"), PAGES)
def test_the_committed_claims_table_is_generated_from_the_committed_digests(name, page, folder):
    PAGE, DIGESTS = ROOT / "docs" / page, ROOT / "docs" / "claims" / folder
    study = Study.load(name)
    digests = read_digests([DIGESTS])
    assert digests, f"{DIGESTS} holds no digest"
    # The page covers what has been run so far; a claim without runs says so in its row ("no run of ...").
    assert {d.experiment for d in digests} <= {e.label for e in study.entries}, "digests of experiments the study lacks"
    planned = {r.folder: r for r in plan(study, short=True)}
    for d in digests:  # each one of the study's --short runs, with the settings it plans today (new keys at defaults)
        assert d.name in planned and same_settings(d.settings, planned[d.name].config), d.name
    page = PAGE.read_text()
    table = claims_table(evaluate_all(study.claims, digests, study.objectives_of))
    assert page.count(BEGIN) == 1 and page.count(END) == 1
    assert replace_table(page, table) == page, (
        f"docs/{page}'s table is not what its digests make: "
        f"run `fedmi claims {name} docs/claims/{folder} --update docs/{page}`"
    )
    # Every claim of the study has a row: none is dropped on the way to the page.
    rows = [
        line for line in page.split(BEGIN)[1].split(END)[0].splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert len(rows) - 1 == sum(len(study.objectives_of[c.experiment]) for c in study.claims)
