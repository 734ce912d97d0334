"""Core engine speed: sparse vs dense local training, batched vs one-class-at-a-time discovery.

Prints images per second and the ratios that matter, on real MNIST. The paper's
reference code, on this 2-core machine, needed 62.5 s for five local epochs on
12,000 images (12.5 s per epoch, 960 images/s) and 542 s for 40 single-class
discoveries of 200 steps (13.6 s each).

    python bench/bench_core.py            # 12,000 images, 4 classes x 200 steps
    python bench/bench_core.py --quick    # 3,000 images, 4 classes x 50 steps (< 1 minute)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedmi_flower.science.circuits import circuits_from_scores, evaluate_circuits
from fedmi_flower.science.data import load_labels, load_split, partition_iid
from fedmi_flower.science.discovery import learn_gate_scores
from fedmi_flower.science.models import build_model
from fedmi_flower.science.seeding import torch_generator
from fedmi_flower.science.sparsity import train_sparse

REF_EPOCH_SECONDS_PER_IMAGE = 62.5 / (5 * 12000)
REF_DISCOVERY_SECONDS_PER_CLASS_STEP = 542.0 / (40 * 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    n_images = 3000 if args.quick else 12000
    steps = 50 if args.quick else 200
    classes = [0, 1, 2, 7]
    labels = load_labels("mnist", True, args.data_root)
    part = partition_iid(labels, 60000 // n_images, seed=0)[0]
    train = load_split("mnist", True, args.data_root, indices=part)
    test = load_split("mnist", False, args.data_root, indices=range(2000))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n_images} images, sparsity {args.sparsity}")

    # Warm-up: one-time allocator and kernel selection costs stay out of the timings.
    train_sparse(build_model(seed=0), train.subset(range(512)), epochs=1, sparsity=args.sparsity)

    # Dense and sparse epochs alternate, three of each, so that drift in the machine's speed hits both alike.
    speed: dict[str, list[float]] = {"dense": [], "sparse": []}
    seconds: dict[str, list[float]] = {"dense": [], "sparse": []}
    models = {}
    for _ in range(3):
        for label, sparsity in (("dense", None), ("sparse", args.sparsity)):
            model = build_model(seed=0)
            stats = train_sparse(model, train, epochs=1, sparsity=sparsity, generator=torch_generator(0, "bench"))
            speed[label].append(stats.examples_seen / stats.seconds)
            seconds[label].append(stats.seconds)
            models[label] = model
    for label in ("dense", "sparse"):
        print(
            f"one local epoch, {label:6s}: {statistics.median(seconds[label]):6.2f} s  "
            f"{statistics.median(speed[label]):7.0f} images/s (median of 3)"
        )
    model = models["sparse"]
    ratio = statistics.median(speed["sparse"]) / statistics.median(speed["dense"])
    print(f"sparse / dense images per second: {ratio:.2f}  (target >= 0.90)")
    ref_epoch = REF_EPOCH_SECONDS_PER_IMAGE * n_images
    print(
        f"reference code for this epoch: {ref_epoch:.2f} s -> speed-up "
        f"{ref_epoch / statistics.median(seconds['sparse']):.1f}x"
    )

    began = time.perf_counter()
    scores, _ = learn_gate_scores(model, train, classes, steps=steps, seed=0)
    batched = time.perf_counter() - began
    began = time.perf_counter()
    for cls in classes:
        learn_gate_scores(model, train, [cls], steps=steps, seed=0)
    single = time.perf_counter() - began
    print(
        f"discovery, {len(classes)} classes x {steps} steps: "
        f"batched {batched:.2f} s, one at a time {single:.2f} s, ratio {single / batched:.2f}x"
    )
    ref_disc = REF_DISCOVERY_SECONDS_PER_CLASS_STEP * len(classes) * steps
    print(f"reference code for the same discoveries: {ref_disc:.1f} s -> speed-up {ref_disc / batched:.1f}x")

    circuits = circuits_from_scores(scores, classes)
    began = time.perf_counter()
    evaluate_circuits(model, test, list(circuits.items()))
    print(
        f"evaluation of {len(classes)} circuits on {len(test)} images (sufficiency, specificity, "
        f"necessity): {time.perf_counter() - began:.2f} s"
    )


if __name__ == "__main__":
    main()
