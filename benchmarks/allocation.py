"""One sensitivity profile against uniform, DDPG and Optuna: widths, bits and joint allocation (not run by CI; hours).

Plan (``--models``, ``--kinds``, ``--agents``, ``--seeds`` narrow it):

- ``widths``: resnet56 and mobilenetv2-small at 25% and 10% FLOPs (float models);
- ``bits``: resnet20 and mobilenetv2-small at full width, with the size budget of the model with every layer at
  ``--uniform-bits`` (4) bits, in whole bytes, as `benchmarks/bits_quality.py` sets it (so the uniform answer
  is exactly the 4-bit model and a searcher must find a mixed precision of the same size);
- ``joint``: resnet20 and mobilenetv2-small, widths and bits together (``search: both``) at 50% FLOPs and the size
  of the uniform-width 4-bit model of that budget (so the uniform answer is the uniform width at 4 bits);
- methods: ``uniform`` (the naive answer, not widened: as `benchmarks/quality.py`), ``sensitivity`` (the
  one-shot answer: its profile, then ``--one-shot-episodes`` (1) evaluation), ``ddpg`` and ``optuna``
  (``--episodes`` each; with ``--equal-cost`` as many as the sensitivity row spends: its profile + its
  evaluations);
  ``ddpg-start`` and ``optuna-start`` (not in the default list): the same searchers started from the one-shot
  answer (``--search-start one-shot``: their first proposal), to measure that setting's default;
  ``sensitivity-hedged`` (not in the default list): the sensitivity searcher with ``--episodes`` evaluations
  (the one-shot answer, then the uniform answer, blends and perturbations), as ``agent: auto`` runs it;
- seeds 0, 1, 2 (the search and fine-tune seed; one base model per model, ``--pretrain-seed``).

Every row is the real pipeline (`automl_prune.run.pipeline.run_search`) in
``OUT/<model>/<kind>/<budget>/<agent>/seed<k>``, with the same fine-tune and re-ranking for every method. The
sensitivity profile is cached in ``--cache-dir`` per base model, data, criterion, calibration and proxy (the seed
is part of the calibration), so the 10% row of a model and seed reuses the 25% row's width profile, and every
later row of that model and seed may enter the one-shot answer in its re-ranking ladder (the product does: the
"ladder pick" column says how often a row handed back the uniform or the one-shot entrant instead of its own).

Resumable: each finished row is one flushed, fsynced line of ``OUT/results.jsonl`` (a torn last line is
ignored), a rerun skips the rows there, and processes sharing ``OUT`` claim rows (`benchmarks/quality.py`'s
helpers; start the second with ``--seeds 2 1 0``). ``OUT/allocation.md`` (and ``--report-only``) has, per model,
kind, budget and method: test accuracy mean +- std over seeds; the paired difference to uniform and to the
sensitivity one-shot on the same seeds (mean +- std of the per-seed differences, n pairs); the equal-cost
columns: evaluations of the search, profile evaluations measured (and reused from the cache), search and re-rank
seconds; which entrant the ladder handed back.

    nohup .venv/bin/python benchmarks/allocation.py > runs/bench/allocation.log 2>&1 &
    .venv/bin/python benchmarks/allocation.py --report-only

Smoke test of the wiring (not a result; minutes):

    .venv/bin/python benchmarks/allocation.py --models tiny-resnet --kinds bits --agents uniform sensitivity \\
        --seeds 0 --dataset synthetic --pretrain-epochs 1 --finetune-epochs 0.1 --workers 0 \\
        --out runs/bench/allocation_smoke --cache-dir runs/bench/allocation_smoke/cache
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a script owns its process (see benchmarks/quality.py)

import argparse
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `quality` and `bits_quality` as a script

from bits_quality import row_config, size_budget_bits
from quality import Row, append_result, base_config, chosen_origin, claim_row, mean_std, read_results, release_row

from automl_prune.config import SearchConfig
from automl_prune.report.summary import format_table

RESULTS = "results.jsonl"
AGENTS = ["uniform", "sensitivity", "ddpg", "optuna"]
#: Searchers started from the one-shot answer (``search_start: one-shot``), to measure that setting's default.
STARTED = {"ddpg-start": "ddpg", "optuna-start": "optuna"}
#: The sensitivity searcher given ``--episodes`` evaluations (its one-shot answer, then hedges around it: the
#: uniform answer, blends, perturbations), as ``agent: auto`` runs it for widths: the one-shot row's equal.
HEDGED = {"sensitivity-hedged": "sensitivity"}
AGENT_OF = {**STARTED, **HEDGED}  # benchmark method -> the pipeline's agent
SEARCHERS = ("ddpg", "optuna", *STARTED, *HEDGED)  # the rows whose evaluations are ``--episodes``
ORDER = {a: i for i, a in enumerate([*AGENTS[:2], *HEDGED, AGENTS[2], "ddpg-start", "optuna", "optuna-start"])}
PLAN: dict[str, dict[str, list[float]]] = {  # kind -> model -> budgets (FLOPs fractions; bits: full width)
    "widths": {"resnet56": [0.25, 0.1], "mobilenetv2-small": [0.25, 0.1]},
    "bits": {"resnet20": [1.0], "mobilenetv2-small": [1.0]},
    "joint": {"resnet20": [0.5], "mobilenetv2-small": [0.5]},
}
#: A model outside the plan gets these budgets per kind.
DEFAULT_BUDGETS = {"widths": [0.25], "bits": [1.0], "joint": [0.5]}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row of the plan: a method on a model, kind and budget, with a seed."""

    model: str
    kind: str
    budget: float
    agent: str
    seed: int

    def key(self, episodes: int) -> str:
        """Identity in the results file (a searcher row's evaluations are part of it)."""
        tail = f"|e{episodes}" if self.agent in SEARCHERS else ""
        return f"{self.model}|{self.kind}|{self.budget:g}|{self.agent}|{self.seed}{tail}"

    def run_dir(self, out: Path, episodes: int) -> Path:
        name = f"{self.agent}-e{episodes}" if self.agent in SEARCHERS else self.agent
        return out / self.model / self.kind / f"{self.budget:g}" / name / f"seed{self.seed}"


