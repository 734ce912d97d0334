"""`fedmi plot` and `fedmi report` on real run directories, and the report's numbers against hand recomputations.

The recomputations below read the round records with plain loops, independently of
`fedmi_flower.records.series`, so that a wrong series, curve or definition shows up here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from runs import rounds_json

from fedmi_flower.cli import main, parse_seeds
from fedmi_flower.config import ConfigError, load_sweep
from fedmi_flower.records.round_record import RoundRecord
from fedmi_flower.records.series import Run, RunError, comparison, load_run
from fedmi_flower.views.plots import (
    COMPARE_FIGURES,
    GRAPH_FIGURES,
    RUN_FIGURES,
    fig_inter_client,
    fig_local_global,
    plot_run,
)
from fedmi_flower.views.report import (
    COLLAPSE_RATE,
    DECLINE,
    SUFFICIENCY_BELOW,
    aggregate,
    channel_total,
    collapse_numbers,
    format_spread,
    format_value,
    rq_table,
    write_report,
)

LAYERS = ("conv1", "conv2", "conv3", "mean")
RUN_FIGURE_NAMES = [name for name, _, _ in RUN_FIGURES] + list(GRAPH_FIGURES)


def cli(*args: str) -> tuple[int, str, str]:
    """Run `fedmi ARGS` in this process (the same entry point as the console script); return code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def assert_figures(folder: Path, names: list[str]) -> None:
    for name in names:
        png, svg = folder / f"{name}.png", folder / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
        assert b"<svg" in svg.read_bytes()[:2000] and svg.stat().st_size > 5000, svg


# ---------------------------------------------------------------------- independent recomputation


def nanmean(values) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def round_curve(records, view: str, layer: str, per_client: bool) -> list[float]:
    """Per round, the mean of ``record[view]...[layer]`` over classes (or clients and classes)."""
    curve = []
    for r in records:
        entries = r.get(view) or {}
        if per_client:
            values = [e.get(layer) for per in entries.values() for e in per.values()]
        else:
            values = [e.get(layer) for e in entries.values()]
        curve.append(nanmean(values))
    return curve


def expected_numbers(records) -> dict[tuple[str, str], float]:
    """The report's numbers, recomputed from the raw records; keyed by (row, column) with the table left out."""
    out: dict[tuple[str, str], float] = {}
    for label, view in (("same class", "inter_client_iou"), ("class pair", "class_pair_iou")):
        for layer in LAYERS:
            curve = round_curve(records, view, layer, per_client=False)
            out[(f"{label}, {layer}", "final round")] = curve[-1]
            out[(f"{label}, {layer}", "mean over rounds")] = nanmean(curve)
    for layer in LAYERS:
        curve = round_curve(records, "stability", layer, per_client=True)
        out[(layer, "mean over rounds")] = nanmean(curve)
        lg = round_curve(records, "local_global_iou", layer, per_client=True)
        defined = [(v, r["round"]) for v, r in zip(lg, records) if not math.isnan(v)]
        if defined:
            peak = max(v for v, _ in defined)
            peak_round = min(t for v, t in defined if v == peak)
            out[(layer, "peak")], out[(layer, "peak round")], out[(layer, "drop (peak - final)")] = (
                peak,
                peak_round,
                peak - lg[-1],
            )
            if not math.isnan(lg[-1]):
                out[(layer, "peaks, then declines")] = float(
                    peak_round < records[-1]["round"] and peak - lg[-1] >= DECLINE
                )
    # Collapse: every (client, class, round) cross-evaluation; a circuit collapses when it worked on its own model
    # and scores below 0.1 sufficiency on the global weights. A circuit's last value is that of the last round
    # holding it.
    suff: dict[tuple[str, str], list[float]] = {}
    worked, collapsed, after = 0, 0, set()
    for r in records:
        for pid, per in (r.get("cross_eval") or {}).items():
            for cls, s in per.items():
                if s.get("sufficiency") is not None:
                    suff.setdefault((pid, cls), []).append(s["sufficiency"])
                if s.get("local_verdict") == "working":
                    worked += 1
                    if s.get("sufficiency") is not None and s["sufficiency"] < 0.1:
                        collapsed += 1
                        after.add((pid, cls))
    flat = [v for values in suff.values() for v in values]
    out[("client-class-rounds evaluated", "value")] = len(flat)
    out[(COLLAPSE_RATE, "value")] = collapsed / worked if worked else math.nan
    out[("working on their own model", "value")] = worked
    out[(f"{SUFFICIENCY_BELOW}: share of those evaluated", "value")] = sum(v < 0.1 for v in flat) / len(flat)
    out[("circuits collapsed after working, at least once", "value")] = len(after)
    out[("never recovered", "value")] = sum(suff[k][-1] < 0.1 for k in after)
    out[("global accuracy (final round)", "value")] = records[-1]["global"]["accuracy"]
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@pytest.fixture(scope="module", params=["iid", "noniid"])
def run_dir(request, iid_run, noniid_run) -> Path:
    return {"iid": iid_run, "noniid": noniid_run}[request.param]


