"""Studies and claims: a study's plan, its resumable runner (Flower replaced by a writer of planted runs), run
digests, and claim verdicts on digests whose answers are planted."""

from __future__ import annotations

import io
import json
import math
import shutil
import signal
import threading
import time
import types

import numpy as np
import pytest

import fedmi_flower.apps.study as study_module
from fedmi_flower.apps.study import (
    DONE,
    NEW,
    PARTIAL,
    Study,
    describe_plan,
    draw_figures,
    gpu_shares,
    plan,
    run_state,
    run_study,
    same_settings,
)
from fedmi_flower.cli import main
from fedmi_flower.config import ConfigError, load_experiment
from fedmi_flower.records.digest import DigestError, RunDigest, digest_run, holding_counts, read_digests
from fedmi_flower.records.results import Checkpoint, RunDirectory
from fedmi_flower.records.round_record import CrossEvaluation, RoundRecord, RoundSummary
from fedmi_flower.records.series import settings
from fedmi_flower.views.claims import (
    ARTEFACT,
    BEGIN,
    END,
    FLIPS,
    HOLDS,
    NOT_TESTABLE,
    Claim,
    ClaimError,
    claims_table,
    evaluate,
    replace_table,
    run_value,
)


def digest(experiment, seed, series, objective="faithful", point=None):
    """A digest whose scalars are the given per-round lists."""
    rounds = len(next(iter(series.values())))
    return RunDigest(
        name=f"{experiment}-{objective}-seed={seed}",
        experiment=experiment,
        objective=objective,
        seed=seed,
        point=point or {},
        rounds=list(range(1, rounds + 1)),
        scalars={k: [float(v) for v in vs] for k, vs in series.items()},
    )


def claim(**kw):
    table = dict(id="c", text="a claim", section="3.1", experiment="e", metric="m", test="at-least", value=0.8) | kw
    return Claim.from_table(table)


# ---------------------------------------------------------------------- claims


def test_at_least_reads_the_mean_over_seeds_of_the_chosen_rounds():
    runs = [digest("e", 0, {"m": [0.1, 0.9]}), digest("e", 1, {"m": [0.2, 0.7]})]
    last = evaluate(claim(rounds="last"), runs, "faithful")
    assert last.verdict == HOLDS and last.mean == pytest.approx(0.8) and last.seeds == 2
    assert last.spread == pytest.approx(np.std([0.9, 0.7], ddof=1))
    every = evaluate(claim(rounds="all"), runs, "faithful")  # (0.5 + 0.45) / 2
    assert every.verdict == FLIPS and every.mean == pytest.approx(0.475)
    # The other objective's runs are not these.
    assert evaluate(claim(), runs, "paper").verdict == NOT_TESTABLE


def test_a_ratio_is_the_ratio_of_sums_not_the_mean_of_ratios():
    # Round 1: 1 of 1 preserved; round 2: 0 of 9. Ratio of sums 0.1; mean of ratios would be 0.5.
    run = digest("e", 0, {"kept": [1, 0], "worked": [1, 9]})
    assert run_value(run, "kept / worked", "all") == pytest.approx(0.1)
    assert math.isnan(run_value(digest("e", 0, {"kept": [0, 0], "worked": [0, 0]}), "kept / worked", "all"))


def test_a_shortfall_within_the_noise_floor_is_an_artefact_and_a_guard_discredits_a_hold():
    runs = [digest("e", 0, {"m": [0.83], "floor": [0.85], "spec": [0.9]})]
    assert evaluate(claim(value=0.9), runs, "faithful").verdict == FLIPS
    within = evaluate(claim(value=0.9, floor="floor"), runs, "faithful")
    assert within.verdict == ARTEFACT and "0.85" in within.why
    far = [digest("e", 0, {"m": [0.6], "floor": [0.85]})]
    assert evaluate(claim(value=0.9, floor="floor"), far, "faithful").verdict == FLIPS
    guarded = claim(value=0.5, artefact_if=[{"metric": "spec", "below": 0.95, "why": "indiscriminate"}])
    result = evaluate(guarded, runs, "faithful")
    assert result.verdict == ARTEFACT and "spec 0.90 < 0.95: indiscriminate" in result.why
    assert evaluate(claim(value=0.5, artefact_if=[{"metric": "spec", "below": 0.5}]), runs, "faithful").verdict == HOLDS
    # Discredited numbers cannot refute either: a flip on them is an artefact too.
    refuted = evaluate(claim(value=0.95, artefact_if=[{"metric": "spec", "below": 0.95}]), runs, "faithful")
    assert refuted.verdict == ARTEFACT and "not >= 0.95" in refuted.why


def test_undefined_everywhere_is_not_testable():
    runs = [digest("e", 0, {"m": [math.nan, math.nan]})]
    result = evaluate(claim(), runs, "faithful")
    assert result.verdict == NOT_TESTABLE and "undefined" in result.why