def plan(models: list[str] | None, kinds: list[str], agents: list[str], seeds: list[int],
         budgets: list[float] | None = None) -> list[Cell]:
    """Rows in run order: seed outermost, then model, kind, budget, and the methods in ``agents`` order (uniform
    and sensitivity first, so the profile is cached before the other searchers of that model and seed).
    ``budgets`` replaces the plan's FLOPs fractions of the widths and joint rows (bits rows are at full width)."""
    cells = []
    for seed in seeds:
        for kind in kinds:
            default = DEFAULT_BUDGETS[kind]
            chosen = PLAN[kind] if models is None else {m: PLAN[kind].get(m, default) for m in models}
            for model, planned in chosen.items():
                fractions = budgets if budgets and kind != "bits" else planned
                cells += [Cell(model, kind, b, a, seed) for b in fractions for a in agents]
    return cells


def config_of(args: argparse.Namespace, cell: Cell, episodes: int, out: Path) -> SearchConfig:
    """The pipeline config of one row, built by the helpers of `benchmarks/quality.py` (widths) and
    `benchmarks/bits_quality.py` (bits and joint) so that the settings match those benchmarks'."""
    if cell.kind == "widths":
        config = base_config(args, Row(cell.model, cell.budget, AGENT_OF.get(cell.agent, cell.agent), cell.seed), out)
    else:
        probe = SearchConfig(model=cell.model, dataset=args.dataset, data_root=args.data_root,
                             cache_dir=args.cache_dir, pretrain_seed=args.pretrain_seed, progress=not args.quiet,
                             pretrain_epochs=args.pretrain_epochs)
        size_bits, _ = size_budget_bits(probe, cell.kind, cell.budget, args.uniform_bits)
        config = row_config(argparse.Namespace(**{**vars(args), "flops": cell.budget}), cell.model, cell.kind,
                            AGENT_OF.get(cell.agent, cell.agent), cell.seed, size_bits, out)
    return config.replace(episodes=episodes, pretrain_epochs=args.pretrain_epochs,
                          finetune_epochs=args.finetune_epochs,
                          search_start="one-shot" if cell.agent in STARTED else "uniform")


