"""The typed round record.

What is written reads back the same, and a record of an unknown version is refused clearly.
"""

from __future__ import annotations

import json
import math

import pytest
from runs import rounds_json

from fedmi_flower.records.results import RunDirectory, json_safe
from fedmi_flower.records.round_record import (
    SCHEMA_VERSION,
    ClientEntry,
    CrossEvaluation,
    IoU,
    NoiseFloor,
    RecordError,
    Rejection,
    RoundRecord,
    RoundSummary,
    View,
    ViewSummary,
)
from fedmi_flower.records.series import RunError, load_run


def a_record(t: int) -> RoundRecord:
    """A record whose fields all differ, with an undefined IoU (NaN) and a stability gap."""
    iou = IoU(
        {"conv1": 0.5, "conv2": math.nan, "conv3": 1.0, "mean": 0.75},
        chance={"conv1": 0.1, "conv2": 0.2, "conv3": 0.3, "mean": 0.2},
    )
    return RoundRecord(
        round=t,
        classes=[0, 7],
        clients={
            2: ClientEntry(
                num_examples=120, circuits={7: {"conv1": [1, 4], "conv2": [], "conv3": [9]}}, circuit_sizes={7: 3}
            )
        },
        noise_floor=NoiseFloor(seed={7: iou}, source=None, clients={2: {7: IoU({"mean": 0.9})}}),
        inter_client_iou={7: IoU(iou.layers, iou.chance, pairs=1, clients=[1, 2])},
        local_global_iou={2: {7: iou}},
        stability_gap={2: {7: IoU(iou.layers, iou.chance, previous_round=t - 3)}},
        cross_eval={2: {7: CrossEvaluation(0.9, 0.8, 0.1, 30, verdict="working", local_verdict="weakened")}},
        summary=RoundSummary(clients=1, inter_client_iou=ViewSummary(mean=0.75, pairs=1), stability_gaps=1),
        rejected=[Rejection("node-9", "num_examples = -50 must be a positive integer", False)],
    )


def test_a_record_reads_back_as_written(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_round(a_record(4))
    run.append_round(RoundRecord(round=5, analysis_error="Traceback: boom"))
    (raw4, raw5) = rounds_json(tmp_path)
    assert raw4["schema"] == SCHEMA_VERSION and raw4["inter_client_iou"]["7"]["conv2"] is None
    assert raw4["stability_gap"]["2"]["7"]["previous_round"] == 1 and raw4["noise_floor"]["clients"]["2"]["7"] == {
        "mean": 0.9
    }
    assert "clients" not in raw5 and raw5["analysis_error"] == "Traceback: boom"
    back4, back5 = run.read_rounds()
    assert json_safe(back4.to_json()) == raw4 and json_safe(back5.to_json()) == raw5
    assert back4.analysed and not back5.analysed
    inter = back4.summary.view(View.INTER_CLIENT_IOU)
    assert (inter.mean, inter.pairs, inter.floor_covers) == (0.75, 1, 0) and math.isnan(inter.chance)
    assert math.isnan(back4.inter_client_iou[7].layer("conv2")) and back4.clients[2].circuits[7]["conv1"] == [1, 4]


def test_the_summary_groups_each_view_and_reads_the_flat_summaries_of_schema_3():
    """Schema 4 writes a view's numbers as one object; a schema-3 record's flat ``<view>_*`` and floor names read
    into the same views, and :meth:`RoundSummary.scalars` gives those flat names back (``summary.csv``'s)."""
    summary = RoundSummary(clients=3, global_accuracy=0.9, stability_gaps=2)
    summary.set_view(View.INTER_CLIENT_IOU, mean=0.4, pairs=3, chance=0.1, nondegenerate=0.6, nondegenerate_pairs=2)
    summary.set_view(View.INTER_CLIENT_IOU, entries=2, floor=0.8, floor_covers=1, floor_against=0.7)
    summary.set_view(View.STABILITY, mean=0.5, pairs=4, floor=0.85, floor_covers=3, entries=4, floor_against=0.45)
    summary.aligned_local_global_iou = ViewSummary(mean=0.9, pairs=5, chance=0.2)
    written = json_safe(summary.to_json())
    assert written["inter_client_iou"]["floor"] == 0.8 and written["stability"]["floor_covers"] == 3
    assert written["clients"] == 3 and "seed_floor" not in written  # grouped: no flat floor names in schema 4
    flat = json_safe(summary.scalars())
    assert flat["inter_client_iou"] == 0.4 and flat["seed_floor"] == 0.8 and flat["seed_floor_against"] == 0.7
    assert flat["client_seed_floor_covers"] == 3 and flat["stability_entries"] == 4
    assert flat["aligned_local_global_iou_pairs"] == 5 and "aligned_local_global_iou_entries" not in flat
    assert "class_pair_iou_entries" not in flat and flat["class_pair_iou"] is None  # no floor: none of its parts
    for back in (RoundSummary.from_json(written, 4), RoundSummary.from_json(flat, 3)):
        assert json_safe(back.scalars()) == flat
        assert back.against_floor(View.INTER_CLIENT_IOU) == 0.7 and back.against_floor(View.STABILITY) == 0.45
        assert math.isnan(back.against_floor(View.CLASS_PAIR_IOU))
    # A record written before floors were taken per view (nothing covered): the verdict reads the plain mean.
    old = RoundSummary.from_json({"local_global_iou": 0.3, "source_floor": 0.9}, 2)
    assert old.local_global_iou.floor == 0.9 and old.against_floor(View.LOCAL_GLOBAL_IOU) == 0.3


def test_a_record_without_a_version_reads_as_version_1(tmp_path):
    raw = json_safe(a_record(1).to_json())
    del raw["schema"], raw["class_pair_iou"], raw["stability_gap"], raw["noise_floor"]  # the views added later
    record = RoundRecord.from_json(raw)
    assert record.schema == 1 and record.stability_gap == {} and not record.noise_floor.measured


def test_an_unknown_version_is_refused_with_the_fix(tmp_path):
    run = RunDirectory(tmp_path)
    run.append_round(a_record(1))
    (tmp_path / "config.toml").write_text('name = "x"\n')
    raw = rounds_json(tmp_path)[0]
    raw["schema"] = SCHEMA_VERSION + 1
    (tmp_path / "rounds.jsonl").write_text(json.dumps(raw) + "\n")
    with pytest.raises(RecordError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        run.read_rounds()
    with pytest.raises(RunError, match="line 1: round record of schema version"):
        load_run(tmp_path)
