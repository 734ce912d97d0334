"""One home for the round record's layout: no module but the schema spells a key that only the record has."""

from __future__ import annotations

import ast
from pathlib import Path

from test_round_record import a_record

from fedmi_flower.records.results import json_safe
from fedmi_flower.records.round_record import RoundSummary

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "fedmi_flower" / "records" / "round_record.py"
# Keys the wire protocol, the checkpoint or the config also use (their own formats), and plain words
# that name other things (a plot's axis "round", a config's "seed"): checked by the typed readers instead.
SHARED = {
    "round",
    "seed",
    "clients",
    "global",
    "classes",
    "circuits",
    "class_counts",
    "local_scores",
    "discovery_steps",
    "device",
    "sparsity",
    "sparsity_per_tensor",
    "noise_floor",
    "train_loss",
    "train_accuracy",
    "accuracy",
    "loss",
    "sufficiency",
    "specificity",
    "necessity",
    "verdict",
    "pairs",
    "chance",
    "client",
    "reason",
    "scores",
    "faithfulness",
    "model_sufficiency",
    "model_specificity",
    # A view summary's floor and the noise floor's source floor: a claim's comparison and the explorer's page
    # data use the same plain words.
    "floor",
    "source",
}
# A figure's file name that happens to equal a summary's name.
ALLOWED = {("fedmi_flower/views/plots.py", "global_accuracy")}


def record_keys() -> set[str]:
    keys: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            keys.update(k for k in node if not k.isdigit() and k not in ("conv1", "conv2", "conv3", "mean"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json_safe(a_record(3).to_json()))
    return keys | set(RoundSummary().scalars())


def test_no_module_but_the_schema_spells_a_record_key():
    keys = record_keys() - SHARED
    assert {"inter_client_iou", "stability_gap", "cross_eval", "local_global_iou", "seed_floor"} <= keys
    found = []
    for path in sorted([*ROOT.glob("fedmi_flower/**/*.py"), *ROOT.glob("strategies/*.py"), *ROOT.glob("clients/*.py")]):
        if path == SCHEMA:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in keys and (rel, node.value) not in ALLOWED:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, "round-record keys spelled outside records/round_record.py: " + ", ".join(found)
