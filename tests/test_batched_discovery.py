"""Several discoveries on one model in one loop (issue 29 item 4): each job's result is what it finds alone."""

from __future__ import annotations

import pytest
import torch

from fedmi_flower.analysis.round_analyst import RoundAnalyst
from fedmi_flower.records.round_record import Step
from fedmi_flower.science.data import ImageSplit
from fedmi_flower.science.discovery import Discovery, DiscoveryJob
from fedmi_flower.science.models import build_model
from fedmi_flower.wire.protocol import ClientReport


def random_rows(n: int, classes: int, seed: int) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    return ImageSplit(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, classes, (n,), generator=g))


def assert_same(together: dict[str, torch.Tensor], alone: dict[str, torch.Tensor]) -> None:
    assert together.keys() == alone.keys()
    for site in together:
        torch.testing.assert_close(together[site], alone[site], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("objective", ["paper", "faithful"])
def test_jobs_learned_together_equal_each_job_learned_alone(objective):
    """Jobs differ in rows, class lists (one class in two jobs), seeds, sizes and other images; a mix-up of any of
    them (one job's draws read from another's rows, a shared seed, scores handed to the wrong job) moves its scores.
    Early stopping retires rows one by one, so the steps each class ran must match too."""
    model = build_model(seed=3)
    reference = random_rows(64, 10, seed=9)
    jobs = [
        DiscoveryJob(random_rows(300, 3, seed=1), [0, 1, 2], seed=5),
        DiscoveryJob(random_rows(120, 2, seed=2), [1], seed=6, negatives=reference),
        DiscoveryJob(random_rows(200, 4, seed=3), [3, 0], seed=7),
    ]
    recipe = Discovery(objective=objective, steps=60, batch_per_class=8, patience=10, min_steps=30)
    means = recipe.fill(model, reference)
    together = recipe.learn_jobs(model, jobs, means=means)
    assert len(together) == len(jobs)
    for job, (scores, steps) in zip(jobs, together):
        alone, alone_steps = recipe.learn(
            model, job.data, job.classes, seed=job.seed, means=means, negatives=job.negatives
        )
        assert next(iter(scores.values())).shape[0] == len(job.classes)
        assert steps == alone_steps
        assert_same(scores, alone)
    # The jobs really differ: class 0 of job 1 and of job 3 (other rows, other seed) did not learn the same scores.
    assert not torch.allclose(together[0][0]["conv2"][0], together[2][0]["conv2"][1])


def test_a_job_with_no_class_left_gets_empty_scores_and_leaves_the_others_alone():
    model = build_model(seed=3)
    recipe = Discovery(objective="paper", steps=20, batch_per_class=8)
    data = random_rows(100, 2, seed=4)
    empty, full = recipe.learn_jobs(model, [DiscoveryJob(data, [], seed=1), DiscoveryJob(data, [0, 1], seed=2)])
    assert all(s.shape[0] == 0 for s in empty[0].values()) and empty[1] == []
    assert_same(full[0], recipe.learn(model, data, [0, 1], seed=2)[0])


def test_the_hard_concrete_gate_runs_jobs_one_by_one():
    """Its noise comes from one seed per discovery: batched, the second job would draw the first job's noise."""
    model = build_model(seed=3)
    recipe = Discovery(objective="paper", gate="hard-concrete", steps=20, batch_per_class=8)
    jobs = [DiscoveryJob(random_rows(100, 2, seed=4), [0, 1], seed=1), DiscoveryJob(random_rows(80, 2, 5), [1], 2)]
    for job, (scores, _) in zip(jobs, recipe.learn_jobs(model, jobs)):
        assert_same(scores, recipe.learn(model, job.data, job.classes, seed=job.seed)[0])


class CountingAnalyst(RoundAnalyst):
    """The real analysis, counting its discovery loops and the jobs each ran."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loops: list[int] = []

    def find_jobs(self, model, jobs):
        self.loops.append(len(jobs))
        return super().find_jobs(model, jobs)


def test_the_server_finds_the_global_circuits_and_every_floor_in_one_loop(random_model_analyst):
    """Client 0 holds classes 0 and 1, client 1 classes 2 and 3 (the fixture); a random model, so no floor is 1."""
    separate, model = random_model_analyst
    config, probe, evaluation = separate.config, separate.probe, separate.evaluation
    found = separate.discover(model, probe, [0, 1, 2, 3], "server-discovery", 1)
    reports = [ClientReport(0, 100, {0: found[0], 1: found[1]}), ClientReport(1, 60, {2: found[2], 3: found[3]})]
    floor = separate.noise_floor(model, found, 1, reports)

    analyst = CountingAnalyst(config, probe, evaluation, client_rows=separate.client_rows)
    record = analyst.analyse(1, model, reports)
    # One loop: the global circuits, the seed floor, and the source floor on each client's rows (two clients).
    assert analyst.loops[0] == 4 and analyst.loops.count(4) == 1
    assert record.global_model.circuits == found
    assert record.noise_floor.source_clients == {0: 0, 1: 0, 2: 1, 3: 1} == floor.source_clients
    for kind in ("seed", "source"):
        got, want = getattr(record.noise_floor, kind), getattr(floor, kind)
        assert sorted(got) == [0, 1, 2, 3] and {c: v.mean for c, v in got.items()} == pytest.approx(
            {c: v.mean for c, v in want.items()}
        )
    assert record.noise_floor.seed_circuits == floor.seed_circuits
    assert any(v.mean < 1.0 for v in record.noise_floor.seed.values())


def test_a_floor_that_cannot_be_planned_costs_the_floor_only(random_model_analyst):
    fixture, model = random_model_analyst
    config, probe, evaluation = fixture.config, fixture.probe, fixture.evaluation

    def rows(pid: int) -> ImageSplit:
        if pid == 1:
            raise OSError("partition 1's rows are unreadable")
        return fixture.client_rows(pid)

    alone = RoundAnalyst(config, probe, evaluation).discover(model, probe, [0, 1, 2, 3], "server-discovery", 1)
    reports = [ClientReport(0, 100, {0: alone[0], 1: alone[1]}), ClientReport(1, 60, {2: alone[2], 3: alone[3]})]
    analyst = CountingAnalyst(config, probe, evaluation, client_rows=rows)
    record = analyst.analyse(1, model, reports)
    assert "partition 1's rows are unreadable" in record.step_errors[Step.NOISE_FLOOR]
    assert record.global_model.circuits == alone and record.analysis_error is None
    assert analyst.loops[0] == 1 and not record.noise_floor.seed


def test_jobs_whose_stems_together_outgrow_the_cache_run_one_by_one_each_with_its_cache(monkeypatch):
    """Each job's stems fit the cache alone, both jobs' do not: one loop would recompute every step's stems."""
    import fedmi_flower.science.circuits as circuits_module
    import fedmi_flower.science.discovery as discovery_module

    model = build_model(seed=3)
    jobs = [DiscoveryJob(random_rows(200, 2, seed=1), [0, 1], seed=5), DiscoveryJob(random_rows(200, 2, 2), [1], 6)]
    per_image = 32 * 14 * 14 * 4  # the paper's CNN's stem output, float32
    monkeypatch.setattr(circuits_module, "STEM_CACHE_BYTES", 250 * per_image)
    cached: list[bool] = []
    real = discovery_module._stem_cache

    def spy(model, images, draws):
        stems, where = real(model, images, draws)
        cached.append(stems is not None)
        return stems, where

    monkeypatch.setattr(discovery_module, "_stem_cache", spy)
    recipe = Discovery(objective="paper", steps=40, batch_per_class=8)
    together = recipe.learn_jobs(model, jobs)
    assert cached == [True, True]  # two loops, each with its cache; one loop of both would have had none
    for job, (scores, _) in zip(jobs, together):
        assert_same(scores, recipe.learn(model, job.data, job.classes, seed=job.seed)[0])
