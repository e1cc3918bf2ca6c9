"""Export a compressed model as plain data (``arch.json`` + a state dict) and rebuild it from them.

Nothing pickled: the architecture is replayed on the base model definition (`compress` with the exported
widths), then the weights are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from automl_prune.atomic import atomic_write, atomic_write_text
from automl_prune.errors import CheckpointError, InvalidArchitectureError
from automl_prune.graph.analysis import analyze
from automl_prune.prune.pruning import compress_widths
from search_spaces import Architecture, SearchSpace

__all__ = ["ARCH_SCHEMA_VERSION", "export", "load", "read_arch_json"]

ARCH_SCHEMA_VERSION = 1


def export(
    out_dir: str | Path,
    *,
    model: nn.Module,
    space: SearchSpace,
    architecture: Architecture,
    model_name: str,
    in_channels: int,
    num_classes: int,
    dataset: str | None = None,
    base_checkpoint_sha256: str | None = None,
    metrics: dict[str, Any] | None = None,
    onnx: bool = False,
    latency: dict[str, Any] | None = None,
) -> Path:
    """Write ``arch.json`` and ``weights.pt`` (and ``model.onnx`` if asked) into ``out_dir``.

    An architecture with bits also writes ``weights.packed`` (`automl_prune.quantize.packing`: the weights at their bit
    width; its payload is the size in ``arch.json``), and ``arch.json`` gains ``bits``, ``size_bits``, ``bops``.

    Args:
        out_dir: Created if missing.
        model: The compressed model whose weights are exported (already pruned to ``architecture``).
        space: The search space of the base model, for costs and validation.
        architecture: The widths ``model`` was pruned to.
        model_name: Name the base definition is rebuilt from (`automl_prune.models.build_model`).
        in_channels: Input channels the base definition was adapted to.
        num_classes: Classes the base definition was adapted to.
        dataset: Recorded for the reader.
        base_checkpoint_sha256: Identifies the base weights the architecture was found on.
        metrics: Anything measured (accuracies, timings).
        onnx: Also export ONNX (needs the ``onnx`` extra).
        latency: Measured latency of the base and the compressed model (`automl_prune.run.pipeline`'s summary
            ``latency``), written as ``latency``.

    Returns:
        The path of ``arch.json``.
    """
    out = Path(out_dir)
    architecture = space.complete(space.validate(architecture))
    costs = space.true_costs(architecture)  # FLOPs even when the search budgeted predicted latency
    full = space.flops_model.full
    record = {
        "schema_version": ARCH_SCHEMA_VERSION,
        "model": model_name,
        "dataset": dataset,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_shape": [1, *space.graph.input_shape[1:]],
        "base_checkpoint_sha256": base_checkpoint_sha256,
        # Every channel group of the network, searched or not (a group left out of the search is at full width).
        "widths": {g.name: int(architecture.widths.get(g.name, g.size)) for g in space.graph.groups},
        "full_widths": {g.name: g.size for g in space.graph.groups},
        "flops": costs.flops,
        "params": costs.params,
        "base_flops": full.flops,
        "base_params": full.params,
        "flops_ratio": costs.flops / full.flops,
        "metrics": metrics or {},
    }
    if latency is not None:
        record["latency"] = latency
    if architecture.bits:
        from automl_prune.quantize.packing import save_packed

        breakdown = space.size_breakdown(architecture)
        record.update({
            "bits": {name: list(pair) for name, pair in architecture.bits.items()},
            "size_bits": breakdown.total,
            "size_breakdown_bits": {"weights": breakdown.weight_bits, "weight_scales": breakdown.scale_bits,
                                    "activation_ranges": breakdown.activation_bits, "float": breakdown.float_bits},
            "base_size_bits": space.full_size_bits,
            "bops": space.bops(architecture),
            "base_bops": space.full_bops,
            "accuracy_is": "simulated (fake-quantized on float kernels)",
        })
        packed = save_packed(out / "weights.packed", model)
        record["packed_payload_bytes"] = (breakdown.total + 7) // 8
        record["packed_file_bytes"] = packed.stat().st_size
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "weights.pt", lambda fh: torch.save(state, fh))
    if onnx:
        from automl_prune.quantize.onnx_export import ONNX_CONTENT

        _export_onnx(model, cast("list[int]", record["input_shape"]), out / "model.onnx")
        record["onnx"] = {"file": "model.onnx", "batch": "dynamic",
                          "holds": ONNX_CONTENT if architecture.bits else "float graph"}
    atomic_write_text(out / "arch.json", json.dumps(record, indent=2))
    return out / "arch.json"


def _export_onnx(model: nn.Module, input_shape: list[int], path: Path) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise CheckpointError("ONNX export needs the onnx extra: pip install 'automl-prune[onnx]'") from exc
    from automl_prune.quantize.onnx_export import export_onnx

    temporary = path.with_name(f".{path.name}.partial")
    export_onnx(model, input_shape, temporary)
    temporary.replace(path)


def read_arch_json(path: str | Path) -> dict[str, Any]:
    """Read and check an exported ``arch.json``; errors name the file and what is wrong."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArchitectureError(f"architecture file not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArchitectureError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise InvalidArchitectureError(f"{path} must hold a JSON object, got {type(record).__name__}")
    missing = [k for k in ("schema_version", "model", "in_channels", "num_classes", "input_shape", "widths")
               if k not in record]
    if missing:
        raise InvalidArchitectureError(f"{path} is not an exported arch.json: missing keys {missing}")
    if record["schema_version"] != ARCH_SCHEMA_VERSION:
        raise InvalidArchitectureError(
            f"{path} has schema_version {record['schema_version']}; this version reads {ARCH_SCHEMA_VERSION}"
        )
    return record


