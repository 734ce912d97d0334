"""TensorBoard scalars of a real run, read back with TensorBoard's own event reader."""

from __future__ import annotations

import contextlib
import io
import math

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmi_flower.cli import main
from fedmi_flower.records.series import load_run
from fedmi_flower.views.tensorboard import round_scalars


def read_scalars(folder) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_a_run_with_logging_tensorboard_writes_every_rounds_scalars(iid_run):
    written = read_scalars(iid_run.parent / "tensorboard" / iid_run.name)
    records = load_run(iid_run).records
    for tag in (
        "accuracy/global_accuracy",
        "iou/inter_client_iou",
        "iou/inter_client_iou_chance",
        "iou/seed_floor",
        "iou/local_global_iou",
        "cross_eval/cross_sufficiency",
        "cross_eval/cross_specificity",
        "cross_eval/cross_faithfulness",
        "degenerate/degenerate_local",
        "time/round_s",
    ):
        assert tag in written, sorted(written)
    for record in records:
        for tag, value in round_scalars(record).items():
            assert math.isclose(written[tag][record.round], value, rel_tol=1e-6, abs_tol=1e-6), tag
    assert "iou/stability" not in round_scalars(records[0])  # undefined in round 1: left out, not written as 0
    assert set(written["iou/stability"]) == {2}


def test_fedmi_tensorboard_writes_finished_runs_one_folder_each(noniid_runs, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["tensorboard", *map(str, noniid_runs), "--logdir", str(tmp_path)]) == 0
    for run_dir in noniid_runs:
        written = read_scalars(tmp_path / run_dir.name)
        records = load_run(run_dir).records
        accuracy = written["accuracy/global_accuracy"]
        assert sorted(accuracy) == [r.round for r in records]
        assert all(math.isclose(accuracy[r.round], r.summary.global_accuracy, rel_tol=1e-6) for r in records)
    assert f"`tensorboard --logdir {tmp_path}`" in out.getvalue()