def test_peak_then_decline_on_the_seed_mean_curve():
    peak = [
        digest("e", 0, {"m": [0.3, 0.8, 0.6, 0.5], "f": [0.9] * 4}),
        digest("e", 1, {"m": [0.3, 0.6, 0.7, 0.5], "f": [0.9] * 4}),
    ]
    result = evaluate(claim(test="peak-then-decline"), peak, "faithful")
    # Mean curve 0.3, 0.7, 0.65, 0.5: peak 0.7 in round 2, last 0.5.
    assert result.verdict == HOLDS and result.mean == pytest.approx(0.7) and result.other == pytest.approx(0.5)
    assert "round 2" in result.why
    rising = [digest("e", 0, {"m": [0.3, 0.5, 0.7]})]
    assert evaluate(claim(test="peak-then-decline"), rising, "faithful").verdict == FLIPS
    falling = evaluate(claim(test="peak-then-decline"), [digest("e", 0, {"m": [0.9, 0.8, 0.7, 0.6]})], "faithful")
    assert falling.verdict == FLIPS and "no rise first" in falling.why  # a decline alone is not a peak
    late = evaluate(claim(test="peak-then-decline"), [digest("e", 0, {"m": [0.1, 0.2, 0.3, 0.8, 0.5]})], "faithful")
    assert late.verdict == FLIPS and "not early" in late.why
    # A floor of 0.6: the same circuit found twice agrees 0.6, so a decline of 0.2 is within reach of noise.
    noisy = [digest("e", 0, {"m": [0.3, 0.7, 0.5], "f": [0.6, 0.6, 0.6]})]
    assert evaluate(claim(test="peak-then-decline", floor="f"), noisy, "faithful").verdict == ARTEFACT
    assert evaluate(claim(test="peak-then-decline"), [digest("e", 0, {"m": [0.3, 0.7]})], "faithful").verdict == (
        NOT_TESTABLE
    )


def test_greater_than_compares_another_scalar_or_experiment():
    runs = [digest("e", 0, {"a": [0.9], "b": [0.4]}), digest("x", 0, {"a": [0.88]})]
    assert evaluate(claim(test="greater-than", metric="a", than={"metric": "b"}), runs, "faithful").verdict == HOLDS
    assert evaluate(claim(test="greater-than", metric="b", than={"metric": "a"}), runs, "faithful").verdict == FLIPS
    # Within the tolerance of the other experiment's: no difference, so the claim does not hold.
    other = evaluate(claim(test="greater-than", metric="a", than={"experiment": "x"}), runs, "faithful")
    assert other.verdict == FLIPS and other.other == pytest.approx(0.88)
    assert evaluate(claim(test="less-than", metric="b", than={"metric": "a"}), runs, "faithful").verdict == HOLDS
    assert evaluate(claim(test="less-than", metric="a", than={"metric": "b"}), runs, "faithful").verdict == FLIPS


def test_along_a_sweep_first_point_against_last():
    runs = [
        digest("e", s, {"m": [v + 0.01 * s]}, point={"train.sparsity": p})
        for s in (0, 1)
        for p, v in ((0.8, 0.2), (0.9, 0.5), (0.97, 0.7))
    ]
    up = evaluate(claim(test="increasing", sweep="train.sparsity"), runs, "faithful")
    assert up.verdict == HOLDS and up.seeds == 2 and "0.8 -> 0.97" in up.why
    assert evaluate(claim(test="decreasing", sweep="train.sparsity"), runs, "faithful").verdict == FLIPS
    one = [r for r in runs if r.point["train.sparsity"] == 0.8]
    assert evaluate(claim(test="increasing", sweep="train.sparsity"), one, "faithful").verdict == NOT_TESTABLE


def test_each_seed_is_judged_alone_and_a_comparison_pairs_a_seed_with_itself():
    # The mean 0.803 holds, carried by seed 0: seed 1 alone (0.7) and seed 2 alone (0.75) flip.
    runs = [digest("e", 0, {"m": [0.96]}), digest("e", 1, {"m": [0.7]}), digest("e", 2, {"m": [0.75]})]
    result = evaluate(claim(value=0.8), runs, "faithful")
    assert result.verdict == HOLDS and result.by_seed == {0: HOLDS, 1: FLIPS, 2: FLIPS}
    assert result.seed_tally() == "holds 1, flips 2"
    # Against another experiment: seed 0's 0.6 beats x's seed 0 (0.3) but not x's seed 1 (0.9); the
    # seed means (0.55 against 0.6) and seed 1 alone (0.5 against 0.9) flip.
    paired = [
        digest("e", 0, {"m": [0.6]}),
        digest("e", 1, {"m": [0.5]}),
        digest("x", 0, {"m": [0.3]}),
        digest("x", 1, {"m": [0.9]}),
    ]
    versus = evaluate(claim(test="greater-than", than={"experiment": "x"}), paired, "faithful")
    assert versus.verdict == FLIPS and versus.by_seed == {0: HOLDS, 1: FLIPS}
    # A seed with nothing to read is not testable on its own; one seed alone is the pooled verdict.
    holes = [digest("e", 0, {"m": [0.9]}), digest("e", 1, {"m": [math.nan]})]
    assert evaluate(claim(), holes, "faithful").by_seed == {0: HOLDS, 1: NOT_TESTABLE}
    assert evaluate(claim(), runs[:1], "faithful").seed_tally() == "holds 1"
    assert evaluate(claim(), runs, "paper").seed_tally() == "-"
    # The table shows the tally beside the verdict.
    assert "| **holds** | holds 1, flips 2 |" in claims_table([result])


