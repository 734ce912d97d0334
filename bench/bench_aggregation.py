"""Server-side cost of the aggregation rules and of aligned IoU, at 5 / 20 / 80 clients.

Every client is one sparse (90%) SimpleCNN with noise and its channels permuted at
random: the worst case for matching (every channel moves; under FedAvg's shared start
almost none do). Times one ``aggregate_fit`` of each plain Flower strategy (no
circuit analysis), and the alignment that aligned IoU adds to every round's analysis
(each client matched onto the global model), against the anchor round (68.8 s,
``python bench/bench_round.py --mode inprocess``, 5 clients; bench/README.md).
Times are CPU seconds of this process (``time.process_time``, robust to a busy
machine) and wall seconds.

    OPENBLAS_NUM_THREADS=1 python bench/bench_aggregation.py --threads 1   # 5, 20, 80 clients (~2 minutes)
    python bench/bench_aggregation.py --clients 5                          # one size

MNIST comes from ``--data-root`` or ``FEDMI_DATA_ROOT``. On a busy machine, pin BLAS to one thread as above:
numpy's idle BLAS threads spin, and the CPU time of 80 weight matchings went from 0.15 s to 12.5 s
beside a running experiment without it.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import numpy as np
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedmi_flower.science.alignment import match, match_all, permute
from fedmi_flower.science.data import load_split
from fedmi_flower.science.model import get_weights
from fedmi_flower.science.models import build_model
from fedmi_flower.science.models.simple_cnn import CHANNELS
from fedmi_flower.science.models.simple_cnn import SITES as CIRCUIT_LAYERS
from fedmi_flower.science.sparsity import prune_
from fedmi_flower.strategies import MaskedFedAvg, MatchedFedAvg, ModularFedAvg
from fedmi_flower.wire.protocol import encode_circuits

SIZES = dict(zip(CIRCUIT_LAYERS, CHANNELS))
ANCHOR_ROUND_S = 68.8


class Proxy(ClientProxy):
    """Only the id matters to aggregate_fit."""

    def get_properties(self, *a, **k):  # pragma: no cover
        raise NotImplementedError

    get_parameters = fit = evaluate = reconnect = get_properties


def clients(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[tuple[ClientProxy, FitRes]]]:
    """The global model and ``n`` permuted, perturbed, re-pruned copies of it with random circuits."""
    rng = np.random.default_rng(seed)
    model = build_model(seed=seed)
    prune_(model, 0.9)
    base = get_weights(model)
    out = []
    for k in range(n):
        noisy = [w + 0.01 * rng.standard_normal(w.shape).astype(w.dtype) * (w != 0) for w in base]
        weights = permute(noisy, {layer: rng.permutation(c) for layer, c in SIZES.items()})
        circuits = {
            cls: {layer: sorted(rng.choice(c, c // 4, replace=False).tolist()) for layer, c in SIZES.items()}
            for cls in rng.choice(10, 2, replace=False).tolist()
        }
        metrics = {"circuits": encode_circuits(circuits, SIZES)}
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), int(rng.integers(500, 5000)), metrics)
        out.append((Proxy(f"node-{k}"), res))
    return base, out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def recovered(base: list[np.ndarray], arrays: list[list[np.ndarray]], how: str, probe: torch.Tensor) -> float:
    """Share of the clients' channels the matching puts back where the global model has them."""
    hits = total = 0
    for weights in arrays:
        aligned = permute(weights, match(base, weights, how, probe))
        for k in range(len(CIRCUIT_LAYERS)):
            w, b = aligned[2 * k], base[2 * k]
            hits += int((np.abs(w - b).reshape(len(w), -1).max(1) < 0.1).sum())
            total += len(w)
    return hits / total


def rules(
    base: list[np.ndarray], results: list[tuple[ClientProxy, FitRes]], probe: torch.Tensor
) -> list[tuple[str, Callable[[], object]]]:
    """Each rule as a call to time."""
    initial = ndarrays_to_parameters(base)
    quiet = {"initial_parameters": initial, "fit_metrics_aggregation_fn": lambda metrics: {}}
    strategies: list[tuple[str, FedAvg]] = [
        ("fedavg", FedAvg(**quiet)),
        ("matchedfedavg, weight matching", MatchedFedAvg(**quiet)),
        (
            "matchedfedavg, activation matching",
            MatchedFedAvg(matching="activations", probe_images=probe, **quiet),
        ),
        ("maskedfedavg (re-pruned to 90%)", MaskedFedAvg(target_sparsity=0.9, **quiet)),
        ("modularfedavg", ModularFedAvg(**quiet)),
    ]
    out: list[tuple[str, Callable[[], object]]] = []
    for name, strategy in strategies:
        if isinstance(strategy, MatchedFedAvg):
            strategy.reference = base
        out.append((name, functools.partial(strategy.aggregate_fit, 1, results, [])))
    arrays = [parameters_to_ndarrays(r.parameters) for _, r in results]
    for how in ("weights", "activations"):
        out.append(
            (
                f"aligned IoU: all clients matched ({how})",
                functools.partial(match_all, base, dict(enumerate(arrays)), how, probe),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 20, 80])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    probe = load_split("mnist", False, args.data_root, indices=range(512)).images  # the server's probe rows' stand-in
    print(f"torch {torch.__version__}, {args.threads} threads; anchor round {ANCHOR_ROUND_S} s (5 clients)")
    base, results = clients(5)
    arrays = [parameters_to_ndarrays(r.parameters) for _, r in results]
    for how in ("weights", "activations"):
        print(f"channels put back in place by {how} matching: {recovered(base, arrays, how, probe):.1%}")
    print(f"{'clients':>7}  {'what':<48} {'CPU s':>7} {'wall s':>7} {'% of anchor round':>17}")
    for n in args.clients:
        base, results = clients(n)
        for name, fn in rules(base, results, probe):
            cpu, wall = timed(fn)
            print(f"{n:>7}  {name:<48} {cpu:>7.2f} {wall:>7.2f} {100 * wall / ANCHOR_ROUND_S:>16.1f}%")


if __name__ == "__main__":
    main()