def profile_cost(config: SearchConfig) -> int:
    """Evaluations the sensitivity row of ``config`` spends on its profile (when nothing is cached)."""
    from agents import SearchContext
    from agents.sensitivity import SensitivitySearcher
    from automl_prune.run.base_model import load_base
    from automl_prune.run.search_stage import run_budget

    space = load_base(config).space

    class _Nothing:
        def evaluate(self, architecture: Any) -> Any:
            raise RuntimeError("only the plan is needed")

    searcher = SensitivitySearcher(SearchContext(space, _Nothing(), run_budget(config, space),
                                                 search=config.resolved_search), quiet=True)
    cost = 0
    if searcher.searches_widths:
        cost += len(searcher.profile_plan(searcher.grid_steps(config.episodes)))
    if searcher.searches_bits:
        cost += len(searcher.bit_profile_plan())
    return cost


def episodes_of(args: argparse.Namespace, cell: Cell, out: Path) -> int:
    if cell.agent == "uniform":
        return 1
    if cell.agent == "sensitivity":
        return args.one_shot_episodes
    if not args.equal_cost:
        return args.episodes
    sensitivity = dataclasses.replace(cell, agent="sensitivity")
    config = config_of(args, sensitivity, args.one_shot_episodes, sensitivity.run_dir(out, args.one_shot_episodes))
    return profile_cost(config) + args.one_shot_episodes


def run_cell(args: argparse.Namespace, cell: Cell, episodes: int, run_dir: Path) -> dict[str, Any]:
    """The whole pipeline for one row; its numbers from ``summary.json`` (and ``profile.json``)."""
    from automl_prune.run.pipeline import run_search

    summary = run_search(config_of(args, cell, episodes, run_dir))
    comp, base = summary["compressed"], summary["base"]
    measured, reused = 0, 0
    record = run_dir / "profile.json"
    if record.exists():
        data = json.loads(record.read_text())
        for kind in ("widths", "bits"):
            measured += int((data.get(kind) or {}).get("measured", 0))
            reused += int((data.get(kind) or {}).get("reused", 0))
    return {"test_acc": comp["test_acc"], "val_acc": comp.get("val_acc_after_finetune"),
            "flops_ratio": comp["flops"] / base["flops"], "size_ratio": comp["size_bits"] / base["size_bits"],
            "bops_ratio": comp["bops"] / base["bops"], "evaluations": summary.get("evaluations"),
            "profile_measured": measured, "profile_reused": reused, "search_seconds": summary["search_seconds"],
            "rerank_seconds": summary.get("rerank_seconds", 0.0),
            "chosen_origin": (summary.get("chosen") or {}).get("origin"), "architecture": summary.get("architecture"),
            "bits": summary.get("bits"), "base_test_acc": base.get("test_acc")}


def paired(rows: list[dict[str, Any]], reference: dict[int, dict[str, Any]]) -> tuple[float, float, int] | None:
    """Mean and std (ddof=1) of the per-seed difference in test accuracy (points) to ``reference``'s rows."""
    diffs = [100 * (r["test_acc"] - reference[r["seed"]]["test_acc"]) for r in rows if r["seed"] in reference]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    return mean, std, len(diffs)