@pytest.mark.parametrize(
    "change,message",
    [
        ({"colour": "red"}, "unknown key"),
        ({"test": "bigger"}, "not one of"),
        ({"value": None}, "needs a number"),
        ({"rounds": "middle"}, "rounds"),
        ({"test": "greater-than"}, "needs `than"),
        ({"test": "increasing"}, "needs `sweep"),
        ({"artefact_if": [{"metric": "s"}]}, "artefact_if"),
        ({"test": "at-most", "floor": "f"}, "a floor applies to at-least"),
        ({"test": "peak-then-decline", "rounds": "late"}, "reads every round"),
        ({"test": "greater-than", "than": {"metrc": "m"}}, "`than` may set"),
    ],
)
def test_a_malformed_claim_names_the_key(change, message):
    table = dict(id="c", text="t", section="s", experiment="e", metric="m", test="at-least", value=0.5) | change
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ClaimError, match=message):
        Claim.from_table(table)


def test_the_generated_block_is_replaced_and_nothing_else():
    text = f"# Title\n\nprose before\n\n{BEGIN}\nold table\n{END}\n\nprose after\n"
    table = claims_table([evaluate(claim(), [digest("e", 0, {"m": [0.9]})], "faithful")])
    new = replace_table(text, table)
    assert new.startswith("# Title\n\nprose before\n\n") and new.endswith("\n\nprose after\n")
    assert "old table" not in new and "**holds**" in new and replace_table(new, table) == new
    with pytest.raises(ClaimError, match="no generated block"):
        replace_table("no markers", table)


# ---------------------------------------------------------------------- digests


def test_holding_counts_split_shared_from_distinct_classes():
    working, collapsed = "working", "collapsed"
    record = RoundRecord(
        round=1,
        cross_eval={
            0: {
                0: CrossEvaluation(verdict=working, local_verdict=working),
                1: CrossEvaluation(verdict=collapsed, local_verdict=working),
            },
            1: {
                0: CrossEvaluation(verdict=collapsed, local_verdict=working),
                2: CrossEvaluation(verdict=working, local_verdict="weakened"),  # never worked: not counted
            },
            2: {3: CrossEvaluation(verdict=working, local_verdict=working)},
        },
    )
    # Class 0 is held by clients 0 and 1 (shared); 1, 2 and 3 by one client each.
    assert holding_counts(record) == {
        "shared_working_locally": 2,
        "shared_preserved": 1,
        "distinct_working_locally": 2,
        "distinct_preserved": 1,
    }


