"""A run written by an earlier main (schema 2, flat strategy keys) still reads, reports and plots."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from fedmi_flower.cli import main
from fedmi_flower.records.results import RunDirectory
from fedmi_flower.records.series import load_run

FIXTURE = Path(__file__).parent / "fixtures" / "schema2-run"


def test_a_schema_2_run_reads_reports_and_plots(tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(FIXTURE, run_dir)
    records = RunDirectory(run_dir).read_rounds()
    assert [r.schema for r in records] == [2, 2] and all(r.analysed for r in records)
    config = RunDirectory(run_dir).read_config()
    assert config.strategy.name == "fedprox" and config.strategy.fedprox.proximal_mu == 0.05  # a flat key, nested
    run = load_run(run_dir)
    assert len(run.records) == 2 and run.records[-1].summary.clients == 3
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["report", str(run_dir)]) == 0, err.getvalue()
        assert main(["plot", str(run_dir), "--paper"]) == 0, err.getvalue()
    page = (run_dir / "report" / "report.md").read_text()
    assert "## Answers" in page and "RQ1" in page
    assert len(list((run_dir / "figures").glob("*.png"))) >= 8