def report(out_dir: Path) -> str:
    """The table (Markdown, also ``OUT/allocation.md``) of every finished row."""
    rows = read_results(out_dir / RESULTS)
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["kind"], row["budget"], row["method"]), []).append(row)

    def by_seed(model: str, kind: str, budget: float, method: str) -> dict[int, dict[str, Any]]:
        return {r["seed"]: r for r in groups.get((model, kind, budget, method), [])}

    def fmt(value: tuple[float, float, int] | None) -> str:
        return "-" if value is None else f"{value[0]:+.2f} ± {value[1]:.2f} (n={value[2]})"

    order = ORDER
    table = []
    for (model, kind, budget, method), items in sorted(
            groups.items(), key=lambda g: (g[0][1], g[0][0], -g[0][2], order.get(g[0][3].split("-e")[0], 9), g[0][3])):
        acc = mean_std(100 * r["test_acc"] for r in items)
        vs_uniform = None if method == "uniform" else paired(items, by_seed(model, kind, budget, "uniform"))
        vs_one_shot = None if method == "sensitivity" else paired(items, by_seed(model, kind, budget, "sensitivity"))
        evaluations = mean_std(float(r.get("evaluations") or 0) for r in items)
        measured = mean_std(float(r.get("profile_measured", 0)) for r in items)
        reused = int(np.mean([r.get("profile_reused", 0) for r in items]))
        origins = [chosen_origin(r) for r in items]
        picks = {name: sum(name in (o or "").split(" = ") for o in origins) for name in ("uniform",
                                                                                          "sensitivity one-shot")}
        pick = "-" if method == "uniform" else f"uniform {picks['uniform']}, one-shot {picks['sensitivity one-shot']}"
        cost = "size" if kind == "bits" else "FLOPs"
        ratio = mean_std(r["size_ratio" if kind == "bits" else "flops_ratio"] for r in items)
        table.append([model, kind, budget_label(kind, budget), method,
                      f"{acc[0]:.2f} ± {acc[1]:.2f}", fmt(vs_uniform), fmt(vs_one_shot),
                      f"{evaluations[0]:.0f}", f"{measured[0]:.0f}" + (f" (+{reused} reused)" if reused else ""),
                      f"{mean_std(r['search_seconds'] for r in items)[0]:.0f}",
                      f"{mean_std(r['rerank_seconds'] for r in items)[0]:.0f}", f"{ratio[0]:.4f} {cost}", pick,
                      len(items)])
    text = format_table(["model", "kind", "budget", "method", "test acc % (mean ± std)", "vs uniform (paired pts)",
                         "vs one-shot (paired pts)", "search evals", "profile evals", "search s", "re-rank s",
                         "ratio", "ladder pick (of n)", "seeds"], table)
    header = ("Test accuracy after the pipeline's fine-tune (same recipe for every method); mean ± std over seeds; "
              "paired = per-seed differences, mean ± std. Equal-cost columns: search evals (history), profile evals "
              "measured by the row (reused from the cache in brackets), search and re-rank seconds. Bits rows: "
              "accuracy of the simulated (fake-quantized) model.\n")
    from automl_prune.atomic import atomic_write_text

    atomic_write_text(out_dir / "allocation.md", header + "\n" + text + "\n")
    if rows:
        plot(rows, out_dir / "allocation.png")
    return header + "\n" + text


