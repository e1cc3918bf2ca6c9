"""Issue 12, acceptance 4: every criterion, with and without reconstruction and sparsity regularization.

The same architectures (uniform widths at each FLOPs budget, `agents.uniform_architecture`) are compressed from
one base model per model with every criterion (``--criteria``), each with and without least-squares
reconstruction (``--reconstruct``) and with and without the sparsity-regularized phase (``--regularizers``:
`automl_prune.prune.sparsity`, ``--regularize-steps`` on the full-width model before the cut). For each one it
records:

- ``val_before``: validation accuracy right after the cut and batch-norm recalibration (no fine-tune);
- ``test_plain`` and ``test_distill``: test accuracy after the same short fine-tune
  (`automl_prune.scoring.rung_job.FineTuneRecipe`, ``--finetune-epochs`` at the pipeline's lr), without and with
  distillation from the base model;
- ``compress_seconds`` (scoring, regularized phase, cut, reconstruction) and the fine-tune seconds.

With ``--searched-from DIR`` (a `benchmarks/quality.py` output folder) the default searcher's best
architecture per budget is compressed too (``arch`` = ``searched``): the search's best by its proxy
(``search_best`` in ``DIR/<model>/<budget>/<agent>/seed<k>/summary.json``), before the re-ranking ladder,
which often hands back uniform itself.

Rows are appended to ``OUT/results.jsonl`` as they finish (`quality.append_result`: one fsynced line), and a
rerun skips the rows already there; ``OUT/criteria.md`` (with the best configuration per budget) and
``OUT/criteria.png`` are written at the end, or at any time with ``--report-only``.

Full run (hours of CPU; under nohup):

    nohup .venv/bin/python benchmarks/criteria.py --models resnet20 vgg-small > runs/bench/criteria.log 2>&1 &

Smoke test (seconds):

    .venv/bin/python benchmarks/criteria.py --models tiny-resnet --dataset synthetic --pretrain-epochs 0.3 \
        --budgets 0.5 --criteria l1 taylor --finetune-epochs 0.1 --regularize-steps 5 --out /tmp/criteria_smoke
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a script owns its process (see benchmarks/quality.py)

import argparse
import copy
import dataclasses
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `quality` when run as a script

from quality import append_result, read_results

from automl_prune.config import DEFAULTS, SearchConfig
from automl_prune.report.summary import format_table

RESULTS = "results.jsonl"
ALL_CRITERIA = ["l1", "l2", "bn_scale", "fpgm", "l1-std", "taylor", "ezcrop", "similarity", "reap", "ccp"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One compression: a criterion on a model's uniform architecture at a budget, with or without extras."""

    model: str
    budget: float
    criterion: str
    reconstruct: bool
    regularize: str
    seed: int
    arch: str = "uniform"

    def key(self) -> str:
        """Identity in the results file."""
        key = f"{self.model}|{self.budget:g}|{self.criterion}|{int(self.reconstruct)}|{self.regularize}|{self.seed}"
        return key if self.arch == "uniform" else f"{key}|{self.arch}"

    @property
    def variant(self) -> str:
        """``plain``, ``+rec``, ``+<regularizer>`` or both."""
        parts = (["+rec"] if self.reconstruct else []) + ([f"+{self.regularize}"] if self.regularize != "none"
                                                          else [])
        return ("searched " if self.arch == "searched" else "") + ("".join(parts) or "plain")


def plan(args: argparse.Namespace) -> list[Row]:
    """Rows in run order: the cheap variants of every criterion first, so a partial run already compares them;
    regularized variants only for ``--regularized-criteria``, without reconstruction."""
    rows = []
    for seed in args.seeds:
        for regularize in args.regularizers:
            for reconstruct in args.reconstruct:
                for model in args.models:
                    for budget in args.budgets:
                        for arch in ("uniform", "searched") if args.searched_from else ("uniform",):
                            rows += [Row(model, budget, c, reconstruct, regularize, seed, arch)
                                     for c in args.criteria if regularize == "none" or (
                                         not reconstruct and c in args.regularized_criteria)]
    return rows


def searched_architecture(args: argparse.Namespace, row: Row) -> dict[str, int]:
    """The default searcher's best widths (by its proxy) at the row's model and budget, from a quality run."""
    import json

    path = Path(args.searched_from) / row.model / f"{row.budget:g}" / args.searched_agent / "seed0" / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no search at {path}: run benchmarks/quality.py for that row first")
    return {k: int(v) for k, v in json.loads(path.read_text())["search_best"]["architecture"].items()}