# ---------------------------------------------------------------------- figures


def test_fedmi_plot_makes_every_figure_kind(run_dir, tmp_path):
    code, out, err = cli("plot", str(run_dir), "--out", str(tmp_path / "figs"))
    assert code == 0, err
    assert_figures(tmp_path / "figs", RUN_FIGURE_NAMES)
    assert f"wrote {2 * len(RUN_FIGURE_NAMES)} files" in out
    # Circuit graphs use the weights each circuit was found on: the run keeps every round's.
    assert "local weights of round" in (tmp_path / "figs" / "overlay_client_global.svg").read_text()
    assert "this run kept no per-round weights" not in (tmp_path / "figs" / "overlay_rounds.svg").read_text()


def test_figures_draw_the_records_with_gaps_for_undefined_values(run_dir):
    run = load_run(run_dir)
    fig = fig_local_global(run)
    checked = 0
    for ax in fig.axes:
        title = ax.get_title()  # "client 0, conv1" or "client 0, mean over layers"
        if not title.startswith("client"):
            continue
        pid, layer = title.removeprefix("client ").split(", ")
        layer = "mean" if layer == "mean over layers" else layer
        for line in ax.get_lines():
            if not line.get_label().startswith("class "):  # the noise floor and chance level drawn beside the classes
                continue
            cls = line.get_label().removeprefix("class ")
            want = [(r["local_global_iou"].get(pid, {}).get(cls, {}).get(layer)) for r in rounds_json(run_dir)]
            got = list(line.get_ydata())
            assert [None if math.isnan(v) else v for v in got] == want
            checked += 1
    assert checked > 0
    # Under disjoint label skew no class has two holders: inter-client IoU is undefined, drawn as nothing, not as 0.
    if run.config.data.partition == "classes-per-client":
        lines = [line for ax in fig_inter_client(run).axes for line in ax.get_lines()]
        assert lines and all(np.isnan(line.get_ydata()).all() for line in lines)


def undefined_iou(node):
    """The same nesting with every per-layer IoU null (the IoU of two empty circuits)."""
    if isinstance(node, dict):
        return {k: None if k in LAYERS else undefined_iou(v) for k, v in node.items()}
    return node


