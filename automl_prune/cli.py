"""The ``automl-prune`` command line: one small function per subcommand, in one table."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from automl_prune.config import DEFAULTS, SearchConfig, check_path, load_config_file
from automl_prune.errors import AutoMLPruneError, ConfigError

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser) -> None:
    """Flags every subcommand takes: the model and its data, then how the process runs."""
    data = parser.add_argument_group("model and data")
    run = parser.add_argument_group("run")
    data.add_argument("--model", help="zoo name, torchvision:NAME, or package.module:factory for your own "
                      f"(called with in_channels= and num_classes= when it takes them; default {DEFAULTS.model})")
    data.add_argument("--weights", help="your trained state dict (.pt, .pth, .safetensors) for --model: used as "
                      "the base model, no pretraining")
    data.add_argument("--dataset", help=f"fashion-mnist, cifar10, imagefolder, synthetic ({DEFAULTS.dataset})")
    data.add_argument("--data-root", help="folder with the dataset's files")
    data.add_argument("--input-size", type=int, help="imagefolder: side in pixels images are resized and "
                      "center-cropped to (default 32)")
    data.add_argument("--stream", help="imagefolder: read batches from disk (on), decode into memory (off), or "
                      "stream when the decoded folder is over a quarter of the memory (auto, default)")
    data.add_argument("--loader-workers", type=int, help="imagefolder streaming: DataLoader worker processes "
                      "(default min(4, CPUs - 1))")
    run.add_argument("--cache-dir", help=f"where base models are cached (default {DEFAULTS.cache_dir})")
    run.add_argument("--seed", type=int, help="seed of the search and the fine-tunes (default 0)")
    data.add_argument("--pretrain-epochs", type=float,
                      help=f"epochs the zoo base model is trained for when not cached ({DEFAULTS.pretrain_epochs:g})")
    run.add_argument("--threads", type=int, help="torch threads (default 1: fastest on small CPUs)")
    run.add_argument("--config", help="YAML file of settings (flags override it)")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                     help="no progress bars (one line per step instead)")


def _device_flags(group: Any) -> None:
    """``--device`` and ``--gpus-per-worker`` (search's parallel group, and resume)."""
    group.add_argument("--device", help="where to compute: auto (default: CUDA when a test kernel runs there, else "
                       "the CPU; the log says why), cpu, cuda, cuda:N")
    group.add_argument("--gpus-per-worker", type=float, metavar="SHARE",
                       help="each Ray worker's share of a GPU (0.5: two per GPU; default 1 on a machine with GPUs, "
                       "one worker per GPU; 0 without)")


def _config_from(args: argparse.Namespace) -> SearchConfig:
    return _front_from(args)[0]


def _front_from(args: argparse.Namespace) -> tuple[SearchConfig, str | None, list[Any]]:
    """The settings (YAML, then flags), and the front of budgets when one budget is a list (else ``None``)."""
    from automl_prune.run.front import split_front

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    for key in SearchConfig.__dataclass_fields__:
        flag = getattr(args, key, None)
        if flag is not None and key != "agent_options":
            values[key] = flag
    if ("size" in values or "bops" in values or "latency" in values) and "flops" not in values:
        values["flops"] = 1.0  # a size, BOPs or latency budget alone does not constrain FLOPs
    for item in getattr(args, "agent_option", None) or []:
        values.setdefault("agent_options", {})
        values["agent_options"] = {**values["agent_options"], **_parse_option(item)}
    settings, front_key, budgets = split_front(values)
    return SearchConfig(**settings), front_key, budgets


def _parse_option(item: str) -> dict[str, Any]:
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--agent-option must look like KEY=VALUE (e.g. steps=300), but got {item!r}")
    return {key.strip().replace("-", "_"): yaml.safe_load(raw)}


def _setup(config: SearchConfig) -> None:
    import os

    from automl_prune.train.runtime import configure_torch

    # FLOP counting imports torch._dynamo, which makes a compile cache in the system temp folder otherwise.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((Path(config.cache_dir) / "torchinductor").resolve()))

    configure_torch(config.threads)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Train (or load from the cache) the base model and print its accuracy and FLOPs."""
    config = _config_from(args)
    _setup(config)
    from automl_prune.report.summary import format_table
    from automl_prune.run.base_model import load_base
    from automl_prune.train.device import resolve_device, use_device

    with use_device(resolve_device(config.device), precision=config.precision):  # where a base is trained
        base = load_base(config)
    meta, full = base.meta, base.space.cost_model.full
    rows = [
        ["model", config.model],
        ["dataset", config.dataset],
        ["epochs", f"{meta['epochs']:g}"],
        ["val accuracy", f"{100 * meta['val_acc']:.2f}%"],
        ["test accuracy", f"{100 * meta['test_acc']:.2f}%"],
        ["FLOPs", f"{full.flops:,}"],
        ["params", f"{full.params:,}"],
        ["channel groups", str(len(base.space))],
        ["train time", f"{meta['train_seconds']:.1f} s" + (" (cached)" if meta.get("cached") else "")],
        ["checkpoint", meta["path"]],
    ]
    print(format_table(["base model", ""], rows))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Search per-group widths under a FLOPs budget, fine-tune the best, export it."""
    config, key, budgets = _front_from(args)
    _setup(config)
    if key is not None:  # a front of budgets: one search per budget, one profile
        from automl_prune.run.front import run_front

        run_front(config, key, budgets)
        return 0
    from automl_prune.run.pipeline import run_search

    run_search(config)
    return 0


#: What a resume may change: where things are and how the work runs, never what the run searches.
RESUME_MAY_CHANGE = ("data_root", "cache_dir", "threads", "workers", "progress", "loader_workers", "device",
                     "gpus_per_worker")


def cmd_resume(args: argparse.Namespace) -> int:
    """Finish the search in RUN_DIR with the settings it was started with."""
    run_dir = check_path("run_dir", args.run_dir, "folder", must_exist=True)
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ConfigError(f"{run_dir} holds no search to resume (no config.json); start one with `automl-prune search`")
    if args.config is not None:
        raise ConfigError(f"resume reads the settings the run was started with from {saved}; --config is not "
                          "taken (to search with other settings, start a new search with another --out)")
    values = json.loads(saved.read_text())
    values["out"] = str(run_dir)
    for key in SearchConfig.__dataclass_fields__:
        given = getattr(args, key, None)
        if given is None or key == "out":
            continue
        if key in RESUME_MAY_CHANGE:
            values[key] = given
        elif given != values.get(key):
            may = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)
            raise ConfigError(
                f"--{key.replace('_', '-')} defines the run and cannot change on resume (the run has "
                f"{values.get(key)!r}, given {given!r}); only {may} may; start a new search with another --out "
                "to change it"
            )
    known = set(SearchConfig.__dataclass_fields__)
    config = SearchConfig(**{k: v for k, v in values.items() if k in known})
    _setup(config)
    from automl_prune.run.pipeline import run_search

    run_search(config)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Prune the base model to an architecture JSON and export it (arch.json, weights.pt, optional ONNX)."""
    config = _config_from(args)
    _setup(config)
    from automl_prune.errors import InvalidArchitectureError
    from automl_prune.prune.pruning import compress
    from automl_prune.run.base_model import load_base
    from automl_prune.run.export import export
    from automl_prune.scoring.evaluator import accuracy_and_loss, recalibrate_batch_norm
    from search_spaces import Architecture

    path = check_path("arch", args.arch, "file", must_exist=True)
    check_path("out", args.out, "folder")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArchitectureError(f"architecture file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidArchitectureError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and data.get("model") not in (None, config.model):
        raise InvalidArchitectureError(
            f"{path} is an architecture of model {data['model']!r}, not of {config.model!r}; "
            f"pass --model {data['model']}"
        )
    arch = Architecture.from_dict(data)
    base = load_base(config)
    space = base.space
    arch = space.complete(space.validate(arch))
    from automl_prune.run.search_stage import calibration_data

    pruned = compress(base.model, space.graph, arch, config.resolved_criterion,
                      calibration=calibration_data(config, base), reconstruct=config.reconstruct)
    from automl_prune.data.datasets import Split

    train, val = base.splits.train, base.splits.val
    assert isinstance(train, Split) and isinstance(val, Split), "the CLI's datasets are in memory or on disk"
    batches = [train.images[i : i + 128] for i in range(0, 1280, 128)]
    recalibrate_batch_norm(pruned, batches)
    if arch.bits:  # as the search builds a candidate: fake-quantize, then calibrate the activation ranges
        from automl_prune.quantize.fake import calibrate, quantize

        pruned = calibrate(quantize(pruned, arch.bits, inplace=True), batches).eval()
    val_acc, _ = accuracy_and_loss(pruned, val.images, val.labels, 1000)
    out = export(args.out, model=pruned, space=space, architecture=arch, model_name=config.model,
                 in_channels=base.meta["in_channels"], num_classes=base.meta["num_classes"], dataset=config.dataset,
                 base_checkpoint_sha256=base.meta.get("sha256"), metrics={"val_acc_adaptive_bn": val_acc},
                 onnx=args.onnx)
    costs = space.costs(arch)
    print(f"exported {out} ({costs.flops:,} FLOPs, {costs.flops / space.full_flops:.3f}x; "
          f"val accuracy {100 * val_acc:.2f}% before fine-tuning)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's channel groups, their sizes and FLOPs, without training."""
    config = _config_from(args)
    _setup(config)
    import torch

    from automl_prune.data.datasets import load_dataset
    from automl_prune.models import build_model
    from automl_prune.report.summary import format_table
    from search_spaces import SearchSpace

    spec = load_dataset(config.dataset, config.data_root, **config.dataset_options).spec
    model = build_model(config.model, spec.in_channels, spec.num_classes, spec.input_size)
    space = SearchSpace.from_model(model, torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size),
                                   min_keep_ratio=config.min_keep_ratio, round_to=config.round_to)
    rows = [[d.name, d.size, d.min_keep, len(space.graph.group(d.name).member_layers())] for d in space.decisions]
    print(format_table(["group", "channels", "min keep", "layers coupled"], rows))
    print(f"\n{space.full_flops:,} FLOPs, {space.cost_model.full.params:,} params, {len(space)} decisions")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html of a finished search."""
    from automl_prune.report.run_report import write_report

    md, page = write_report(check_path("run_dir", args.run_dir, "folder", must_exist=True))
    print(f"wrote {md} and {page}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "pretrain": (cmd_pretrain, "train or load the base model; print its accuracy and FLOPs"),
    "search": (cmd_search, "search widths and/or bits under a budget, re-rank by fine-tuning, test, export"),
    "export": (cmd_export, "prune the base model to an architecture JSON and export it"),
    "info": (cmd_info, "show a model's channel groups and FLOPs"),
    "resume": (cmd_resume, "finish an interrupted search (search, re-rank, fine-tune, export) from its run directory"),
    "report": (cmd_report, "write report.md and a self-contained report.html of a finished search's run directory"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="automl-prune",
        description="Compress a trained CNN: per-layer channel widths and quantization bits under a FLOPs, size, "
        "BOPs or latency budget, found by a search, re-ranked by real fine-tunes, tested once and exported.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name == "search":
            g = p.add_argument_group("budget")
            front = (" (several values: a front, one search per budget in OUT/<budget>-<value>, sharing the "
                     "sensitivity profile)")
            g.add_argument("--flops", type=float, nargs="+", help=f"FLOPs budget, fraction of base ({DEFAULTS.flops}; "
                           "1 when only --size or --bops is given)" + front)
            g.add_argument("--size", nargs="+", help="model size budget: a fraction of the float32 model (0.125 = 4 "
                           "bits on average) or a size such as 1.5MB" + front)
            g.add_argument("--bops", type=float, nargs="+", help="bit-operations budget, fraction of the 32/32-bit "
                           "model" + front)
            g.add_argument("--latency", type=float, help="latency budget, fraction of the base model's latency "
                           "measured on this device (replaces --flops; a per-layer latency table is measured once "
                           "and cached in --cache-dir)")
            g.add_argument("--latency-batch-size", type=int,
                           help=f"batch size the latency budget is measured at ({DEFAULTS.latency_batch_size})")
            g = p.add_argument_group("search")
            g.add_argument("--search", help="what is decided: widths, bits, both, or auto (default: widths, plus "
                           "bits when --size or --bops is given)")
            g.add_argument("--agent", help="auto (default: sensitivity for widths or bits alone, ddpg for both), "
                           "ddpg, ppo, optuna, optuna-mo, dmcp, sensitivity, global, uniform, random")
            g.add_argument("--episodes", type=int, help=f"architectures to evaluate ({DEFAULTS.episodes}; sensitivity "
                           "first measures its width profile: the finest grid of at most twice as many points, else "
                           "the coarsest; cached per base model)")
            g.add_argument("--agent-option", action="append", metavar="KEY=VALUE",
                           help="searcher option, repeatable (e.g. steps=300 for dmcp, warmup_episodes=10 for ddpg)")
            g.add_argument("--reward", help="RL reward: accuracy or acc_flops_log")
            g.add_argument("--min-keep-ratio", type=float,
                           help="no group keeps fewer than this fraction of its channels "
                           f"({DEFAULTS.min_keep_ratio:g})")
            g.add_argument("--round-to", type=int, help=f"widths are multiples of this ({DEFAULTS.round_to})")
            g.add_argument("--exclude", action="append", metavar="PATTERN",
                           help="keep the layers whose module path matches at full width, repeatable (a path, a "
                           "prefix such as layer1, or a glob such as 'features.*.conv')")
            g.add_argument("--storage", help="Optuna storage URL (default: SQLite file in the run directory)")
            g.add_argument("--no-fill-budget", dest="fill_budget", action="store_false", default=None,
                           help="keep the searcher's best as is instead of widening it to spend leftover FLOPs")
            g.add_argument("--time-limit", metavar="DURATION",
                           help="end the search after this wall-clock time (90s, 30m, 2h) and finish the run "
                           "(re-rank, fine-tune, export) with what it found")

            g.add_argument("--search-start", help="where ddpg, ppo and optuna start: uniform (default) or one-shot "
                           "(the sensitivity profile's answer, measured or read from the cache)")
            g.add_argument("--one-shot-entrant", help="when the re-ranking ladder enters the sensitivity one-shot "
                           "answer beside the uniform one: always (default; its coarse profile is measured once "
                           "when no cache holds it), if-cheaper (only when that costs at most --episodes "
                           "evaluations) or never")

            g = p.add_argument_group("criterion and proxy")
            g.add_argument("--criterion", help="which channels a group keeps: auto (default: reap, or l1-std for "
                           "--agent global), l1, l2, bn_scale, fpgm, l1-std, taylor, ezcrop, similarity, reap, ccp")
            g.add_argument("--reconstruct", action="store_true", default=None,
                           help="after pruning, re-fit each pruned layer by least squares to the base model's outputs")
            g.add_argument("--calibration-size", type=int,
                           help="training images data-driven criteria and --reconstruct see (default 512)")
            g.add_argument("--proxy", help="how candidates are scored: auto (default: adaptive BN; with a criterion "
                           "that does not re-fit, e.g. l1, 100 fine-tune steps first below 50%% FLOPs; as "
                           "measured), adaptive-bn, or finetune")
            g.add_argument("--proxy-finetune-steps", type=int,
                           help="fine-tune steps per candidate with --proxy finetune (default 20)")
            g.add_argument("--val-batches", type=int,
                           help="score candidates on the first N batches of the validation data (the final model "
                           "is scored on all of it; default: all)")
            g = p.add_argument_group("fine-tune")
            g.add_argument("--finetune-epochs", type=float,
                           help="epochs of the final fine-tune; the ladder's rungs lead up to it "
                           f"({DEFAULTS.finetune_epochs:g})")
            g.add_argument("--finetune-lr", type=float,
                           help=f"peak learning rate of the fine-tunes (SGD + Nesterov; {DEFAULTS.finetune_lr:g})")
            g.add_argument("--distill", action="store_true", default=None,
                           help="fine-tune with knowledge distillation from the base model")
            g.add_argument("--distill-temperature", type=float, help="softmax temperature of --distill (4)")
            g.add_argument("--distill-weight", type=float, help="weight of the distillation term in [0, 1] (0.5)")
            g.add_argument("--regularize", help="before each candidate's fine-tune, train the full-width base model "
                           "with a penalty driving the channels it removes to zero, then cut them: none (default), "
                           "group-lasso, growing-l2")
            g.add_argument("--regularize-steps", type=int,
                           help=f"steps of that regularized phase ({DEFAULTS.regularize_steps})")
            g.add_argument("--regularize-strength", type=float,
                           help="group lasso's coefficient, or growing L2's ceiling "
                           f"({DEFAULTS.regularize_strength:g})")
            g.add_argument("--pretrain-seed", type=int, help="seed of the base model's training (default 0)")
            g = p.add_argument_group("re-ranking")
            g.add_argument("--rerank-top-k", type=int,
                           help=f"search candidates re-ranked by fine-tuning, plus uniform ({DEFAULTS.rerank_top_k})")
            g.add_argument("--rerank-rungs", type=int, help=f"fine-tune rungs of the ladder ({DEFAULTS.rerank_rungs})")
            g.add_argument("--rerank-eta", type=int, help=f"keep 1/eta per rung ({DEFAULTS.rerank_eta})")
            g = p.add_argument_group("parallel")
            g.add_argument("--workers", type=int,
                           help="parallel single-thread Ray workers (default: one per CPU; 0: no Ray, in process)")
            g.add_argument("--address", help="join an existing Ray cluster (auto, HOST:PORT or ray://...)")
            _device_flags(g)
            g.add_argument("--precision",
                           help="fine-tunes and scoring on a GPU: auto (default: bf16 where the GPU supports it, "
                           "else fp16 with loss scaling), fp32, bf16, fp16; always fp32 on the CPU")
            g.add_argument("--deterministic", action="store_true", default=None,
                           help="deterministic cuDNN and torch.use_deterministic_algorithms for the run (slower "
                           "on a GPU; for exact repeats)")
            g = p.add_argument_group("output")
            g.add_argument("--out", help=f"run directory (default {DEFAULTS.out}); an existing one is resumed")
            g.add_argument("--onnx", action="store_true", default=None, help="also export ONNX")
        if name == "resume":
            p.add_argument("run_dir", help="the run directory of a search that was interrupted")
            p.add_argument("--workers", type=int, help="parallel workers for what is left (default: as before)")
            _device_flags(p)
        if name == "report":
            p.add_argument("run_dir", help="the run directory of a finished search")
        if name == "export":
            p.add_argument("--arch", required=True, help="architecture JSON ({'widths': {...}} or an arch.json)")
            p.add_argument("--out", required=True, help="output folder")
            p.add_argument("--criterion", help="which channels a group keeps (as for search; default auto = reap)")
            p.add_argument("--reconstruct", action="store_true", default=None,
                           help="re-fit each pruned layer by least squares to the base model's outputs")
            p.add_argument("--calibration-size", type=int, help="training images for data-driven criteria (512)")
            p.add_argument("--onnx", action="store_true", help="also export ONNX")
        if name == "info":
            p.add_argument("--min-keep-ratio", type=float)
            p.add_argument("--round-to", type=int)
    return parser


def _configure_process() -> None:
    """Process-wide settings that belong to the command, never to a library import.

    OpenMP reads ``OMP_WAIT_POLICY`` when torch loads: with its default spinning, elementwise ops ran 10-40x
    slower here whenever another process shared a core (measured; see `automl_prune.train.runtime`). Set only when
    torch is not loaded yet (a command run in a fresh process); in someone's Python it would change nothing
    but their environment.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: usage errors and bad input give one line on stderr and exit code 2."""
    _configure_process()
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except AutoMLPruneError as exc:
        print(f"automl-prune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