def test_a_digest_reads_back_and_bad_ones_name_the_fix(tmp_path):
    run = digest("e", 3, {"m": [0.5, math.nan]}, point={"train.sparsity": 0.9})
    run.seconds = 12.5
    again = RunDigest.read(run.write(tmp_path / "d.json"))
    assert again.point == {"train.sparsity": 0.9} and again.seed == 3 and again.seconds == 12.5
    assert again.scalars["m"][0] == 0.5 and math.isnan(again.scalars["m"][1])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DigestError, match="not valid JSON"):
        RunDigest.read(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(DigestError, match="version 99"):
        RunDigest.read(tmp_path / "old.json")
    with pytest.raises(DigestError, match="no scalar 'n'"):
        again.series("n")


# ---------------------------------------------------------------------- the study


STUDY = """
description = "two objectives, two seeds, one sweep"
seeds = [0, 1]
objectives = ["paper", "faithful"]
[short]
rounds = 2
"train.sparsity" = 0.9
[[experiment]]
name = "smoke"
short_minutes = 1.5
[[experiment]]
name = "sparsity-ablation"
objectives = ["paper"]
short_sweep = { "train.sparsity" = [0.8, 0.97] }
short_minutes = 2.0
[[claim]]
id = "acc"
text = "accuracy above a half"
section = "3.1"
experiment = "smoke"
metric = "global_accuracy"
rounds = "last"
test = "at-least"
value = 0.5
[[claim]]
id = "sweep"
text = "accuracy rises with sparsity"
section = "3.3"
experiment = "sparsity-ablation"
metric = "global_accuracy"
test = "increasing"
sweep = "train.sparsity"
"""


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(STUDY)
    return Study.load(str(path))


def planted_accuracy(config, server_round):
    """What the fake runtime's global model scores: known, and different for every run the study makes."""
    faithful = config.discovery.objective == "faithful"
    return 0.1 + 0.2 * faithful + 0.06 * config.seed + 0.5 * config.train.sparsity * server_round / config.rounds


def fake_runtime(calls, fail=(), stop_after=None):
    """Writes a run directory as `fedmi run` would, with planted summaries; ``fail``: folders that fail,
    ``stop_after``: rounds after which a run is interrupted (a partial run)."""

    def run_one(run, folder, resume):
        calls.append((folder.name, resume))
        if folder.name in fail:
            raise RuntimeError(f"the run of {folder.name} did not complete")
        directory = RunDirectory(folder).create(exist_ok=resume)
        if resume:  # as the ServerApp does: a run resumes with exactly the config it saved
            assert directory.read_config() == run.config, "resumed with another config than the folder's"
        directory.write_config(run.config)
        done = directory.read_checkpoint().server_round if resume else 0
        last = run.config.rounds if stop_after is None else min(stop_after, run.config.rounds)
        for t in range(done + 1, last + 1):
            accuracy = planted_accuracy(run.config, t)
            directory.append_round(RoundRecord(round=t, summary=RoundSummary(clients=2, global_accuracy=accuracy)))
            directory.write_checkpoint(Checkpoint(server_round=t, weights=[np.zeros(2)], seed=run.config.seed))

    return run_one


def test_the_plan_is_seed_major_with_the_shorter_settings_and_the_sweep_kept(study):
    runs = plan(study, short=True)
    assert [r.folder for r in runs[:4]] == [
        "smoke-paper-seed=0",
        "smoke-faithful-seed=0",
        "sparsity-ablation-sparsity=0.8-paper-seed=0",
        "sparsity-ablation-sparsity=0.97-paper-seed=0",
    ]
    assert len(runs) == 8 and len({r.folder for r in runs}) == 8
    assert all(r.config.rounds == 2 for r in runs)
    # The study's common train.sparsity = 0.9 does not fix the sparsity the ablation sweeps.
    assert [r.config.train.sparsity for r in runs[:4]] == [0.9, 0.9, 0.8, 0.97]
    assert runs[2].point == {"train.sparsity": 0.8} and runs[0].point == {}
    assert [r.minutes for r in runs[:3]] == [1.5, 1.5, 2.0]
    full = plan(study, short=False)
    assert full[0].config.rounds != 2 and {r.config.train.sparsity for r in full if r.point} == {
        0.95,
        0.97,
        0.99,
        0.995,
    }


def test_the_studys_settings_apply_to_every_run_short_or_not_under_its_other_tables(tmp_path):
    """[settings] sets every run; [short], an entry's settings and --set override it, and a sweep is never fixed."""
    text = STUDY.replace(
        "[short]\n",
        '[settings]\n"analysis.cka" = false\n"analysis.stitching" = false\n'
        '"train.sparsity" = 0.5\n"rounds" = 7\n[short]\n',
        1,
    ).replace('name = "smoke"\n', 'name = "smoke"\nsettings = { "analysis.stitching" = true }\n', 1)
    path = tmp_path / "settings.toml"
    path.write_text(text)
    study = Study.load(str(path))
    for short in (True, False):
        runs = plan(study, short=short, overrides={"analysis.cka": True} if not short else None)
        smoke = [r for r in runs if r.entry.name == "smoke"]
        ablation = [r for r in runs if r.entry.name == "sparsity-ablation"]
        assert all(r.config.analysis.cka is (not short) for r in runs)  # --set over [settings]
        assert all(r.config.analysis.stitching for r in smoke) and not any(
            r.config.analysis.stitching for r in ablation
        )
        assert all(r.config.train.sparsity == (0.9 if short else 0.5) for r in smoke)  # [short] over [settings]
        assert all(r.config.rounds == (2 if short else 7) for r in runs)
        assert len({r.config.train.sparsity for r in ablation}) > 1  # the swept key stays the sweep's


def test_a_study_runs_what_is_not_done_and_judges_its_claims(study, tmp_path):
    out = tmp_path / "out"
    runs = plan(study, short=True)
    calls = []
    failed = run_study(study, runs, out, fake_runtime(calls, fail={"smoke-faithful-seed=1"}), io.StringIO())
    assert failed == ["smoke-faithful-seed=1"] and len(calls) == 8
    assert [run_state(r, out) for r in runs].count(DONE) == 7
    # A second call runs the failed one only; a third, nothing.
    again = []
    assert run_study(study, runs, out, fake_runtime(again), io.StringIO()) == []
    assert again == [("smoke-faithful-seed=1", False)]
    assert run_study(study, runs, out, fake_runtime(third := []), io.StringIO()) == [] and third == []
    digests = read_digests([out / "digests"])
    assert len(digests) == 8
    table = (out / "claims.md").read_text()
    assert "8 of 8 runs done" in table
    # Last-round accuracy = 0.1 + 0.2 (faithful) + 0.06 seed + 0.45: paper 0.58 (seeds 0.55, 0.61), faithful 0.78.
    rows = [line for line in table.splitlines() if line.startswith("| accuracy above")]
    assert "| paper | 0.58 ± 0.04 (2) | **holds** |" in rows[0] and "| faithful | 0.78 ± 0.04 (2) |" in rows[1]
    sweep = next(line for line in table.splitlines() if line.startswith("| accuracy rises"))
    # Mean over both rounds 0.1 + 0.375 x sparsity (+ 0.03 for the seeds): 0.43 at 0.8, 0.49 at 0.97.
    assert "| paper | 0.49 ± 0.04 (2) | **holds** | holds 2 | train.sparsity 0.8 -> 0.97: 0.43 / 0.49 |" in sweep
    # The study runs the ablation with the paper objective only: no faithful row for it, two for the smoke claim.
    assert len(rows) == 2 and sum(line.startswith("| accuracy rises") for line in table.splitlines()) == 1


def test_the_time_to_go_follows_this_calls_pace_once_a_run_has_finished(study, tmp_path, monkeypatch):
    # The measure says 1.5 min a smoke run and 2 min a sweep point (14 min in all); on this "machine"
    # every run takes 1 min of a clock the fake runtime moves.
    clock = [0.0]
    monkeypatch.setattr(study_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    runtime = fake_runtime(calls := [])

    def one_minute_a_run(run, folder, resume):
        runtime(run, folder, resume)
        clock[0] += 60.0

    echo = io.StringIO()
    runs = plan(study, short=True)
    assert [r.minutes for r in runs[:4]] == [1.5, 1.5, 2.0, 2.0]
    assert run_study(study, runs, tmp_path / "out", one_minute_a_run, echo) == [] and len(calls) == 8
    etas = [line.split(" so far, ")[1].split(";")[0] for line in echo.getvalue().splitlines() if "to go" in line]
    # Before any run: the measure. After the first (1 min for 1.5 expected): the 12.5 min left x 2/3 (the
    # measure alone would say 12); after two (2 for 3): 11 x 2/3; after seven (7 for 12): the last 2 x 7/12.
    assert etas[0] == "~14 min to go"
    assert etas[1:3] == ["~8 min to go at this call's pace", "~7 min to go at this call's pace"]
    assert etas[7] == "~1 min to go at this call's pace" and len(etas) == 8


def test_an_interrupted_run_is_resumed_and_the_plan_says_what_is_left(study, tmp_path):
    out = tmp_path / "out"
    runs = plan(study, short=True, seeds=[0])
    run_study(study, runs, out, fake_runtime([], stop_after=1), io.StringIO())
    assert {run_state(r, out) for r in runs} == {PARTIAL}
    lines = describe_plan(study, runs, out, short=True)
    assert "interrupted" in lines[1] and lines[-1].startswith("0 of 4 done; to run: 4")
    calls = []
    run_study(study, runs, out, fake_runtime(calls), io.StringIO())
    assert all(resume for _, resume in calls) and {run_state(r, out) for r in runs} == {DONE}
    # Continued, not restarted: rounds 1 and 2 once each.
    assert [r.round for r in RunDirectory(out / runs[0].folder).read_rounds()] == [1, 2]
    assert digest_run(out / runs[0].folder, "smoke").rounds == [1, 2]
    assert describe_plan(study, runs, out, short=True)[-1].startswith("4 of 4 done; to run: 0")


def test_a_folder_of_other_settings_or_not_a_run_is_refused(study, tmp_path):
    out = tmp_path / "out"
    runs = plan(study, short=True, seeds=[0])
    assert run_state(runs[0], out) == NEW
    run_study(study, runs[:1], out, fake_runtime([]), io.StringIO())
    changed = plan(Study.load(str(study.path)), short=False, seeds=[0])[0]  # same folder name, other settings
    with pytest.raises(ConfigError, match="other settings"):
        run_state(changed, out)
    (out / runs[1].folder).mkdir(parents=True)
    (out / runs[1].folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a fedmi run"):
        run_state(runs[1], out)


@pytest.mark.parametrize(
    "text,message",
    [
        ("seeds = [0, 0]\n[[experiment]]\nname = 'smoke'", "distinct"),
        ("objectives = ['best']\n[[experiment]]\nname = 'smoke'", "objectives"),
        ("colour = 1\n[[experiment]]\nname = 'smoke'", "unknown key"),
        ("seeds = [0]", "at least one"),
        (
            "[[experiment]]\nname = 'smoke'\n[[claim]]\nid='x'\ntext='t'\nsection='s'\nexperiment='iid'\n"
            "metric='m'\ntest='at-most'\nvalue=1",
            "does not run: iid",
        ),
        (
            "[[experiment]]\nname = 'smoke'\n[[claim]]\nid='x'\ntext='t'\nsection='s'\nexperiment='smoke'\n"
            "metric='global_acuracy'\ntest='at-most'\nvalue=1",
            "did you mean 'global_accuracy'",
        ),
        (
            "[[experiment]]\nname = 'smoke'\n[[claim]]\nid='x'\ntext='t'\nsection='s'\nexperiment='smoke'\n"
            "metric='global_accuracy'\ntest='greater-than'\nthan={experiment='iid'}",
            "runs no experiment 'iid'",
        ),
    ],
)
def test_a_malformed_study_names_the_problem(tmp_path, text, message):
    """Also what a claim names: a misspelt scalar would read as a verdict, hours into a study."""
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Study.load(str(path))


def test_the_bundled_paper_study_plans_every_experiment_of_the_paper(capsys):
    study = Study.load("paper")
    assert {e.name for e in study.entries} == {
        "iid",
        "noniid-1class",
        "noniid-2class",
        "noniid-3class",
        "shared-class",
        "sparsity-ablation",
    }
    assert study.objectives == ("paper", "faithful") and study.seeds == (0, 1, 2)
    short = plan(study, short=True)
    assert all(r.minutes is not None for r in short) and all(r.config.rounds >= 3 for r in short)
    # The analysis steps no claim reads are off at both settings; the 3-class runs keep counterfactual aggregation.
    for runs in (short, plan(study, short=False)):
        assert not any(r.config.analysis.second_method or r.config.analysis.cka for r in runs)
        assert all(r.config.analysis.counterfactual == (r.entry.name == "noniid-3class") for r in runs)
    assert main(["study", "paper", "--short", "--dry-run", "--out", "/nonexistent/study"]) == 0
    printed = capsys.readouterr().out
    assert f"0 of {len(short)} done; to run: {len(short)}" in printed and "iid-faithful-seed=2" in printed


def test_the_bundled_skew_law_study_sweeps_alpha_and_its_claims_read_the_sweep():
    """Its full plan is the page's sweep (5 alphas x 5 seeds), --short three alphas; planted digests in which
    preservation rises with alpha make its claim hold, and the reverse flip it."""
    study = Study.load("skew-law")
    full, short = plan(study, short=False), plan(study, short=True)
    assert sorted({r.point["data.alpha"] for r in full}) == [0.05, 0.1, 0.3, 1.0, 10.0] and len(full) == 25
    assert sorted({r.point["data.alpha"] for r in short}) == [0.05, 0.3, 10.0] and len(short) == 15
    assert all(r.objective == "faithful" and r.config.clients == 5 for r in full)
    (claim_,) = [c for c in study.claims if c.id == "skew-preservation-falls"]

    def digests(preserved_by_alpha: dict[float, int]) -> list[RunDigest]:
        series = lambda p: {"cross_preserved": [5, p], "cross_working_locally": [10, 10]}  # the last round counts
        return [
            digest("skew-law", seed, series(p), point={"data.alpha": a})
            for a, p in preserved_by_alpha.items()
            for seed in (0, 1)
        ]

    assert evaluate(claim_, digests({0.05: 1, 0.3: 5, 10.0: 9}), "faithful").verdict == HOLDS
    assert evaluate(claim_, digests({0.05: 9, 0.3: 5, 10.0: 1}), "faithful").verdict == FLIPS


def test_fedmi_claims_updates_a_page(study, tmp_path, capsys):
    out = tmp_path / "out"
    run_study(study, plan(study, short=True), out, fake_runtime([]), io.StringIO())
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{BEGIN}\n{END}\noutro\n")
    assert main(["claims", str(study.path), str(out / "digests"), "--update", str(page)]) == 0
    assert "| accuracy above a half |" in page.read_text() and page.read_text().endswith(f"{END}\noutro\n")
    assert main(["claims", str(study.path), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_study_continues_from_digests_alone_when_their_settings_are_the_runs(study, tmp_path):
    first = tmp_path / "first"
    runs = plan(study, short=True, seeds=[0])
    run_study(study, runs, first, fake_runtime([]), io.StringIO())
    # A digest of other settings beside a finished run is made again from the run.
    wrong = RunDigest.read(first / "digests" / f"{runs[0].folder}.json")
    wrong.settings = {"rounds": 99}
    wrong.write(first / "digests" / f"{runs[0].folder}.json")
    run_study(study, runs, first, fake_runtime([]), io.StringIO())
    assert RunDigest.read(first / "digests" / f"{runs[0].folder}.json").settings["rounds"] == 2
    # Another machine, or a later checkout: the run folders are gone, the digests came along.
    second = tmp_path / "second"
    shutil.copytree(first / "digests", second / "digests")
    assert {run_state(r, second) for r in runs} == {DONE}
    calls = []
    run_study(study, runs, second, fake_runtime(calls), io.StringIO())
    assert calls == [] and "4 of 4 runs done" in (second / "claims.md").read_text()
    # A digest of other settings (the study's shorter settings changed since) is not this run's.
    stale = RunDigest.read(second / "digests" / f"{runs[0].folder}.json")
    stale.settings = {**stale.settings, "rounds": 9}
    stale.write(second / "digests" / f"{runs[0].folder}.json")
    assert run_state(runs[0], second) == NEW and run_state(runs[1], second) == DONE


def test_runs_go_several_at_once_and_share_a_gpu(study, tmp_path):
    out = tmp_path / "out"
    runs = plan(study, short=True)
    running, most, lock = set(), [0], threading.Lock()
    write = fake_runtime([])

    def run_one(run, folder, resume):
        with lock:
            running.add(run.folder)
            most[0] = max(most[0], len(running))
        time.sleep(0.2)  # long enough for the other worker to start its own
        write(run, folder, resume)
        with lock:
            running.discard(run.folder)

    failed = run_study(study, runs, out, run_one, io.StringIO(), parallel=3)
    assert failed == [] and most[0] == 3 and {run_state(r, out) for r in runs} == {DONE}
    assert len(read_digests([out / "digests"])) == len(runs)
    # Every digest is whole, though three threads wrote them: the table covers all eight runs.
    assert "8 of 8 runs done" in (out / "claims.md").read_text()
    with pytest.raises(ConfigError, match="at least one"):
        run_study(study, runs, out, run_one, io.StringIO(), parallel=0)
    # Clients that ask for a GPU get a share small enough for every client of three concurrent runs.
    gpu = plan(study, short=True)
    gpu[0].config.resources.client_gpus = 1.0
    gpu_shares(gpu, parallel=3)
    assert gpu[0].config.resources.client_gpus == pytest.approx(1 / (3 * gpu[0].config.clients))
    assert gpu[1].config.resources.client_gpus == 0.0  # a CPU run stays one


def test_an_interrupt_stops_a_parallel_study_without_waiting_for_its_queue(study, tmp_path):
    started = []
    release = threading.Event()

    def run_one(run, folder, resume):
        started.append(run.folder)
        if len(started) == 1:
            # Ctrl-C, as the kernel may deliver it: to a run's thread, once the study waits on its runs. Python
            # raises it in the main thread, which must run Python to see it: an untimed wait sat until runs ended.
            time.sleep(0.5)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        release.wait(30)  # the running ones hang until the test lets them go (a study that waited for them would too)

    # Ctrl-C raises KeyboardInterrupt, as `fedmi study` arranges: an earlier test's in-process Flower run may have
    # left its own SIGINT handler behind (CI failed twice on that, waiting 30 s for a KeyboardInterrupt never raised).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(study, plan(study, short=True), tmp_path / "out", run_one, io.StringIO(), parallel=2)
        assert time.monotonic() - began < 20  # it returned while its runs still hung: it did not wait for them
        time.sleep(0.5)
        assert len(started) <= 2  # at most the two running when Ctrl-C came; the queue never starts
    finally:
        release.set()
        signal.signal(signal.SIGINT, previous)


def test_set_applies_to_every_run_and_the_study_keeps_seed_and_objective(study, capsys):
    runs = plan(study, short=True, overrides={"resources.client_gpus": 0.5, "train.epochs": 3})
    assert {r.config.resources.client_gpus for r in runs} == {0.5} and {r.config.train.epochs for r in runs} == {3}
    assert main(["study", str(study.path), "--dry-run", "--set", "seed=4", "--out", "/nonexistent/x"]) == 2
    assert "sets seed and discovery.objective itself" in capsys.readouterr().err


def test_a_study_draws_its_figures_from_the_lowest_seed_with_every_run_here(study, tmp_path):
    path = tmp_path / "figured.toml"
    path.write_text(STUDY + '\n[[figure]]\nnumber = 1\nexperiment = "smoke"\nplot = "global_accuracy"\n')
    figured = Study.load(str(path))
    out = tmp_path / "out"
    runs = plan(figured, short=True)
    run_study(figured, runs, out, fake_runtime([]), io.StringIO())
    shutil.rmtree(out / "smoke-faithful-seed=0")  # the faithful objective's seed 0 is a digest only now
    made, skipped = draw_figures(figured, runs, out)
    assert sorted(p.name for p in made) == [
        "fig01-faithful.png",
        "fig01-faithful.svg",
        "fig01-paper.png",
        "fig01-paper.svg",
    ]
    assert skipped == []
    shutil.rmtree(out / "smoke-faithful-seed=1")
    _, skipped = draw_figures(figured, runs, out)
    assert skipped == ["fig01-faithful: no seed of smoke (faithful) has all its runs here"]
    bad = tmp_path / "bad.toml"
    bad.write_text(STUDY + '\n[[figure]]\nnumber = 1\nexperiment = "smoke"\nplot = "pie_chart"\n')
    with pytest.raises(ConfigError, match="plot 'pie_chart' is not one of"):
        Study.load(str(bad))


def test_a_digest_made_before_a_setting_existed_is_still_its_runs():
    """A digest's settings lack the keys the config gained since (their defaults keep the earlier behaviour): the
    run is still done; a value that differs, or a digest without settings, is not the run's."""
    config = load_experiment("iid")
    recorded = settings(config)
    del recorded["train.disjoint"], recorded["train.disjoint_lambda"]  # made before disjoint training existed
    assert same_settings(recorded, config)
    assert not same_settings({**recorded, "train.epochs": config.train.epochs + 1}, config)
    assert not same_settings({**recorded, "train.disjoint": "budget", "train.disjoint_lambda": 1.0}, config)
    assert not same_settings(None, config)


VARIANTS = """
description = "one experiment as two variants"
seeds = [0, 1]
objectives = ["faithful"]
[short]
rounds = 2
"train.sparsity" = 0.9
[[experiment]]
name = "smoke"
[[experiment]]
name = "smoke"
label = "smoke-half"
settings = { "train.sparsity" = 0.5, "strategy.name" = "fedprox" }
[[claim]]
id = "less"
text = "the half-sparse variant scores less"
section = "x"
experiment = "smoke-half"
metric = "global_accuracy"
rounds = "last"
test = "less-than"
than = { experiment = "smoke" }
"""


def test_one_experiment_runs_as_variants_each_with_its_label_and_settings(tmp_path):
    path = tmp_path / "variants.toml"
    path.write_text(VARIANTS)
    study = Study.load(str(path))
    runs = plan(study, short=True)
    assert [r.folder for r in runs] == [
        "smoke-faithful-seed=0",
        "smoke-half-faithful-seed=0",
        "smoke-faithful-seed=1",
        "smoke-half-faithful-seed=1",
    ]
    # The variant's settings beat the study's common short ones; the plain entry keeps those.
    assert [(r.config.train.sparsity, r.config.strategy.name) for r in runs[:2]] == [(0.9, "fedavg"), (0.5, "fedprox")]
    out = tmp_path / "out"
    assert run_study(study, runs, out, fake_runtime([]), io.StringIO()) == []
    assert {d.experiment for d in read_digests([out / "digests"])} == {"smoke", "smoke-half"}
    # Last-round accuracy 0.3 + 0.06 seed + 0.5 x sparsity: 0.58 for the variant against 0.78.
    row = next(line for line in (out / "claims.md").read_text().splitlines() if line.startswith("| the half-sparse"))
    assert "**holds** | holds 2 | 0.58 against 0.78 (global_accuracy)" in row
    path.write_text(VARIANTS.replace('label = "smoke-half"\n', ""))
    with pytest.raises(ConfigError, match="give variants of one experiment each its own label"):
        Study.load(str(path))
    path.write_text(VARIANTS.replace('label = "smoke-half"', 'label = "../elsewhere"'))
    with pytest.raises(ConfigError, match="label '../elsewhere' names the entry's run folders"):
        Study.load(str(path))


def test_a_variant_is_named_by_its_label_even_where_its_experiment_file_names_itself(tmp_path):
    """The run folder is the label and the sweep point, not a prefix edit of the file's own name; two entries
    whose runs would share a folder are refused."""
    (tmp_path / "abl.toml").write_text('name = "mine"\nrounds = 2\n[sweep]\n"train.sparsity" = [0.9, 0.95]\n')
    text = (
        'objectives = ["faithful"]\n[[experiment]]\nname = "{0}"\n'
        '[[experiment]]\nname = "{0}"\nlabel = "prox"\nsettings = {{ "strategy.name" = "fedprox" }}\n'
    ).format(tmp_path / "abl.toml")
    path = tmp_path / "s.toml"
    path.write_text(text)
    folders = [r.folder for r in plan(Study.load(str(path)), short=False)]
    assert folders == [
        "mine-sparsity=0.9-faithful-seed=0",
        "mine-sparsity=0.95-faithful-seed=0",
        "prox-sparsity=0.9-faithful-seed=0",
        "prox-sparsity=0.95-faithful-seed=0",
    ]
    path.write_text(text.replace('label = "prox"', 'label = "mine"'))
    with pytest.raises(ConfigError, match="share the folder mine-sparsity=0.9-faithful-seed=0"):
        plan(Study.load(str(path)), short=False)


def test_the_bundled_baselines_study_runs_each_method_on_each_split_with_only_its_own_setting():
    study = Study.load("baselines")
    runs = plan(study, short=True, seeds=[0])
    assert len(runs) == 15 and [r.folder for r in runs[:5]] == [
        f"{m}-3class-faithful-seed=0" for m in ("fedavg", "fedprox", "fedrs", "fedbabu", "cure")
    ]
    by_label = {r.entry.label: r.config for r in runs}

    def method(c):
        return (c.strategy.name, c.train.restricted_softmax, c.train.frozen_head, c.train.disjoint)

    for split in ("3class", "2class", "dir0.1"):
        base = by_label[f"fedavg-{split}"]
        assert method(base) == ("fedavg", 1.0, False, "off")
        assert method(by_label[f"fedprox-{split}"]) == ("fedprox", 1.0, False, "off")
        assert method(by_label[f"fedrs-{split}"]) == ("fedavg", 0.5, False, "off")
        assert method(by_label[f"fedbabu-{split}"]) == ("fedavg", 1.0, True, "off")
        assert method(by_label[f"cure-{split}"]) == ("fedavg", 1.0, False, "circuits")
        # Everything but the method is the split's: the comparison is of methods alone.
        for m in ("fedprox", "fedrs", "fedbabu", "cure"):
            other = by_label[f"{m}-{split}"]
            assert (other.data, other.rounds, other.clients, other.discovery) == (
                base.data,
                base.rounds,
                base.clients,
                base.discovery,
            )
    assert by_label["fedavg-dir0.1"].data.partition == "dirichlet" and by_label["fedavg-dir0.1"].data.alpha == 0.1
    assert all(c.than.get("experiment", "").startswith("fedavg-") for c in study.claims)