def _config(args: argparse.Namespace, row: Row) -> SearchConfig:
    return SearchConfig(model=row.model, dataset=args.dataset, data_root=args.data_root, flops=row.budget,
                        cache_dir=args.cache_dir, seed=row.seed, pretrain_epochs=args.pretrain_epochs,
                        criterion=row.criterion, reconstruct=row.reconstruct, progress=False,
                        finetune_epochs=args.finetune_epochs, threads=args.threads)


_BASES: dict[str, Any] = {}


def run_row(args: argparse.Namespace, row: Row) -> dict[str, Any]:
    """Compress, measure before fine-tune, then fine-tune a copy without and one with distillation."""
    import torch

    from agents import uniform_architecture
    from automl_prune.prune.criteria import get_criterion
    from automl_prune.prune.pruning import compress
    from automl_prune.run.base_model import load_base
    from automl_prune.run.search_stage import calibration_data
    from automl_prune.scoring.evaluator import accuracy_and_loss, recalibrate_batch_norm
    from automl_prune.scoring.rung_job import FineTuneRecipe

    config = _config(args, row)
    if row.model not in _BASES:
        _BASES[row.model] = load_base(config)
    base = _BASES[row.model]
    space, splits = base.space, base.splits
    if row.arch == "searched":
        from search_spaces import Architecture

        arch = space.complete(Architecture(searched_architecture(args, row)))
    else:
        arch = uniform_architecture(space, int(row.budget * space.full_flops))
    calibration = calibration_data(config, base)
    start = time.perf_counter()
    model, criterion, reconstruct = base.model, row.criterion, row.reconstruct
    if row.regularize != "none":
        from automl_prune.prune.sparsity import regularized_start

        reconstruct = reconstruct or get_criterion(row.criterion).reconstructs
        model, criterion = regularized_start(base.model, space.graph, arch.widths, row.criterion, splits,
                                             method=row.regularize, steps=args.regularize_steps,
                                             strength=args.regularize_strength, lr=config.finetune_lr,
                                             seed=row.seed, calibration=calibration)
    pruned = compress(model, space.graph, arch, criterion, calibration=calibration, reconstruct=reconstruct)
    compress_seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(row.seed)
    index = torch.randperm(len(splits.train), generator=generator)[:1280]
    recalibrate_batch_norm(pruned, [splits.train.images[index[i:i + 128]] for i in range(0, len(index), 128)])
    val_before, _ = accuracy_and_loss(pruned, splits.val.images, splits.val.labels, 1000)
    metrics: dict[str, Any] = {"val_before": val_before, "compress_seconds": compress_seconds,
                               "flops_ratio": space.flops(arch) / space.full_flops, "widths": arch.widths,
                               "base_test_acc": base.meta.get("test_acc")}
    for distill in (False, True):
        recipe = FineTuneRecipe(epochs=args.finetune_epochs, lr=config.finetune_lr, seed=row.seed, distill=distill)
        tuned = copy.deepcopy(pruned)
        start = time.perf_counter()
        recipe.trainer(tuned, splits, teacher=base.model).run(progress=False)
        name = "distill" if distill else "plain"
        metrics[f"finetune_seconds_{name}"] = time.perf_counter() - start
        tuned = tuned.to("cpu", memory_format=torch.contiguous_format).eval()
        metrics[f"test_{name}"] = accuracy_and_loss(tuned, splits.test.images, splits.test.labels, 1000)[0]
    return metrics


