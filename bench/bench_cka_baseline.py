"""CKA of a run's final client models and of a never-trained model with its final global model (docs/robustness.md).

    python bench/bench_cka_baseline.py runs/robustness/quickstart-s0 [more run directories]

Reads each run's saved ``weights/round-<last>/{global,client-<id>}.npz`` and its
``config.toml``; measures linear CKA per site on 512 MNIST test images (``FEDMI_DATA_ROOT``)
the way the round analysis does (:func:`fedmi_flower.analysis.robustness.client_cka`),
with the never-trained baseline the analysis records since (``cka.untrained``). Prints one
line per client.
"""

from __future__ import annotations

import sys

import numpy as np
import torch.nn as nn

from fedmi_flower.analysis.robustness import client_cka
from fedmi_flower.config import make_model
from fedmi_flower.records.series import load_run
from fedmi_flower.science.data import load_split, resolve_data_root
from fedmi_flower.science.model import set_weights
from fedmi_flower.science.seeding import derive_seed


def saved_model(run_dir: str, config, last: int, name: str) -> nn.Module:
    arrays = np.load(f"{run_dir}/weights/round-{last}/{name}.npz")
    keys = sorted((k for k in arrays.files if k.startswith("arr_")), key=lambda k: int(k.split("_")[1]))
    model = make_model(config)
    set_weights(model, [arrays[k] for k in keys])
    return model.eval()


def main(run_dirs: list[str]) -> None:
    images = load_split("mnist", False, str(resolve_data_root()), indices=range(512)).images
    for run_dir in run_dirs:
        run = load_run(run_dir)
        last = run.records[-1].round
        global_model = saved_model(run_dir, run.config, last, "global")
        clients = {p: saved_model(run_dir, run.config, last, f"client-{p}") for p in run.records[-1].clients}
        untrained = make_model(run.config, seed=derive_seed(run.config.seed, "cka-untrained"))
        for pid, entry in client_cka(global_model, clients, images, {}, {}, 0, untrained=untrained).items():
            sites = {k: round(v, 3) for k, v in entry.sites.items()}
            baseline = {k: round(v, 3) for k, v in entry.untrained.items()}
            print(f"{run_dir} client {pid}: CKA {sites}; never-trained model {baseline}")


if __name__ == "__main__":
    main(sys.argv[1:])
