"""On a CUDA machine: check that a client's round lives on the GPU, with no host round-trip per batch.

Runs sparse training (one epoch) and circuit discovery (4 classes x 200 steps) on CUDA
under ``torch.cuda.set_sync_debug_mode("warn")`` and counts the device-to-host
synchronisations each one makes, by source line. Returning a float loss, or drawing an
epoch's shuffle on the CPU (so that CPU and GPU runs of a seed see the same order), costs
a few per call; one per batch or per step would be hundreds, and fails the check. Also
checks that every parameter is on the GPU and prints timings beside the CPU's.

    python bench/check_gpu.py    # exits with an error when no CUDA device is visible
"""

from __future__ import annotations

import collections
import functools
import sys
import time
import warnings
from collections.abc import Callable

import torch

from fedmi_flower.science.data import load_labels, load_split, partition_iid
from fedmi_flower.science.discovery import learn_gate_scores
from fedmi_flower.science.models import build_model
from fedmi_flower.science.sparsity import train_sparse

STEPS = 200
BATCH_SIZE = 64  # train_sparse's default


def counted_syncs(work: Callable[[], object]) -> tuple[float, collections.Counter[str]]:
    """Run ``work`` on CUDA; its wall time and the synchronisations it made, by file:line."""
    torch.cuda.synchronize()
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    syncs = collections.Counter(
        f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    )
    return seconds, syncs


def main() -> int:
    if not torch.cuda.is_available():
        print("check_gpu: no CUDA device is visible; run this on a GPU machine (nothing was checked)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    data = load_split("mnist", True, None, partition_iid(load_labels("mnist"), 5, 0)[0]).to(device)
    assert data.images.is_cuda and data.labels.is_cuda
    batches = -(-len(data) // BATCH_SIZE)
    failed = []
    for label, dev in (("cuda", device), ("cpu", torch.device("cpu"))):
        model = build_model(seed=0).to(dev)
        split = data.to(dev)
        generator = torch.Generator().manual_seed(0)

        train = functools.partial(train_sparse, model, split, epochs=1, sparsity=0.99, generator=generator)
        discover = functools.partial(learn_gate_scores, model, split, [0, 1, 2, 7], steps=STEPS, batch_per_class=26)

        if dev.type == "cuda":
            t_train, train_syncs = counted_syncs(train)
            t_disc, disc_syncs = counted_syncs(discover)
            assert all(p.is_cuda for p in model.parameters())
            for what, syncs, loops in (("training", train_syncs, batches), ("discovery", disc_syncs, STEPS)):
                total = sum(syncs.values())
                where = ", ".join(f"{line} x{n}" for line, n in syncs.most_common(6)) or "none"
                print(f"cuda {what}: {total} host synchronisations over {loops} batches/steps ({where})")
                if total >= loops / 4:  # one every few batches is a per-batch round-trip in the loop
                    failed.append(what)
        else:
            began = time.perf_counter()
            train()
            t_train = time.perf_counter() - began
            began = time.perf_counter()
            discover()
            t_disc = time.perf_counter() - began
        print(
            f"{label}: one epoch on {len(split)} images {t_train:.2f} s, "
            f"discovery 4 classes x {STEPS} steps {t_disc:.2f} s ({torch.get_num_threads()} CPU threads)"
        )
    if failed:
        print(f"check_gpu: FAILED, {' and '.join(failed)} synchronise with the host inside the per-batch loop")
        return 1
    print("check_gpu: OK, training and discovery ran on the GPU without a host synchronisation per batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