def best_per_budget(results: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """The row with the highest test accuracy after the plain fine-tune, per (model, budget), mean over seeds."""
    means: dict[tuple[str, float, str, str], list[float]] = {}
    for r in results:
        means.setdefault((r["model"], r["budget"], r["criterion"], r["variant"]), []).append(r["test_plain"])
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for (model, budget, criterion, variant), accs in means.items():
        acc = sum(accs) / len(accs)
        if (model, budget) not in best or acc > best[(model, budget)]["test_plain"]:
            best[(model, budget)] = {"criterion": criterion, "variant": variant, "test_plain": acc, "n": len(accs)}
    return best


def markdown(results: list[dict[str, Any]], header: str) -> str:
    """One line per finished row (seeds listed separately), then the best configuration per budget."""
    ordered = sorted(results, key=lambda r: (r["model"], -r["budget"], ALL_CRITERIA.index(r["criterion"])
                                             if r["criterion"] in ALL_CRITERIA else 99, r["variant"], r["seed"]))
    rows = [[r["model"], f"{r['budget']:g}", r["criterion"], r["variant"], r["seed"], f"{100 * r['val_before']:.2f}",
             f"{100 * r['test_plain']:.2f}", f"{100 * r['test_distill']:.2f}", f"{r['compress_seconds']:.1f}",
             f"{r['finetune_seconds_plain']:.0f}"] for r in ordered]
    table = format_table(["model", "FLOPs", "criterion", "variant", "seed", "val % before FT", "test % FT",
                          "test % FT+distill", "compress s", "FT s"], rows)
    best = best_per_budget(results)
    lines = [f"- {model} at {budget:g} FLOPs: {b['criterion']} {b['variant']} ({100 * b['test_plain']:.2f}% test "
             f"after the plain fine-tune, n={b['n']})" for (model, budget), b in sorted(best.items())]
    return f"{header}\n\n{table}\n\nBest per budget:\n\n" + "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """A row per (model, budget): left, test accuracy after the plain fine-tune (zoomed to its range); right,
    validation accuracy right after the cut (0-100%); one marker per criterion and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = sorted({(r["model"], r["budget"]) for r in results}, key=lambda p: (p[0], -p[1]))
    variants = sorted({r["variant"] for r in results}, key=lambda v: (v != "plain", v))
    criteria = [c for c in ALL_CRITERIA if any(r["criterion"] == c for r in results)]
    markers = "osD^vP*Xh<>"
    fig, axes = plt.subplots(len(panels), 2, figsize=(max(10.0, 1.2 * len(criteria) * 2), 3.4 * len(panels)),
                             squeeze=False)
    spread = 0.7 / max(len(variants), 1)
    for (left, right), (model, budget) in zip(axes, panels, strict=True):
        tests: list[float] = []
        for j, variant in enumerate(variants):
            xs, test, val = [], [], []
            for i, criterion in enumerate(criteria):
                rows = [r for r in results if (r["model"], r["budget"], r["criterion"], r["variant"])
                        == (model, budget, criterion, variant)]
                if rows:
                    xs.append(i + (j - (len(variants) - 1) / 2) * spread)
                    test.append(100 * float(np.mean([r["test_plain"] for r in rows])))
                    val.append(100 * float(np.mean([r["val_before"] for r in rows])))
            color = plt.get_cmap("tab10")(j % 10)
            marker = markers[j % len(markers)]
            left.scatter(xs, test, color=color, marker=marker, s=28, label=variant, zorder=3)
            right.scatter(xs, val, color=color, marker=marker, s=28, label=variant, zorder=3)
            tests += test
        for ax in (left, right):
            ax.set_xticks(range(len(criteria)))
            ax.set_xticklabels(criteria, fontsize=8)
            ax.grid(alpha=0.3)
            for i in range(len(criteria) - 1):
                ax.axvline(i + 0.5, color="0.85", lw=0.8)
        low, high = min(tests), max(tests)
        left.set_ylim(low - 0.15 * (high - low) - 0.2, high + 0.15 * (high - low) + 0.2)
        left.set_ylabel("test accuracy % after fine-tune")
        left.set_title(f"{model} at {budget:g} FLOPs: test accuracy after the short fine-tune", fontsize=10)
        right.set_ylim(0, 100)
        right.set_ylabel("val accuracy % before fine-tune")
        right.set_title(f"{model} at {budget:g} FLOPs: val accuracy right after the cut", fontsize=10)
        right.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace, out_dir: Path) -> None:
    """Write (and print) the table and the figure from every row in the results file."""
    from automl_prune.atomic import atomic_write_text

    results = read_results(out_dir / RESULTS)
    if not results:
        print(f"no finished rows in {out_dir / RESULTS} yet")
        return
    # The rows' own settings, not this call's defaults (``--report-only`` is called without them).
    epochs = "/".join(f"{e:g}" for e in sorted({float(r.get("finetune_epochs", args.finetune_epochs))
                                                 for r in results}))
    steps = "/".join(str(v) for v in sorted({int(r.get("regularize_steps", args.regularize_steps))
                                              for r in results}))
    header = (f"Uniform architectures per FLOPs budget (and the default searcher's best: 'searched'), compressed "
              f"with each criterion; val accuracy right after "
              f"the cut (BN recalibrated), test accuracy after the same {epochs}-epoch fine-tune "
              f"(lr {DEFAULTS.finetune_lr:g}) without and with distillation; regularized variants train the "
              f"full-width model {steps} steps first (strength {args.regularize_strength:g}).\n"
              f"Command: .venv/bin/python benchmarks/criteria.py {' '.join(sys.argv[1:])}".rstrip())
    text = markdown(results, header)
    atomic_write_text(out_dir / "criteria.md", text)
    plot(results, out_dir / "criteria.png")
    print(text)
    print(f"wrote {out_dir / 'criteria.md'} and {out_dir / 'criteria.png'}")