def test_plot_handles_a_degenerate_run_of_empty_circuits(noniid_run, tmp_path):
    """Every circuit empty, every IoU null (as short runs at 99.5% sparsity give): figures still come out."""
    copy = tmp_path / "degenerate"
    shutil.copytree(noniid_run, copy)
    records = [json.loads(line) for line in (copy / "rounds.jsonl").read_text().splitlines()]
    for r in records:
        for holder in [*r["clients"].values(), r["global"]]:
            holder["circuits"] = {c: {"conv1": [], "conv2": [], "conv3": []} for c in holder["circuits"]}
            holder["circuit_sizes"] = {c: 0 for c in holder["circuit_sizes"]}
        for view in ("inter_client_iou", "class_pair_iou", "local_global_iou", "stability"):
            r[view] = undefined_iou(r[view])
    (copy / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    made = plot_run(load_run(copy), tmp_path / "figs", formats=("png",))
    assert sorted(p.stem for p, _ in made) == sorted(RUN_FIGURE_NAMES) and all(p.stat().st_size > 5000 for p, _ in made)
    assert rq_table(load_run(copy).records)[("Overview", "empty local circuits (final round)", "value")] == sum(
        len(c["circuits"]) for c in records[-1]["clients"].values()
    )


def test_fedmi_plot_compare_sets_seeds_side_by_side(noniid_runs, tmp_path):
    code, out, err = cli("plot", "--compare", *map(str, noniid_runs), "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    assert_figures(tmp_path / "cmp", list(COMPARE_FIGURES))
    assert "side by side by seed (seed = 0, seed = 1)" in out
    # A folder holding a sweep's (here: the seeds') runs stands for them.
    code, out, err = cli("plot", "--compare", str(noniid_runs[0].parent), "--out", str(tmp_path / "cmp2"))
    assert code == 0 and "2 runs" in out, err


def test_compare_groups_seeds_by_the_one_setting_that_differs(noniid_runs, tmp_path):
    """Grouping only: real records under configs that differ in sparsity (as a sweep's would), seeds kept together."""
    seed0, seed1 = (load_run(p) for p in noniid_runs)
    other = Run(
        seed0.path,
        dataclasses.replace(seed0.config, train=dataclasses.replace(seed0.config.train, sparsity=0.99)),
        seed0.records,
    )
    setting, groups = comparison([other, seed1, seed0])
    assert setting == "train.sparsity" and [[r.config.seed for r in g] for g in groups] == [[1, 0], [0]]
    assert [g[0].config.train.sparsity for g in groups] == [0.95, 0.99]
    two = Run(seed0.path, dataclasses.replace(other.config, rounds=7), seed0.records)
    with pytest.raises(RunError, match="differ in 2: rounds, train.sparsity"):
        comparison([seed0, two])
    # A sweep's page: one column per configuration, seeds summarised within it.
    md, _ = write_report([seed0, seed1, other], tmp_path / "sweep.md", command="test")
    page = md.read_text()
    assert "| | train.sparsity = 0.95 (2 seeds) | train.sparsity = 0.99 |" in page.replace("|  |", "| |")
    spread = format_spread(
        ("Overview", "global accuracy (final round)", "value"),
        aggregate([rq_table(seed0.records), rq_table(seed1.records)])[
            ("Overview", "global accuracy (final round)", "value")
        ],
    )
    single = format_value(
        ("Overview", "global accuracy (final round)", "value"), seed0.records[-1].global_model.accuracy
    )
    assert f"| global accuracy (final round) | {spread} | {single} |" in page


# ---------------------------------------------------------------------- report


def test_report_numbers_equal_independent_recomputation(run_dir):
    records = load_run(run_dir).records
    numbers = {(row, col): v for (_, row, col), v in rq_table(records).items()}
    expected = expected_numbers(rounds_json(run_dir))
    assert set(expected) <= set(numbers)
    wrong = {k: (numbers[k], v) for k, v in expected.items() if not same(numbers[k], v)}
    assert not wrong


def test_fedmi_report_writes_markdown_and_html_with_the_numbers(iid_run, tmp_path):
    """One run's page (the non-IID runs' page is made over their seeds below)."""
    run_dir = iid_run
    code, out, err = cli("report", str(run_dir), "--out", str(tmp_path / "rep" / "page.md"))
    assert code == 0, err
    md, html = (tmp_path / "rep" / "page.md").read_text(), (tmp_path / "rep" / "page.html").read_text()
    run = load_run(run_dir)
    total = channel_total([run])
    assert total == 224  # the run's own model, rebuilt from its config: the paper's CNN
    for (table, row, col), value in rq_table(run.records).items():
        if col == "value":
            assert f"| {row} | {format_value((table, row, col), value, total)} |" in md
    assert "## Figures" in md and "<table>" in html and html.count("<img ") == md.count("![")
    for name in RUN_FIGURE_NAMES:  # every figure is on the page and on disk
        assert f"/{name}.png)" in md
    for src in (tmp_path / "rep").glob("figures/*/*.png"):
        assert src.stat().st_size > 5000
    assert "Never recovered" in md and "peaks, then declines" in md
    assert "## What this page answers" in md and "RQ1, inter-client consistency" in md and "**Only 2 rounds**" in md
    assert "of 224 channels |" in md  # circuit sizes for people: "71 of 224 channels", not 71.333
    # The answers in words say what the floor verdicts of the same page say.
    numbers = rq_table(run.records)
    assert "## Answers" in md
    for label, question in (("inter-client IoU", "RQ1: do clients"), ("local-global IoU", "is a client's circuit")):
        below = numbers[("Scale: is a change above the noise floor?", label, "below the floor")]
        (line,) = [line for line in md.splitlines() if question in line]
        assert ("** No:" in line) == (below == 1.0) and ("** Yes" in line) == (below == 0.0), line


def test_answers_follow_the_floor_verdicts_and_say_when_nothing_is_measured():
    from fedmi_flower.views.report import AGAINST, CHANCE, FLOOR, SCALE, answers

    def numbers(value, floor):
        return {
            (SCALE, "inter-client IoU", AGAINST): value,
            (SCALE, "inter-client IoU", FLOOR): floor,
            (SCALE, "inter-client IoU", CHANCE): 0.3,
        }

    assert "** No: their circuits of a class differ" in answers(numbers(0.87, 0.95))[0]
    assert "above chance" in answers(numbers(0.87, 0.95))[0]
    assert "** Yes, as far as the instrument can tell" in answers(numbers(0.96, 0.95))[0]
    assert "Not measured" in answers(numbers(float("nan"), 0.95))[0]
    assert "Not measured: no client circuit worked" in answers({})[-1]


def test_report_over_seeds_gives_mean_std_and_range(noniid_runs, tmp_path):
    code, _, err = cli("report", *map(str, noniid_runs), "--out", str(tmp_path / "seeds.md"))
    assert code == 0, err
    md = (tmp_path / "seeds.md").read_text()
    assert "2 seeds" in md and "compare_cross_eval.png" in md
    tables = [rq_table(load_run(p).records) for p in noniid_runs]
    spreads = aggregate(tables)
    for key in [
        ("Overview", "global accuracy (final round)", "value"),
        ("Cross-evaluation collapse (Fig. 4, 7, 9, 19)", f"{SUFFICIENCY_BELOW}: share of those evaluated", "value"),
    ]:
        values = [t[key] for t in tables]
        s = spreads[key]
        assert (
            same(s.mean, statistics.fmean(values))
            and same(s.std, statistics.stdev(values))
            and (s.min, s.max) == (min(values), max(values))
        )
        assert f"| {key[1]} | {format_spread(key, s)} |" in md
        assert f"{s.mean:.3f} ± {s.std:.3f} [{min(values):.3f}, {max(values):.3f}]" in md


def test_collapse_and_never_recover_follow_their_definitions():
    """Hand-made records: a circuit that collapses and recovers, one that never recovers, one whose client left.

    Every circuit works on its own model, so that sufficiency below 10% on the global weights is a collapse.
    """

    def record(t, cross):
        return {
            "round": t,
            "cross_eval": {
                p: {c: {"sufficiency": s, "specificity": 0.5, "local_verdict": "working"} for c, s in per.items()}
                for p, per in cross.items()
            },
        }

    records = [
        record(1, {"0": {"0": 1.0, "1": 0.5}, "1": {"2": 0.0}}),
        record(2, {"0": {"0": 0.05, "1": 0.0}, "1": {"2": 0.09}}),
        record(3, {"0": {"0": 0.9, "1": 0.02}}),  # client 1 did not report: its last value is round 2's
    ]
    n = {row: v for (_, row, _), v in collapse_numbers([RoundRecord.from_json(r) for r in records]).items()}
    assert (
        n["client-class-rounds evaluated"] == 8
        and n["working on their own model"] == 8
        and n["collapsed after working on their own model"] == 5
        and n[COLLAPSE_RATE] == 5 / 8
        and n[f"{SUFFICIENCY_BELOW}: share of those evaluated"] == 5 / 8  # every circuit worked: the counts agree
    )
    assert (
        n["circuits (client, class)"] == 3
        and n["circuits collapsed after working, at least once"] == 3
        and n["never recovered"] == 2
    )
    assert n["sufficiency (final round mean)"] == (0.9 + 0.02) / 2


def test_spread_formats_undefined_values_and_verdicts():
    key = ("RQ2", "mean", "peaks, then declines")
    s = aggregate([{key: 1.0}, {key: 0.0}, {key: float("nan")}])[key]
    assert (s.n, s.total) == (2, 3) and format_spread(key, s) == "1 of 2 runs (defined in 2 of 3 runs)"
    one = aggregate([{key: 1.0}])[key]
    assert math.isnan(one.std) and format_spread(("t", "r", "c"), one) == "1.000 ± — [1.000, 1.000]"


# ---------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error(tmp_path, iid_run, noniid_run):
    code, _, err = cli("plot", str(tmp_path))
    assert code == 2 and "is not a run directory (no config.toml) and holds none" in err
    (tmp_path / "empty").mkdir()
    shutil.copy(iid_run / "config.toml", tmp_path / "empty" / "config.toml")
    code, _, err = cli("report", str(tmp_path / "empty"))
    assert code == 2 and "has no finished round yet" in err and "fedmi run" in err
    code, _, err = cli("plot", "--compare", str(iid_run), str(noniid_run))
    assert code == 2 and "differ in one setting" in err and "data.partition" in err and "train.sparsity" in err
    code, _, err = cli("plot", "--compare", str(iid_run), str(iid_run))
    assert code == 2 and "have the same settings" in err
    code, _, err = cli("plot", str(iid_run), str(noniid_run))
    assert code == 2 and "--compare" in err
    code, _, err = cli("plot", str(iid_run), "--graph-class", "9", "--out", str(tmp_path / "f"))
    assert code == 2 and "class 9 was not analysed" in err


def test_seeds_are_a_sweep_axis():
    configs = load_sweep("sparsity-ablation", seeds=[0, 1])
    assert [c.name for c in configs[:2]] == [
        "sparsity-ablation-sparsity=0.95-seed=0",
        "sparsity-ablation-sparsity=0.95-seed=1",
    ]
    assert len(configs) == 8 and [c.seed for c in configs] == [0, 1] * 4
    assert parse_seeds("0, 2,5") == [0, 2, 5]
    for bad in ("0,0", "a", "-1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="seed is set both"):
        load_sweep("quickstart", {"seed": 3}, seeds=[0, 1])


def test_seeds_run_into_their_own_folders(noniid_runs):
    for seed, path in enumerate(noniid_runs):
        run = load_run(path)
        assert run.config.seed == seed and run.config.name == f"noniid-2class-seed={seed}" and len(run.records) == 3
    assert load_run(noniid_runs[0]).records[0].clients != load_run(noniid_runs[1]).records[0].clients


def test_report_out_takes_a_folder_or_a_markdown_file_and_refuses_anything_else_before_writing(iid_run, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    code, out, err = cli("report", str(iid_run), "--out", str(existing))
    assert code == 0, err
    assert (existing / "report.md").is_file() and str(existing / "report.md") in out
    code, out, err = cli("report", str(iid_run), "--out", str(tmp_path / "new-folder"))
    assert code == 0 and (tmp_path / "new-folder" / "report.md").is_file() and (tmp_path / "new-folder").is_dir()
    code, out, err = cli("report", str(iid_run), "--out", str(tmp_path / "page.txt"))
    assert code == 2 and "give a folder or a .md file" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "new-folder"]  # no stray figures/


def test_the_page_warns_when_rounds_are_too_few_or_degenerate_circuits_dominate_or_the_control_passes(iid_run):
    from fedmi_flower.views.report import caveats

    run = load_run(iid_run)
    said = " ".join(caveats([run]))
    assert "**Only 2 rounds**" in said and "Degenerate circuits** in the final round: " in said
    last = run.records[-1].summary
    assert ("Most circuits are degenerate" in said) == (last.degenerate_local + last.degenerate_global > (12 + 4) / 2)

    def with_final(degenerate_local: int, degenerate_global: int, control_degenerate: int):
        raw = {
            "round": 1,
            "schema": 2,
            "clients": {str(p): {"circuits": {str(c): {} for c in range(4)}} for p in range(3)},
            "global": {"circuits": {str(c): {} for c in range(4)}},
            "control": {"circuits": {str(c): {} for c in range(4)}},
            "summary": {
                "degenerate_local": degenerate_local,
                "degenerate_global": degenerate_global,
                "control_degenerate": control_degenerate,
            },
        }
        return Run(run.path, run.config, [RoundRecord.from_json({**raw, "round": t}) for t in range(1, 7)])

    healthy = " ".join(caveats([with_final(1, 0, 4)]))
    assert "Only" not in healthy and "1 of 12 local and 0 of 4 global" in healthy
    assert "Most circuits are degenerate" not in healthy and "random-weight control" not in healthy
    sick = " ".join(caveats([with_final(9, 2, 1)]))
    assert "Most circuits are degenerate" in sick and "control found 3 of 4 circuits that are not degenerate" in sick


def test_no_figure_draws_text_outside_itself(iid_run, noniid_runs):
    """Every figure kind, drawn for real runs: a title, label or legend cut off at an edge fails."""
    import matplotlib.pyplot as plt
    from figure_bounds import text_outside

    from fedmi_flower.analysis.frontier import FrontierPoint
    from fedmi_flower.records.series import group_runs
    from fedmi_flower.views.graphs import graph_figures
    from fedmi_flower.views.plots import fig_compare_cross_eval, fig_compare_summary, fig_frontier

    def figures():
        for run_dir in (iid_run, noniid_runs[0]):
            run = load_run(run_dir)
            yield from ((f"{run.name}: {name}", make(run)) for name, make, _ in RUN_FIGURES)
            yield from ((f"{run.name}: {name}", fig) for name, fig, _ in graph_figures(run))
        groups = group_runs([load_run(p) for p in noniid_runs])
        yield "compare_summary", fig_compare_summary(groups, ["a setting"], "seed")
        yield "compare_cross_eval", fig_compare_cross_eval(groups, ["a setting"], "seed")
        points = [
            FrontierPoint(objective, lam, cls, size, 0.9, 0.8, 0.95)
            for objective in ("paper", "faithful")
            for lam, size in ((0.003, 120), (0.01, 70), (0.03, 20))
            for cls in (0, 1, 2, 7)
        ]
        ranking = load_run(iid_run).records[-1].global_model  # the run's own curve drawn over the sweep
        yield "frontier", fig_frontier(points, "Circuit size against faithfulness: a round of a run", ranking)

    outside, drawn = {}, 0
    for name, fig in figures():  # each checked and closed before the next is drawn
        if bad := text_outside(fig):
            outside[name] = bad
        plt.close(fig)
        drawn += 1
    assert drawn == 2 * len(RUN_FIGURE_NAMES) + len(COMPARE_FIGURES) + 1
    assert outside == {}


def test_paper_figures_name_no_run_and_comparison_panels_carry_letters(iid_run, noniid_runs):
    import matplotlib.pyplot as plt

    from fedmi_flower.views.graphs import graph_figures, paper_titles
    from fedmi_flower.views.plots import RUN_FIGURES, fig_compare_cross_eval, fig_compare_summary

    run = load_run(iid_run)
    fig = RUN_FIGURES[0][1](run)
    assert run.name in fig.get_suptitle()  # by default a figure says which run it shows
    with paper_titles():
        figures = [make(run) for _, make, _ in RUN_FIGURES] + [f for _, f, _ in graph_figures(run, None, None)]
        texts = [f.get_suptitle() + " ".join(ax.get_title() for ax in f.axes) for f in figures]
    plt.close("all")  # drawn to be read, not saved: matplotlib warns past 20 open figures
    assert texts and all(run.name not in text for text in texts)
    assert run.name in RUN_FIGURES[0][1](run).get_suptitle()  # and only inside the block
    runs = [load_run(p) for p in noniid_runs]
    setting, groups = comparison(runs)
    labels = [f"group {i}" for i in range(len(groups))]
    summary = fig_compare_summary(groups, labels, setting)
    titles = [ax.get_title() for ax in summary.axes if ax.get_title()]
    assert titles[0].startswith("(a) ") and titles[1].startswith("(b) ")
    cross = fig_compare_cross_eval(groups, labels, setting)
    assert [ax.get_title()[:4] for ax in cross.axes if ax.get_title()][:2] == ["(a) ", "(b) "]
    plt.close("all")


def test_the_frontier_draws_the_runs_own_ranking_and_its_cpr():
    import matplotlib.pyplot as plt

    from fedmi_flower.analysis.frontier import FrontierPoint
    from fedmi_flower.records.round_record import GlobalEntry
    from fedmi_flower.views.plots import fig_frontier

    points = [FrontierPoint("faithful", lam, 3, size, 0.9, 0.8, 0.95) for lam, size in ((0.003, 120), (0.03, 20))]
    ranking = GlobalEntry(
        faithfulness_curve={3: [0.6, 0.8, 1.0], 8: [0.4, float("nan"), 1.0]},
        curve_sizes=[3, 23, 224],
        cpr={3: 0.85, 8: float("nan")},
    )
    fig = fig_frontier(points, "a round", ranking)
    line = next(ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--")
    # Class 8's curve is undefined at one size: it has no area, so neither the line nor the CPR reads it.
    assert list(line.get_xdata()) == [3, 23, 224] and list(line.get_ydata()) == pytest.approx([0.6, 0.8, 1.0])
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "the run's top-k (CPR 0.85, 1 of 2 classes)" in labels
    plt.close(fig)
    without = fig_frontier(points, "a round")
    assert not any(ln.get_linestyle() == "--" for ln in without.axes[0].lines)
    plt.close(without)
