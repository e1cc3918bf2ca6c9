"""Which torchvision classification models automl-prune can search with exact FLOPs (not run by CI).

For each model (untrained, 10 classes) at its smallest sensible input, build the search space and check 5
random architectures: each is compressed and its FLOPs measured by `torch.utils.flop_counter.FlopCounterMode`
must equal the cost model's. A model either passes, or is refused with one line (our `ConfigError` or
another exception's first line). Each model runs in its own process with a time limit, one at a time.

    .venv/bin/python benchmarks/torchvision_coverage.py                 # every model (slow: tens of minutes)
    .venv/bin/python benchmarks/torchvision_coverage.py resnet18 mobilenet_v3_small --timeout 120
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (32, 64, 96, 160, 224)  # the first one the model runs at is used
N_ARCHITECTURES = 5


def check(name: str) -> str:
    """One model: 'ok ...' or 'refused ...' (one line)."""
    import numpy as np
    import torch
    import torchvision

    from automl_prune.graph.analysis import measure_flops
    from automl_prune.prune.pruning import compress
    from automl_prune.train.runtime import configure_torch
    from search_spaces import SearchSpace

    configure_torch()
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    size = None
    for candidate in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, candidate, candidate))
            size = candidate
            break
        except Exception:  # too small for this architecture: try the next size
            continue
    if size is None:
        return f"refused {name}: does not run at any input size in {SIZES}"
    shape = (1, 3, size, size)
    space = SearchSpace.from_model(model, torch.zeros(shape), min_keep_ratio=0.25, model_name=name)
    rng = np.random.default_rng(0)
    for _ in range(N_ARCHITECTURES):
        architecture = space.sample(rng)
        pruned = compress(model, space.graph, architecture)
        measured, modelled = measure_flops(pruned, shape), space.flops(architecture)
        if measured != modelled:
            return f"refused {name}: INEXACT at {size}px, cost model {modelled:,} vs measured {measured:,} FLOPs"
    return f"ok {name}: {size}px, {len(space)} groups, {N_ARCHITECTURES}/{N_ARCHITECTURES} architectures exact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="torchvision model names (default: every classification model)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.one:
        try:
            print(check(args.one))
        except Exception as error:  # the refusal line is what this script reports
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"refused {args.one}: {type(error).__name__}: {first}")
        return
    import torchvision

    names = args.models or torchvision.models.list_models(module=torchvision.models)
    for name in names:
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, __file__, "--one", name], cwd=ROOT, capture_output=True,
                                  text=True, timeout=args.timeout)
            lines = [line for line in done.stdout.splitlines() if line.startswith(("ok ", "refused "))]
            line = lines[-1] if lines else f"refused {name}: crashed ({(done.stderr.strip().splitlines() or [''])[-1]})"
        except subprocess.TimeoutExpired:
            line = f"refused {name}: not finished in {args.timeout:g} s"
        print(f"{line}  [{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