def load(arch_json: str | Path, weights: str | Path | None = None, *, model: nn.Module | None = None,
         map_location: str = "cpu") -> nn.Module:
    """Rebuild an exported model: base definition -> replayed widths -> weights (``weights_only=True``).

    Args:
        arch_json: An ``arch.json`` written by `export`.
        weights: Its ``weights.pt``; defaults to the file beside ``arch_json``.
        model: The base definition to replay the widths on (an instance of the uncompressed model; its weights
            do not matter). Needed for a model searched from Python (`automl_prune.search`); by default the
            definition is rebuilt from the recorded name (zoo, ``torchvision:NAME``, ``package.module:factory``).
        map_location: Where tensors are loaded.
    """
    import copy

    from automl_prune.models import build_model

    arch_path = Path(arch_json)
    record = read_arch_json(arch_path)
    weights_path = Path(weights) if weights is not None else arch_path.with_name("weights.pt")
    shape = tuple(record["input_shape"])
    if model is not None:
        base = copy.deepcopy(model).to("cpu")
    elif str(record["model"]).startswith("python:"):
        raise InvalidArchitectureError(
            f"{arch_path} was searched on a Python model object ({record['model'][len('python:'):]}); pass an "
            "instance of the uncompressed model: automl_prune.load(path, model=MyNet())")
    else:
        base = build_model(record["model"], in_channels=record["in_channels"], num_classes=record["num_classes"],
                           input_size=shape[-1])
    graph = analyze(base, torch.zeros(shape))
    widths = {str(k): int(v) for k, v in record["widths"].items()}
    for name, kept in widths.items():
        if name not in graph.group_index:
            raise InvalidArchitectureError(
                f"{arch_path}: group {name!r} does not exist in model {record['model']!r}"
            )
        size = graph.group(name).size
        if not 1 <= kept <= size:
            raise InvalidArchitectureError(f"{arch_path}: width of {name!r} must be in [1, {size}], got {kept}")
    if record.get("bits"):
        from automl_prune.quantize.fake import quantize

        bits = {str(k): (int(v[0]), int(v[1])) for k, v in record["bits"].items()}
        model = quantize(compress_widths(base, graph, widths), bits, inplace=True)
    else:
        model = compress_widths(base, graph, widths)
    try:
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"weights file not found: {weights_path}") from exc
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"cannot read weights {weights_path}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{weights_path} does not match {arch_path}: {first}") from exc
    return model.eval()
