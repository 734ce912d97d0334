"""Runs written by earlier mains (schema 2 with flat strategy keys; schema 3 with a flat summary) still read,
report and plot."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import shutil
from pathlib import Path

import pytest

from fedmi_flower.cli import main
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.round_record import View
from fedmi_flower.records.series import load_run

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("schema, rounds", [(2, 2), (3, 4)])
def test_an_old_run_reads_reports_and_plots(tmp_path, schema, rounds):
    run_dir = tmp_path / "old"
    shutil.copytree(FIXTURES / f"schema{schema}-run", run_dir)
    records = RunDirectory(run_dir).read_rounds()
    assert [r.schema for r in records] == [schema] * rounds and all(r.analysed for r in records)
    config = RunDirectory(run_dir).read_config()
    if schema == 2:
        assert config.strategy.name == "fedprox" and config.strategy.fedprox.proximal_mu == 0.05  # a flat key, nested
    run = load_run(run_dir)
    assert len(run.records) == rounds and run.records[-1].summary.clients == 3
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["report", str(run_dir)]) == 0, err.getvalue()
        assert main(["plot", str(run_dir), "--paper"]) == 0, err.getvalue()
    page = (run_dir / "report" / "report.md").read_text()
    assert "## Answers" in page and "RQ1" in page
    assert len(list((run_dir / "figures").glob("*.png"))) >= 8


def test_a_schema_3_summary_reads_into_views_with_the_numbers_it_was_written_with():
    """The flat summary of the schema-3 fixture (its summary.csv, written by that main) is what the grouped views
    read: floors, what they cover and what they are compared with."""
    run_dir = FIXTURES / "schema3-run"
    rows = list(csv.DictReader((run_dir / "summary.csv").open()))
    records = RunDirectory(run_dir).read_rounds()
    covered = 0
    for row, record in zip(rows, records, strict=True):
        s = record.summary
        for name, value in s.scalars().items():
            written = float(row[name]) if row.get(name) not in (None, "") else math.nan
            assert (math.isnan(written) and math.isnan(value)) or written == pytest.approx(value), (record.round, name)
        view = s.view(View.INTER_CLIENT_IOU)
        covered += view.floor_covers
        if view.floor_covers:
            assert not math.isnan(view.floor) and s.against_floor(View.INTER_CLIENT_IOU) == view.floor_against
    assert covered > 0  # the fixture has floors to read
