"""Experiment configs: validation errors name the field, the value and what is allowed."""

from __future__ import annotations

import pytest

from fedmi_flower.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    list_experiments,
    load_experiment,
    load_sweep,
    parse_override,
)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"train": {"sparsity": 1.5}}, r"train.sparsity = 1.5 is out of range; allowed: \[0.0, 1.0\)"),
        ({"rounds": 0}, r"rounds = 0 is out of range"),
        ({"trian": {}}, r"unknown key 'trian'; did you mean 'train'\?"),
        ({"train": {"sparsty": 0.9}}, r"unknown key 'train.sparsty'; did you mean 'train.sparsity'\?"),
        ({"strategy": {"name": "fedavgg"}}, r"strategy.name = 'fedavgg' is not a strategy \(did you mean 'fedavg'\?\)"),
        ({"rounds": "ten"}, r"rounds = 'ten' must be a whole number"),
        ({"train": {"epochs": 2.5}}, r"train.epochs = 2.5 must be a whole number"),
        ({"analysis": {"evaluate_local": "yes"}}, r"must be true or false"),
        ({"data": {"partition": "class-map"}}, r"data.class_map = None must be given"),
        ({"clients": 3, "data": {"partition": "class-map", "class_map": [[0], [1]]}}, r"has 2 entries but clients = 3"),
        (
            {"clients": 4, "data": {"partition": "classes-per-client", "classes_per_client": 3}},
            r"needs 12 disjoint classes",
        ),
        (
            {"analysis": {"classes": [0, 12]}},
            r"analysis.classes = \[0, 12\] must be a non-empty list of classes in 0..9",
        ),
        ({"data": {"alpha": 0}}, r"data.alpha = 0.0 is out of range; allowed: \(0.0, inf\]"),
        ({"strategy": {"min_fit_clients": 9}, "clients": 3}, r"strategy.min_fit_clients = 9 exceeds clients = 3"),
    ],
)
def test_invalid_configs_name_the_field(table, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(table, "test")


def test_run_config_round_trip_is_exact():
    config = ExperimentConfig.from_dict(
        {
            "analysis": {"classes": [0, 1, 2, 7]},
            "data": {"class_map": [[0], [1, 2]], "partition": "class-map"},
            "clients": 2,
        }
    )
    flat = config.to_run_config()
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["analysis.classes"] == "[0, 1, 2, 7]"
    assert ExperimentConfig.from_run_config(flat) == config


def test_overrides_parse_toml_values():
    assert parse_override("train.sparsity=0.995") == ("train.sparsity", 0.995)
    assert parse_override("analysis.classes=[0, 1]") == ("analysis.classes", [0, 1])
    assert parse_override("strategy.name=fedprox") == ("strategy.name", "fedprox")
    assert parse_override("analysis.evaluate_local=false") == ("analysis.evaluate_local", False)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.sparsity")
    with pytest.raises(ConfigError, match="names no key"):  # found by tests/test_fuzz.py: "=" gave the key ""
        parse_override(" = 3")
    assert apply_overrides({"train": {"lr": 1}}, {"train.epochs": 2}) == {"train": {"lr": 1, "epochs": 2}}


def test_every_bundled_experiment_loads():
    experiments = list_experiments()
    assert "quickstart" in experiments
    for name in experiments:
        config = load_experiment(name)
        assert config.name == name


def test_unknown_experiment_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        load_experiment("quickstar")


def test_sweep_expands_into_named_configs():
    configs = load_sweep("sparsity-ablation")
    assert [c.train.sparsity for c in configs] == [0.95, 0.97, 0.99, 0.995]
    assert configs[0].name == "sparsity-ablation-sparsity=0.95"
    assert load_experiment("sparsity-ablation").train.sparsity == 0.995
    only = load_sweep("sparsity-ablation", {"train.sparsity": 0.97})
    assert len(only) == 1 and only[0].train.sparsity == 0.97 and only[0].name == "sparsity-ablation"
    assert len(load_sweep("quickstart")) == 1


def test_set_string_carries_overrides_through_flowers_run_config():
    config = ExperimentConfig.from_run_config(
        {"experiment": "quickstart", "set": "train.sparsity=0.99 analysis.classes=[0, 1]; rounds=5", "out": "x"}
    )
    assert (config.train.sparsity, config.analysis.classes, config.rounds) == (0.99, [0, 1], 5)
    assert config.name == "quickstart"


def test_fedmi_keys_lists_every_key_with_its_default_range_and_doc(capsys):
    from fedmi_flower.cli import main
    from fedmi_flower.config import config_keys

    every = config_keys()
    flat = ExperimentConfig().to_run_config()
    # Every key a config has (None-valued ones are left out of a run config) and nothing else; each documented.
    assert set(flat) <= {k.key for k in every} and all(k.doc for k in every)
    assert main(["keys", "train"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("train.") for line in lines)
    (sparsity,) = [line for line in lines if line.startswith("train.sparsity ")]
    assert sparsity.split()[1] == "0.99" and "[0.0, 1.0)" in sparsity and "target weight sparsity" in sparsity
    assert main(["keys", "trian"]) == 2
    assert "did you mean 'train'?" in capsys.readouterr().err
