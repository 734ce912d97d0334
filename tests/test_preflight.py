"""Never lose data, fail before starting (issue 26, item 5).

A folder holding a user's own files is never written into; settings the machine cannot
honour are refused before any process starts, as one line; a damaged rounds.jsonl is
read as far as it is whole, or refused naming the line.
"""

from __future__ import annotations

import json
import time
import warnings

import pytest
from runs import fedmi
from test_round_record import a_record

from fedmi_flower.apps.preflight import check_devices
from fedmi_flower.config import ConfigError, ExperimentConfig
from fedmi_flower.records.results import RunDirectory, json_safe
from fedmi_flower.records.round_record import RecordError


def test_a_folder_holding_someone_elses_files_is_never_written_into(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.toml").write_text("my own settings\n")
    began = time.perf_counter()
    proc = fedmi("run", "quickstart", "--out", str(out))
    seconds = time.perf_counter() - began
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not empty (config.toml) and is not a fedmi run" in lines[0], proc.stderr
    assert (out / "config.toml").read_text() == "my own settings\n" and sorted(p.name for p in out.iterdir()) == [
        "config.toml"
    ]
    assert seconds < 30, "refused before Flower or Ray started"
    # An empty folder, a new one, and a finished run's folder (resumable) are told apart.
    (tmp_path / "empty").mkdir()
    RunDirectory(tmp_path / "empty").check_new()
    RunDirectory(tmp_path / "new" / "deeper").check_new()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        RunDirectory(tmp_path / "a-file").check_new()


def test_gpu_settings_without_a_gpu_are_one_line_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"resources.device = 'cuda' but no CUDA device is visible here"):
        check_devices(ExperimentConfig.from_dict({"resources": {"device": "cuda"}}), cuda_available=False)
    with pytest.raises(ConfigError, match=r"resources.client_gpus = 0.5 asks Ray for a GPU share"):
        check_devices(ExperimentConfig.from_dict({"resources": {"client_gpus": 0.5}}), cuda_available=False)
    check_devices(
        ExperimentConfig.from_dict({"resources": {"device": "cuda", "client_gpus": 0.5}}), cuda_available=True
    )
    check_devices(ExperimentConfig.from_dict({}), cuda_available=False)  # auto: CPU here, CUDA there
    # Through the command, with every GPU hidden (so on any machine): one line, and no run directory.
    out = tmp_path / "run"
    proc = fedmi(
        "run", "quickstart", "--set", "resources.device=cuda", "--out", str(out), env={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "fedmi: error: resources.device = 'cuda' but no CUDA device is visible here; use 'auto' (CUDA where there "
        "is one) or 'cpu'"
    ]
    assert not out.exists()


def write_rounds(run: RunDirectory, lines: list[str]) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / "rounds.jsonl").write_text("".join(lines))


def test_a_rounds_file_cut_short_is_read_up_to_the_cut_and_a_damaged_record_names_its_line(tmp_path):
    run = RunDirectory(tmp_path / "run")
    whole = [json.dumps(json_safe(a_record(t).to_json())) + "\n" for t in (1, 2, 3)]
    write_rounds(run, [*whole[:2], whole[2][: len(whole[2]) // 2]])  # killed while copying the third
    with pytest.warns(RuntimeWarning, match="line 3 is cut short.*the 2 rounds before it are read"):
        assert [r.round for r in run.read_rounds()] == [1, 2]
    write_rounds(run, [whole[0], whole[1][:40] + "\n", whole[2]])  # damage in the middle: not a cut
    with pytest.raises(RecordError, match="line 2 is not JSON"):
        run.read_rounds()
    damaged = json.loads(whole[1])
    del damaged["clients"]
    write_rounds(run, [whole[0], json.dumps(damaged) + "\n", whole[2]])
    with pytest.raises(RecordError, match="line 2: the record of round 2 lacks 'clients'"):
        run.read_rounds()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_rounds(run, whole)
        assert [r.round for r in run.read_rounds()] == [1, 2, 3]