def budget_label(kind: str, budget: float) -> str:
    """How a row's budget reads in the table and figure."""
    return {"widths": f"{budget:g} FLOPs", "bits": "4-bit size"}.get(kind, f"{budget:g} FLOPs, 4-bit size")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per model, kind and budget: each seed's test accuracy by method (a line joins one seed's methods, so the
    pairing shows) and each method's mean seconds of search (with the profile where the row measured it, not
    where it read it from the cache) and of re-ranking."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = sorted({(r["model"], r["kind"], r["budget"]) for r in rows})
    fig = Figure(figsize=(11, 3.8 * len(cases)), dpi=100)
    FigureCanvasAgg(fig)
    order = ORDER
    for k, (model, kind, budget) in enumerate(cases):
        mine = [r for r in rows if (r["model"], r["kind"], r["budget"]) == (model, kind, budget)]
        methods = sorted({r["method"] for r in mine}, key=lambda m: (order.get(m.split("-e")[0], 9), m))
        label = f"{model}, {kind}, {budget_label(kind, budget)}"
        ax = fig.add_subplot(len(cases), 2, 2 * k + 1)
        for seed in sorted({r["seed"] for r in mine}):
            points = [(i, 100 * r["test_acc"]) for i, m in enumerate(methods) for r in mine
                      if r["method"] == m and r["seed"] == seed]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", alpha=0.8, label=f"seed {seed}")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_ylabel("test accuracy % (after fine-tune)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = fig.add_subplot(len(cases), 2, 2 * k + 2)
        search = [float(np.mean([r["search_seconds"] for r in mine if r["method"] == m])) for m in methods]
        rerank = [float(np.mean([r["rerank_seconds"] for r in mine if r["method"] == m])) for m in methods]
        ax.bar(range(len(methods)), search, label="search (with the profile where the row measured it)")
        ax.bar(range(len(methods)), rerank, bottom=search, label="re-ranking ladder (fine-tunes)")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_ylabel("seconds, mean over seeds")
        ax.set_title(f"{label}: cost (2-core CPU, loose)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    """Run the missing rows, then write the table. Exit code 1 if a row failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="default: the plan's models per kind")
    parser.add_argument("--kinds", nargs="+", default=list(PLAN), choices=list(PLAN))
    parser.add_argument("--agents", nargs="+", default=AGENTS, choices=list(ORDER),
                        help="the methods; ddpg-start and optuna-start: ddpg and optuna with --search-start one-shot; "
                             "sensitivity-hedged: sensitivity with --episodes evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=None,
                        help="FLOPs fractions of the widths and joint rows (default: the plan's; widths 0.25 and 0.1, "
                             "joint 0.5)")
    parser.add_argument("--episodes", type=int, default=40, help="evaluations of ddpg and optuna")
    parser.add_argument("--one-shot-episodes", type=int, default=1, help="evaluations of the sensitivity row")
    parser.add_argument("--equal-cost", action="store_true",
                        help="ddpg and optuna get as many evaluations as the sensitivity row spends (its profile, "
                             "uncached, + its own)")
    parser.add_argument("--uniform-bits", type=int, default=4)
    parser.add_argument("--flops", type=float, default=1.0, help=argparse.SUPPRESS)  # bits_quality.row_config's
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=float, default=3.0)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--criterion", default="auto")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out", default="runs/bench/allocation")
    parser.add_argument("--workers", type=int, default=None, help="Ray workers per row (0: in process)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLCONFIGDIR", str((out_dir / ".cache" / "matplotlib").resolve()))
    failed = []
    if not args.report_only:
        from automl_prune.train.runtime import configure_torch

        configure_torch()
        cells = plan(args.models, args.kinds, args.agents, args.seeds, args.budgets)
        print(f"{len(cells)} rows planned", flush=True)
        for index, cell in enumerate(cells, 1):
            episodes = episodes_of(args, cell, out_dir)
            key, run_dir = cell.key(episodes), cell.run_dir(out_dir, episodes)
            if key in {r["key"] for r in read_results(out_dir / RESULTS)} or not claim_row(out_dir, key):
                print(f"[{index}/{len(cells)}] {key}: finished or running in another process; skipped", flush=True)
                continue
            print(f"[{index}/{len(cells)}] {key} -> {run_dir}", flush=True)
            start = time.perf_counter()
            try:
                metrics = run_cell(args, cell, episodes, run_dir)
            except KeyboardInterrupt:
                release_row(out_dir, key)
                raise
            except Exception:  # one broken row must not stop a background run of the others
                traceback.print_exc()
                failed.append(key)
                release_row(out_dir, key)
                print(f"[{index}/{len(cells)}] FAILED {key}; continuing", flush=True)
                continue
            method = f"{cell.agent}-e{episodes}" if cell.agent in SEARCHERS else cell.agent
            append_result(out_dir / RESULTS, {"key": key, **dataclasses.asdict(cell), "method": method,
                                              "episodes": episodes, **metrics, "run_dir": str(run_dir),
                                              "wall_seconds": time.perf_counter() - start,
                                              "dataset": args.dataset})
            release_row(out_dir, key)
            print(f"[{index}/{len(cells)}] done {key}: test {100 * metrics['test_acc']:.2f}%, search "
                  f"{metrics['search_seconds']:.0f} s ({metrics['evaluations']} evaluations, profile "
                  f"{metrics['profile_measured']} measured, {metrics['profile_reused']} reused)", flush=True)
    print(report(out_dir))
    if failed:
        print(f"{len(failed)} row(s) failed: {', '.join(failed)}; rerun the same command to retry", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
