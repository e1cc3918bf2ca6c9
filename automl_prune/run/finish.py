"""The finish stage: fine-tune the winner, test it once, export it, measure latency and int8, draw the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from automl_prune.atomic import atomic_write_text
from automl_prune.config import SearchConfig
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.errors import TrainingDivergedError
from automl_prune.run.base_model import BaseModel, log
from automl_prune.run.run_dir import write_json
from search_spaces import Budget

__all__ = ["finish_run", "measure_final_latency"]


def finish_run(config: SearchConfig, base: BaseModel, run_dir: Path, result: Any, chosen: Any, model: torch.nn.Module,
               ladder: Any, val_after: float, search_seconds: float, rerank_seconds: float) -> dict[str, Any]:
    """Test the chosen model once, export it, write the summary and the pictures."""
    from automl_prune.report.summary import format_table, summary_rows
    from automl_prune.run.export import export
    from automl_prune.train.training import evaluate_accuracy

    space = base.space
    best = chosen.architecture
    for name, value in model.state_dict().items():  # the trainer stops on a NaN loss; weights are checked too
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(f"the fine-tuned model's {name!r} holds NaN or infinite values; nothing "
                                        "is exported: lower the learning rate (--finetune-lr)")
    test_acc = None
    if base.splits.test is not None:
        test_acc, _ = evaluate_accuracy(model, base.splits.test, batch_size=250, metric=base.task.metric)
    else:
        log("no test data was given: the summary has no test accuracy")
    costs, full = space.true_costs(best), space.flops_model.full  # FLOPs even under a latency budget
    finetune_seconds = 0.0
    if ladder is not None:
        finetune_seconds = sum(r.seconds for (cid, _), r in ladder.results.items() if cid == chosen.id)
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "agent": config.agent,
        "flops_budget": config.flops,
        "base": {"flops": full.flops, "params": full.params, "val_acc": base.meta["val_acc"],
                 "test_acc": base.meta["test_acc"], "size_bits": space.full_size_bits, "bops": space.full_bops},
        "compressed": {"flops": costs.flops, "params": costs.params, "size_bits": space.size_bits(best),
                       "bops": space.bops(best),
                       "val_acc_before_finetune": chosen.proxy_accuracy, "val_acc_after_finetune": val_after,
                       "test_acc": test_acc},
        "chosen": {"id": chosen.id, "origin": chosen.origin},
        "search_best": {"architecture": space.complete(result.best).widths,
                        "proxy_accuracy": result.best_metrics["accuracy"]},
        "search_proxy_finetune_steps": config.search_finetune_steps,
        "evaluations": len(result.history),
        "evaluations_planned": config.episodes,
        # A one-shot start (search_start): where it came from and the profile evaluations it cost.
        **({"search_start": result.extra["search_start"]} if "search_start" in result.extra else {}),
        # A sensitivity search: its profile's evaluations (beyond `evaluations`, inside `search_seconds`).
        **({"profile": _profile_cost(result.extra)} if "profile_measured" in result.extra else {}),
        # The ladder's sensitivity one-shot entrant: where it came from, the profile evaluations and seconds it cost
        # beyond the search's (`rerank_stage.one_shot_entrant`), or why it was skipped.
        **({"one_shot": result.extra["ladder_one_shot"]} if "ladder_one_shot" in result.extra else {}),
        "stopped_by_time_limit": bool(result.extra.get("stopped_by_time_limit", False)),
        "search_seconds": search_seconds,
        "rerank_seconds": rerank_seconds,
        "finetune_seconds": finetune_seconds,
        "architecture": best.widths,
        **({"bits": {k: list(v) for k, v in best.bits.items()}, "accuracy_is": "simulated (fake-quantized)"}
           if best.bits else {}),
        **({"rerank": ladder.to_dict()} if ladder is not None else {}),
        **({"pareto_front": result.extra["pareto_front"]} if "pareto_front" in result.extra else {}),
        # A custom task (Python API): every "acc" number above is its metric, every fine-tune used its loss.
        **({"metric": base.task.score_name} if base.task.metric is not None else {}),
        **({"loss": base.task.loss_name} if base.task.loss is not None else {}),
        "compute": _compute_record(config),
    }
    if config.latency is not None:
        summary["latency"] = measure_final_latency(config, base, model, best, result.budget)
    export(run_dir / "best", model=model, space=space, architecture=best, model_name=config.model,
           in_channels=base.meta["in_channels"], num_classes=base.meta["num_classes"], dataset=config.dataset,
           base_checkpoint_sha256=base.meta.get("sha256"), metrics=summary["compressed"], onnx=config.onnx,
           latency=summary.get("latency"))
    if best.bits:
        summary["int8"] = _int8_realisation(model, base, best, run_dir / "best")
    _draw(config, space, best, costs.flops / full.flops, ladder, run_dir,
          score_name=base.task.score_name if base.task.metric is not None else "accuracy")
    write_json(run_dir / "summary.json", summary)
    rows = summary_rows(summary)
    if "latency" in summary:
        lat = summary["latency"]
        for batch, pair in lat["measured_ms"].items():
            where = (f"{lat['threads']} threads" if lat.get("device_type", "cpu") == "cpu"
                     else f"{lat['device_type']}, {lat.get('precision', 'fp32')}")
            rows.append([f"latency, batch {batch} ({where}, median)",
                         f"{pair['base']['median_ms']:.3f} ms", f"{pair['compressed']['median_ms']:.3f} ms"])
        rows.append([f"latency budget ({lat['budget']:g}, batch {lat['batch_size']})", f"{lat['budget_ms']:.3f} ms",
                     f"{'met' if lat['met'] else 'met within noise' if lat['met_within_noise'] else 'NOT met'} "
                     f"({lat['ratio']:.3f}x, noise +/-{lat['noise_ms']:.3f} ms)"])
    rows.append(["chosen by re-ranking", "-", f"{chosen.id} ({chosen.origin})"])
    rows.append(["re-rank time (incl. fine-tune)", "-", f"{rerank_seconds:.1f} s"])
    table = format_table(["", "base", "compressed"], rows)
    atomic_write_text(run_dir / "summary.md", table + "\n")
    print(table)
    from automl_prune.report.run_report import write_report

    write_report(run_dir)
    pictures = "widths.png" + (", ../ladder.png" if ladder is not None else "") + ", ../report.md"
    print(f"\nexported to {run_dir / 'best'} (arch.json, weights.pt, {pictures})")
    return summary


def _compute_record(config: SearchConfig) -> dict[str, Any]:
    """Where the run computed: its device (and why), the precision of fine-tunes and scoring, determinism."""
    from automl_prune.train.device import resolve_device, resolve_precision

    decision = resolve_device(config.device)
    return {"device": str(decision.device), "reason": decision.reason, "setting": config.device,
            "precision": resolve_precision(config.precision, decision.device).name,
            "deterministic": config.deterministic}


def measure_final_latency(config: SearchConfig, base: BaseModel, model: torch.nn.Module, best: Any,
                          budget: Budget, rounds: int = 21) -> dict[str, Any]:
    """Measured latency of the base and the compressed model at batch 1 and ``latency_batch_size``, interleaved,
    and whether the compressed one meets the latency budget, strictly and within the measured noise.

    Noise is half the compressed model's interquartile range plus the budget fraction times half the base
    model's (the uncertainty of both medians the check compares). A model with bits is timed as its float
    realisation (the simulated quantization is not a deployment). ``budget`` is the search's (a latency budget:
    its width limit is the predicted latency in ns).

    Both models are timed on the run's device (`automl_prune.train.device.current_device`), as copies with their
    weights in the run's precision there (fp32 on the CPU; CUDA events after a synchronize on a GPU), as the
    latency table was; the record states the device, the precision and the batch.
    """
    assert config.latency is not None, "called only for a run with a latency budget"
    from automl_prune.cost.timing import compare_latency, device_name, on_target
    from automl_prune.train.device import current_device

    space = base.space
    compressed = model
    if best.bits:
        from automl_prune.quantize.int8 import _as_float_model

        compressed = _as_float_model(model)
    batch = config.latency_batch_size
    batches = sorted({1, batch})
    device = current_device()
    base_model, precision = on_target(base.model, device)
    compressed, _ = on_target(compressed, device)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else f"{device}, {precision}"
    log(f"measuring the latency of the base and the compressed model ({rounds} interleaved rounds, batch "
        f"{', '.join(map(str, batches))}, {where})")
    measured = compare_latency({"base": base_model, "compressed": compressed}, tuple(space.graph.input_shape[1:]),
                               batches, rounds=rounds)
    b, c = measured[batch]["base"], measured[batch]["compressed"]
    budget_ms = config.latency * b["median_ms"]
    noise_ms = 0.5 * c["iqr_ms"] + config.latency * 0.5 * b["iqr_ms"]
    table = getattr(space.cost_model, "table", None)
    record: dict[str, Any] = {
        "budget": config.latency,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "device": device_name(device),
        "device_type": device.type,
        "precision": precision,
        "statistic": f"median of {rounds} interleaved rounds (base and compressed alternate, one forward pass or "
                     "more per round lasting >= 1 ms); noise = half the compressed model's IQR + budget x half "
                     "the base model's IQR",
        "measured_ms": {str(bs): measured[bs] for bs in batches},
        "ratio": c["median_ms"] / b["median_ms"],
        "ratio_of_minimums": c["min_ms"] / b["min_ms"],
        "budget_ms": budget_ms,
        "noise_ms": noise_ms,
        "met": c["median_ms"] <= budget_ms,
        "met_within_noise": c["median_ms"] <= budget_ms + noise_ms,
        "predicted_ms": {"base": space.full_flops / 1e6, "compressed": space.flops(best) / 1e6,
                         "budget": budget.flops / 1e6},
    }
    if table is not None:
        record["table"] = {"file": table.meta.get("file"), "fit": table.meta.get("fit"), "device": table.device,
                           "threads": table.threads, "batch_size": table.batch_size}
    verdict = ("met" if record["met"] else "met within the measured noise" if record["met_within_noise"]
               else "NOT met")
    log(f"latency at batch {batch}: base {b['median_ms']:.3f} ms, compressed {c['median_ms']:.3f} ms "
        f"({record['ratio']:.3f}x; budget {config.latency:g}, {budget_ms:.3f} ms, noise +/-{noise_ms:.3f} ms): "
        f"{verdict}")
    return record


def _int8_realisation(model: torch.nn.Module, base: BaseModel, best: Any, out: Path) -> dict[str, Any]:
    """The layers at 8/8 bits as real int8 kernels (ONNX Runtime), with measured latency next to the same graph
    in float; layers below 8 bits have no CPU kernel, stay float there, and no speed-up is claimed for them."""
    try:
        from automl_prune.quantize.int8 import (
            export_int8_onnx,
            int8_layers_from_bits,
            int8_node_counts,
            measure_latency,
        )
    except ImportError as exc:
        return {"skipped": f"needs the onnx extra (pip install 'automl-prune[onnx]'): {exc}"}
    layers = int8_layers_from_bits(best.bits)
    below = sorted(name for name, (w, a) in best.bits.items() if min(w, a) < 8)
    record: dict[str, Any] = {"int8_layers": layers, "layers_without_a_cpu_kernel": below,
                              "note": "latency of the int8 layers only; layers below 8 bits run in float here, "
                                      "their size counts as packed and their cost as BOPs, no speed-up claimed"}
    if not layers:
        record["skipped"] = "no layer at 8/8 bits: no int8 kernel applies"
        return record
    train = base.splits.train
    if isinstance(train, LoaderSplit):
        batches = [x for x, _ in train.take(512)]
    else:
        batches = [train.images[i:i + 64] for i in range(0, min(len(train), 512), 64)]
    path = export_int8_onnx(model, batches, out / "model.int8.onnx", int8_layers=layers)
    float_path = path.with_name(path.name.replace(".int8.onnx", ".int8.float.onnx"))
    if not float_path.exists():
        float_path = next(p for p in out.glob("*.float.onnx"))
    shape = tuple(batches[0].shape[1:])
    float_latency = measure_latency(float_path, shape, batch_sizes=(1, 64), threads=1)
    int8_latency = measure_latency(path, shape, batch_sizes=(1, 64), threads=1)
    record.update({
        "int8_nodes": int8_node_counts(path),
        "threads": 1,
        "latency_ms": {str(b): {"float_onnxruntime": float_latency["batches"][b]["median_ms"],
                                "int8_onnxruntime": int8_latency["batches"][b]["median_ms"]} for b in (1, 64)},
        "files": [path.name, float_path.name],
    })
    log("int8 realisation: " + ", ".join(
        f"batch {b}: {v['float_onnxruntime']:.2f} ms float -> {v['int8_onnxruntime']:.2f} ms int8"
        for b, v in record["latency_ms"].items()) + " (ONNX Runtime, 1 thread, median)")
    return record


def _draw(config: SearchConfig, space: Any, best: Any, ratio: float, ladder: Any, run_dir: Path, *,
          score_name: str = "accuracy") -> None:
    from automl_prune.report.summary import plot_widths
    from automl_prune.train.runtime import scoped_environ

    # matplotlib would put its font cache in the home directory: keep it in the run directory.
    with scoped_environ({"MPLCONFIGDIR": str((run_dir / ".cache" / "matplotlib").resolve())}):
        plot_widths({d.name: d.size for d in space.decisions}, best.widths, run_dir / "best" / "widths.png",
                    f"{config.model}: channels kept at {ratio:.2f}x FLOPs ({config.agent})")
        if ladder is not None:
            from automl_prune.report.ladder_plot import plot_ladder

            plot_ladder(ladder.to_dict(), run_dir / "ladder.png",
                        f"{config.model} at {config.flops:g} FLOPs ({config.agent}): re-ranking ladder",
                        score_name=score_name)


def _profile_cost(extra: dict[str, Any]) -> dict[str, Any]:
    """What a sensitivity search's profile cost: points measured now, points read from the cache, solve time."""
    return {"measured": int(sum(extra["profile_measured"].values())),
            "reused": int(sum(extra.get("profile_reused", {}).values())),
            "solve_seconds": float(extra.get("solve_seconds") or 0.0)}
