"""Where a circuit was overwritten (issue 28): its channels' activity, and the shares summed per verdict."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from planted import PLANTED, bright_images, planted_model
from runs import fedmi

from fedmi_flower.analysis.overwrite_sites import OverwriteSite, circuit_activity, summarise_sites, where_overwritten
from fedmi_flower.records.results import RunDirectory


def test_a_circuits_activity_is_what_its_channels_carry_and_nothing_once_silenced():
    model = planted_model()
    images = bright_images(8, 3).images
    circuit = {"conv1": PLANTED[3]["conv1"]}
    alive = circuit_activity(model, images, circuit)
    assert alive > 0.5  # the relay copies brightness (about 1) through its channel
    doubled = planted_model()
    with torch.no_grad():
        doubled.conv1.weight[PLANTED[3]["conv1"][0]] *= 2
    assert circuit_activity(doubled, images, circuit) == pytest.approx(2 * alive, rel=1e-5)
    with torch.no_grad():
        model.conv1.weight[PLANTED[3]["conv1"][0]] = 0.0  # the filter that makes the channel, silenced
        model.conv1.bias[PLANTED[3]["conv1"][0]] = 0.0
    assert circuit_activity(model, images, circuit) == 0.0
    assert math.isnan(circuit_activity(model, images, {"conv1": []}))
    # Two relays of one weight each: silencing one halves the circuit's mean, whatever the other carries.
    both = {"conv1": [PLANTED[3]["conv1"][0], PLANTED[8]["conv1"][0]]}
    assert circuit_activity(planted_model(), images, both) == pytest.approx(alive, rel=1e-5)
    assert circuit_activity(model, images, both) == pytest.approx(alive / 2, rel=1e-5)


def _site(client: int, cls: int, verdict: str, other: int, **kw: float | bool | str) -> OverwriteSite:
    base = dict(
        local_verdict="working",
        round=2, size=3, restores=False, strongest=False, writes=0.0, reads=0.0,
        activity_local=2.0, activity_global=2.0, activity_other=2.0,
    )  # fmt: skip
    return OverwriteSite(client=client, cls=cls, verdict=verdict, other=other, **{**base, **kw})  # type: ignore[arg-type]


def test_the_summary_reads_each_circuit_once_and_its_strongest_overwriter_alone():
    sites = [
        # Client 0's class 1 collapsed: client 2 restores it (the strongest of two restorers) and silenced it.
        _site(0, 1, "collapsed", 1, writes=0.1, reads=0.2, restores=True, activity_global=1.0, activity_other=1.5),
        _site(
            0,
            1,
            "collapsed",
            2,
            writes=0.4,
            reads=0.1,
            restores=True,
            strongest=True,
            activity_global=1.0,
            activity_other=0.5,
        ),  # fmt: skip
        # Client 1's class 4 collapsed with no restorer; its channels kept their activity.
        _site(1, 4, "collapsed", 0, writes=0.3, reads=0.3, activity_global=3.0, activity_local=3.0),
        _site(1, 4, "collapsed", 2, writes=0.0, reads=0.2, activity_global=3.0, activity_local=3.0),
        # Client 2's class 7 still works; its own model's channels were dead (no ratio to take).
        _site(2, 7, "working", 0, writes=0.05, reads=0.05, activity_local=0.0),
        # Client 0's class 2 never worked on its own model: its collapse on the global one is no overwrite.
        _site(0, 2, "collapsed", 1, local_verdict="indiscriminate", writes=0.9, restores=True, strongest=True),
    ]
    collapsed, working = summarise_sites(sites)
    assert (collapsed.verdict, collapsed.circuits, working.verdict, working.circuits) == ("collapsed", 2, "working", 1)
    assert collapsed.activity_ratio == pytest.approx((0.5 + 1.0) / 2)  # median of 1/2 and 3/3
    assert collapsed.others_writes == pytest.approx((0.5 + 0.3) / 2) and collapsed.others_reads == pytest.approx(0.4)
    assert collapsed.restorers == 1 and collapsed.restorer_writes == 0.4 and collapsed.restorer_reads == 0.1
    assert collapsed.restorer_activity_ratio == pytest.approx(0.25)
    assert math.isnan(working.activity_ratio) and working.restorers == 0 and math.isnan(working.restorer_writes)


def test_a_real_runs_circuits_are_decomposed_as_its_records_say(noniid_run, mnist_root, tmp_path):
    rounds = {r.round: r for r in RunDirectory(noniid_run).read_rounds()}
    sites = where_overwritten(noniid_run, data_root=mnist_root)
    # Round 1's start is not kept; every later round's client circuits, each seen from the two other clients.
    assert {s.round for s in sites} == set(rounds) - {1}
    for r in set(rounds) - {1}:
        circuits = sum(len(per) for per in rounds[r].cross_eval.values())
        assert circuits and len([s for s in sites if s.round == r]) == 2 * circuits
    for s in sites:
        record = rounds[s.round]
        scores = record.cross_eval[s.client][s.cls]
        assert (s.local_verdict, s.verdict) == (scores.local_verdict, scores.verdict) and s.other != s.client
        assert s.size == sum(map(len, record.clients[s.client].circuits[s.cls].values()))
        found = record.interference.get(s.client, {}).get(s.cls)
        assert s.restores == (found is not None and s.other in found.restored_by)
        if found is not None and found.overwrite_share:  # the run's own shares, split in two
            assert s.writes + s.reads == pytest.approx(found.overwrite_share[s.other], abs=1e-9)

    out = tmp_path / "ow"
    proc = fedmi("overwrite", str(noniid_run), "--data-root", mnist_root, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "overwrite.csv") as f:
        assert len(list(csv.DictReader(f))) == len(sites)
    assert "activity global/own" in proc.stdout
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.toml", "rounds.jsonl", "partitions.json"):
        (bare / name).write_bytes((noniid_run / name).read_bytes())
    proc = fedmi("overwrite", str(bare), "--data-root", mnist_root)
    assert proc.returncode != 0 and "keeps the weights of no analysed round" in proc.stderr
    assert "Traceback" not in proc.stderr