def main() -> int:
    """Run the missing rows, then write the table and the figure. Exit code 1 if a row failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg-small"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--criteria", nargs="+", default=ALL_CRITERIA)
    parser.add_argument("--reconstruct", type=lambda v: v.lower() in ("1", "true", "yes"), nargs="+",
                        default=[False, True], help="reconstruction variants (default: false true)")
    parser.add_argument("--regularizers", nargs="+", default=["none", "group-lasso"],
                        help="sparsity variants: none, group-lasso, growing-l2 (default: none group-lasso)")
    parser.add_argument("--regularized-criteria", nargs="+", default=["l1", "l1-std", "taylor", "reap", "ccp"],
                        help="criteria that also get the --regularizers variants other than none (without "
                             "reconstruction: the penalty already empties the channels the cut removes)")
    parser.add_argument("--regularize-steps", type=int, default=DEFAULTS.regularize_steps)
    parser.add_argument("--regularize-strength", type=float, default=DEFAULTS.regularize_strength)
    parser.add_argument("--finetune-epochs", type=float, default=DEFAULTS.finetune_epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--pretrain-epochs", type=float, default=DEFAULTS.pretrain_epochs)
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out", default="runs/bench/criteria")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--searched-from", default=None,
                        help="a benchmarks/quality.py output folder: also compress its default searcher's best")
    parser.add_argument("--searched-agent", default=DEFAULTS.agent, help="whose best (with --searched-from)")
    parser.add_argument("--report-only", action="store_true", help="write the table and figure; run nothing")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLCONFIGDIR", str((out_dir / ".cache" / "matplotlib").resolve()))
    if args.report_only:
        report(args, out_dir)
        return 0
    from automl_prune.train.runtime import configure_torch

    configure_torch(args.threads)
    rows = plan(args)
    results_path = out_dir / RESULTS
    done = {r["key"] for r in read_results(results_path)}
    todo = [r for r in rows if r.key() not in done]
    print(f"{len(rows)} rows planned, {len(rows) - len(todo)} already in {results_path}, {len(todo)} to run",
          flush=True)
    failed = []
    began = time.perf_counter()
    for i, row in enumerate(todo):
        start = time.perf_counter()
        try:
            metrics = run_row(args, row)
        except Exception:  # one broken criterion must not stop the others
            traceback.print_exc()
            failed.append(row)
            print(f"[{i + 1}/{len(todo)}] FAILED {row.key()}; continuing", flush=True)
            continue
        wall = time.perf_counter() - start
        append_result(results_path, {"key": row.key(), **dataclasses.asdict(row), "variant": row.variant, **metrics,
                                     "wall_seconds": wall, "finetune_epochs": args.finetune_epochs,
                                     "regularize_steps": args.regularize_steps, "dataset": args.dataset,
                                     "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        print(f"[{i + 1}/{len(todo)}] {row.key()}: val before {100 * metrics['val_before']:.2f}%, test "
              f"{100 * metrics['test_plain']:.2f}% / {100 * metrics['test_distill']:.2f}% (distill), compress "
              f"{metrics['compress_seconds']:.1f} s, wall {wall:.0f} s; ETA "
              f"{(time.perf_counter() - began) / (i + 1) * (len(todo) - i - 1) / 60:.0f} min", flush=True)
    report(args, out_dir)
    if failed:
        print(f"{len(failed)} row(s) failed: {', '.join(r.key() for r in failed)}; rerun the same command to retry",
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
