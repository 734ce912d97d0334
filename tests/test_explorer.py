"""`fedmi view`: the page's data are the run's records, and the page works in a real browser (headless Chromium)."""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import pytest
from runs import rounds_json

from fedmi_flower.cli import main
from fedmi_flower.records.round_record import View
from fedmi_flower.records.series import load_run
from fedmi_flower.views.explorer import explorer_data

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REQUIRE_BROWSER = "FEDMI_REQUIRE_BROWSER"
"""Set to 1 (as .ci/run does) to make a missing Chromium fail the browser test instead of skipping it."""


def fmt(value: float | None, digits: int) -> str:
    """What the page prints: fixed digits, or null where the records say null."""
    return "null" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def test_the_pages_data_are_the_run_records(iid_run):
    run = load_run(iid_run)
    data = explorer_data(run)
    assert data["records"] == rounds_json(iid_run)  # the records exactly as rounds.jsonl spells them
    assert data["rounds"] == [1, 2] and data["clients"] == ["0", "1", "2"] and data["classes"] == ["0", "1", "2", "7"]
    for i, record in enumerate(run.records):
        for view in View:
            value = record.summary.view(view).mean
            assert data["views"][str(view)]["value"][i] == (None if math.isnan(value) else value)
    assert data["views"]["stability"]["value"][0] is None  # undefined in round 1: null, as rounds.jsonl says


def _browser():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.exists()):
        install = "apt-get install chromium chromium-driver"
        if os.environ.get(REQUIRE_BROWSER) == "1":
            pytest.fail(f"{REQUIRE_BROWSER}=1 but Chromium is not installed; run `{install}`")
        pytest.skip(f"Chromium is not installed (`{install}` as root); .ci/run installs it and runs this test")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_the_page_loads_in_chromium_and_the_round_slider_shows_each_rounds_records(iid_run, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["view", str(iid_run), "--out", str(tmp_path / "view.html")]) == 0
    page = tmp_path / "view.html"
    assert str(page) in out.getvalue() and b"<script" in page.read_bytes()[:10000]
    assert b"<script src=" not in page.read_bytes()  # every script is inlined: the page works offline
    records = load_run(iid_run).records
    driver = _browser()
    try:
        driver.get(page.as_uri())
        text = lambda element_id: driver.find_element("id", element_id).text

        def shows(record) -> None:
            s = record.summary
            assert text("acc") == fmt(record.global_model.accuracy, 3)
            assert text("inter") == fmt(s.view(View.INTER_CLIENT_IOU).mean, 2)
            assert text("stab") == fmt(s.view(View.STABILITY).mean, 2)
            assert text("degenerate") == f"{s.degenerate_local}, {s.degenerate_global}"
            assert text("round-label") == f"{record.round} of {records[-1].round}"
            # The robustness sections the quickstart measures (issue 27).
            assert text("method-iou") == f"{fmt(s.method_client_iou, 2)} ({fmt(s.method_client_iou_chance, 2)})"
            assert text("ablations") == f"{s.ablation_verdicts_changed} of {s.ablation_verdicts_compared}"
            cka = f"{fmt(s.cka, 2)} (never-trained {fmt(s.cka_untrained, 2)}, unpaired {fmt(s.cka_chance, 2)})"
            assert text("cka") == cka

        shows(records[-1])  # opens on the last round
        driver.execute_script(
            "const r = document.getElementById('round'); r.value = 0; r.dispatchEvent(new Event('input'));"
        )
        shows(records[0])
        driver.execute_script(
            "const c = document.getElementById('class'); c.value = '7'; c.dispatchEvent(new Event('change'));"
        )
        assert text("verdicts").startswith("class 7: client 0's circuit")
        for chart in ("iou", "heatmap", "circuit", "sizes"):  # Plotly drew every chart
            assert driver.execute_script(f"return document.getElementById('{chart}').data.length") > 0
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()


def test_a_round_that_was_not_analysed_and_markup_in_the_data_do_not_break_the_page(iid_run, tmp_path):
    import dataclasses

    from fedmi_flower.records.round_record import Failure, RoundRecord
    from fedmi_flower.records.series import Run
    from fedmi_flower.views.explorer import write_explorer

    run = load_run(iid_run)
    first = run.records[0]
    first.failures = [Failure("1", "boom </script><!-- <script>window.broken = 1</script> __DATA__")]
    broken = RoundRecord(round=2, analysis_error="the analysis raised")
    config = dataclasses.replace(run.config, description="a </p><script>window.broken = 1</script> __DATA__")
    (page,) = write_explorer([Run(run.path, config, [first, broken])], tmp_path / "page.html")
    driver = _browser()
    try:
        driver.get(page.as_uri())
        text = lambda element_id: driver.find_element("id", element_id).text
        assert text("round-label") == "2 of 2 (not analysed)" and text("acc") == "null"
        driver.execute_script(
            "const r = document.getElementById('round'); r.value = 0; r.dispatchEvent(new Event('input'));"
        )
        assert text("acc") == fmt(first.global_model.accuracy, 3)
        assert driver.execute_script("return window.broken") is None  # no injected script ran
        assert "__DATA__" in driver.find_element("css selector", "p.note").text  # shown as text, not substituted
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
