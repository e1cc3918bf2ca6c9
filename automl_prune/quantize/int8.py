"""Real int8 inference on the CPU: ONNX Runtime static quantization of the 8/8-bit layers, and honest timings.

`automl_prune.quantize.fake` *simulates* k-bit quantization on float kernels, so it says nothing about speed.
This module
realises the layers an architecture keeps at 8/8 bits as real int8 kernels and measures what that buys:

- `export_int8_onnx` exports the (width-compressed, float) model to ONNX and quantizes it statically with ONNX
  Runtime: QDQ format, weights int8 per output channel and symmetric (the same grid as `quant`'s 8-bit weights:
  ``scale_c = max|W_c| / 127``; about 7 bits, ``/ 64``, on x86 CPUs without VNNI, see `reduced_weight_range_needed`),
  activations uint8 per tensor and asymmetric (ONNX Runtime's fast x86 combination, U8S8), ranges from min/max
  calibration on the given training batches, biases int32 (``input_scale * weight_scale_c``, zero point 0).
  ONNX Runtime's graph optimizer fuses each ``DequantizeLinear -> Conv/Gemm -> QuantizeLinear`` into one
  ``QLinearConv``/``QGemm`` that computes in int8 with int32 accumulation (`int8_node_counts` counts them in the
  optimized graph the session really runs).
- Layers below 8 bits have no int8 CPU kernel and layers at 16/32 bits are float by definition: **they stay
  float** in this realisation (their simulated accuracy belongs to `quant`; no speed-up is claimed for them).
  ONNX Runtime would quietly quantize such a float Conv/Gemm to per-tensor int8 when its input comes from a
  ``DequantizeLinear`` (its ``WeightBiasQuantization`` graph transformer); every session made here disables that
  transformer (`DISABLED_OPTIMIZERS`, also written into the model's metadata), so a float layer really runs in
  float. A session of your own must pass ``disabled_optimizers=DISABLED_OPTIMIZERS`` for the same graph.
- `measure_latency` times the float PyTorch model, the float ONNX Runtime session and the int8 session the same
  way (warm-up, then the median and interquartile range of single timed runs, a stated number of threads), so
  that the int8 speed-up is read against float *in the same runtime*, not against PyTorch.

Why ONNX Runtime and not torchao's PT2E path with the x86 Inductor quantizer: PT2E is no longer part of torch
(2.14) and torchao is not installed; its int8 kernels exist only after ``torch.compile`` with Inductor, i.e. a C++
toolchain and a compile per model and batch shape (minutes on this 2-core machine), and what runs is generated
code that is hard to inspect. ONNX Runtime is one ``pip install`` (wheels for every platform, no compiler), its
static QDQ quantization takes well under a second, keeping chosen layers float is a list of node names, the
optimized graph can be saved and its ``QLinearConv`` nodes counted, and the ONNX file is the deployable artefact
(the project already exports ONNX, `automl_prune.run.export`). Needs the ``onnx`` extra
(``pip install 'automl-prune[onnx]'``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import platform
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from automl_prune.errors import CheckpointError, ConfigError
from automl_prune.quantize.fake import QuantConv2d, QuantLinear, quantizable_layers

if TYPE_CHECKING:
    import onnx
    import onnxruntime

    from automl_prune.data.datasets import Split

__all__ = [
    "DISABLED_OPTIMIZERS",
    "INPUT_NAME",
    "INT8_BITS",
    "OUTPUT_NAME",
    "create_session",
    "export_float_onnx",
    "export_int8_onnx",
    "int8_layers_from_bits",
    "int8_node_counts",
    "int8_weight_layers",
    "measure_latency",
    "onnx_accuracy",
    "optimized_graph",
    "reduced_weight_range_needed",
]

INT8_BITS = (8, 8)
"""The (weight, activation) bits realised as int8 kernels; every other bit width stays float."""

INPUT_NAME, OUTPUT_NAME = "input", "logits"
"""Names of the exported graph's input and output."""

DISABLED_OPTIMIZERS: tuple[str, ...] = ("WeightBiasQuantization",)
"""ONNX Runtime graph transformers every session here disables: ``WeightBiasQuantization`` would turn a float
Conv/Gemm fed by a ``DequantizeLinear`` into a per-tensor int8 kernel, i.e. quantize a layer meant to stay float."""

_PARAMETRIC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_INT8_EXACT_OPS = frozenset({"QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                             "DynamicQuantizeMatMul", "QAttention"})


def _require_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise CheckpointError(
            "int8 inference needs the onnx extra (onnx, onnxscript, onnxruntime): pip install 'automl-prune[onnx]'"
        ) from exc
    return onnxruntime


# ------------------------------------------------------------------------------------------------ selection
def int8_layers_from_bits(bits: Mapping[str, Sequence[int]]) -> list[str]:
    """The layers of an architecture's ``bits`` that run as int8 kernels: exactly those at 8/8 bits (sorted)."""
    return sorted(name for name, pair in bits.items() if (int(pair[0]), int(pair[1])) == INT8_BITS)


def reduced_weight_range_needed(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether int8 weights should use 7 bits on this CPU: an x86 CPU without VNNI (``avx512_vnni``/``avx_vnni``).

    Without VNNI, ONNX Runtime's uint8 x int8 GEMM sums pairs of products in int16 (``VPMADDUBSW``), which
    saturates when both are near full range; 7-bit weights keep every pair sum in range. Other architectures
    (ARM's int8 dot products) accumulate in int32 and keep 8 bits. On an x86 CPU whose flags cannot be read
    (no ``/proc/cpuinfo``), 7 bits: safe, at a small cost in precision.
    """
    if platform.machine().lower() not in {"x86_64", "amd64", "i386", "i686", "x86"}:
        return False
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return True
    return not flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"}


def _is_int8_op(op_type: str) -> bool:
    """Whether an ONNX Runtime node computes in integers (not a Q/DQ conversion, not a data-movement op)."""
    return op_type.startswith("QLinear") or op_type in _INT8_EXACT_OPS


# --------------------------------------------------------------------------------------------------- export
def _as_float_model(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` in eval mode, on the CPU: fake-quantized layers become plain Conv2d/Linear.

    Their float weights are kept (not the simulated grid): ONNX Runtime quantizes the int8 layers itself, and
    layers at other bit widths stay float in the int8 realisation.
    """
    target = copy.deepcopy(model).to("cpu").float().eval()
    for name, module in list(target.named_modules()):
        if isinstance(module, QuantConv2d):
            # A Conv2d's kernel_size, stride and dilation are pairs, its padding a pair or a string; torch's stubs
            # type the attributes ``tuple[int, ...]``.
            plain: nn.Conv2d | nn.Linear = nn.Conv2d(
                module.in_channels, module.out_channels, cast("tuple[int, int]", module.kernel_size),
                stride=cast("tuple[int, int]", module.stride), padding=cast("str | tuple[int, int]", module.padding),
                dilation=cast("tuple[int, int]", module.dilation), groups=module.groups,
                bias=module.bias is not None, padding_mode=module.padding_mode,
            )
        elif isinstance(module, QuantLinear):
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        else:
            continue
        plain.weight.data.copy_(module.weight.data)
        if module.bias is not None and plain.bias is not None:  # the copy has a bias exactly when the layer has
            plain.bias.data.copy_(module.bias.data)
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name) if parent_name else target, child, plain.eval())
    return target


def export_float_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    """Export ``model`` (float, eval mode) to ONNX with a dynamic batch dimension; returns ``path``.

    Uses the dynamo exporter, whose ONNX optimizer folds each eval-mode BatchNorm into the conv before it and
    keeps the weight initializers named after the PyTorch parameters (``layer.weight``), which is how layers are
    found again in the graph. ``input_shape`` is one input's shape without the batch dimension, e.g.
    ``(1, 28, 28)`` (a 4-d ``[1, C, H, W]`` as in ``arch.json`` works too).
    """
    _require_onnxruntime()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample_shape = _sample_shape(input_shape)
    float_model = _as_float_model(model)
    example = torch.randn(2, *sample_shape)  # batch 2: a batch of 1 would let the exporter specialise it
    with _quiet_loggers():
        torch.onnx.export(
            float_model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, external_data=False,
        )
    return path


class _BatchReader:
    """An ONNX Runtime `CalibrationDataReader` over torch batches (tensors or ``(inputs, labels)`` pairs)."""

    def __init__(self, batches: Iterable[Any], max_batches: int | None) -> None:
        self._items: list[dict[str, np.ndarray]] = []
        for batch in batches:
            if max_batches is not None and len(self._items) >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._items.append({INPUT_NAME: x.detach().to("cpu", torch.float32).contiguous().numpy()})
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._items)


def export_int8_onnx(
    float_model: nn.Module,
    calibration_batches: Iterable[Any],
    path: str | Path,
    *,
    int8_layers: Iterable[str] | None = None,
    max_batches: int | None = 16,
    reduce_range: bool | None = None,
) -> Path:
    """Export ``float_model`` to ONNX with its ``int8_layers`` statically quantized to int8; returns ``path``.

    Args:
        float_model: The width-compressed model (float; a fake-quantized model from `automl_prune.quantize.fake` is
            converted back to float first, see `_as_float_model`). Not modified.
        calibration_batches: Training batches (tensors or ``(inputs, labels)`` pairs) for the activation ranges
            (min/max per tensor over all of them); also give the input shape.
        path: Where the int8 model is written (a float ``*.float.onnx`` is written beside it first and kept, so
            that the float ONNX Runtime baseline is the very same graph).
        int8_layers: Module paths of the conv/linear layers to quantize (`int8_layers_from_bits` of an
            architecture's bits); ``None``: all of them. The others stay float (see the module docstring).
            Parameter-free ops (residual adds, pooling) are quantized as well where ONNX Runtime can.
        max_batches: Use at most this many calibration batches.
        reduce_range: Quantize weights to about 7 bits (codes in ``[-64, 64]``, ONNX Runtime's reduced range)
            instead of 8. ``None``: only on an x86 CPU without VNNI (`reduced_weight_range_needed`), where ONNX
            Runtime's uint8 x int8 kernels multiply with ``VPMADDUBSW``, whose int16 pair sums saturate with
            full-range weights (measured on the test model here: 44.5% float, 34.5% int8 with 8-bit weights,
            43% with 7-bit weights). Recorded in the
            model's metadata (``automl_prune.weight_qmax``).

    Raises:
        ConfigError: No calibration batch, an empty ``int8_layers``, or a name that is not a conv/linear layer
            of the model.
        CheckpointError: The ``onnx`` extra is missing.
    """
    ort = _require_onnxruntime()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    path = Path(path)
    reader = _BatchReader(calibration_batches, max_batches)
    if len(reader) == 0:
        raise ConfigError("int8 calibration needs at least one batch of inputs, but got none")
    valid = quantizable_layers(float_model)
    chosen = set(valid) if int8_layers is None else set(int8_layers)
    unknown = sorted(chosen - set(valid))
    if unknown:
        raise ConfigError(f"int8_layers name layers that are not Conv2d/Linear layers of the model: {unknown[:5]}; "
                          f"quantizable layers are {valid[:5]}{' ...' if len(valid) > 5 else ''}")
    if not chosen:
        raise ConfigError("int8_layers is empty: no layer at 8/8 bits, so there is nothing to run in int8")

    float_path = path.with_name(path.stem + ".float.onnx")
    export_float_onnx(float_model, tuple(reader._items[0][INPUT_NAME].shape[1:]), float_path)
    model = onnx.load(str(float_path))
    layer_nodes = _layer_nodes(model, valid)
    missing = sorted(chosen - set(layer_nodes))
    if missing:
        raise ConfigError(f"layers {missing[:5]} were not found in the exported ONNX graph (their weights are not "
                          "initializers named `<layer>.weight`), so they cannot be quantized selectively")
    exclude = sorted(node for layer, node in layer_nodes.items() if layer not in chosen)
    if reduce_range is None:
        reduce_range = reduced_weight_range_needed()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_loggers():
        quantize_static(
            str(float_path), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude, reduce_range=reduce_range,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    quantized = onnx.load(str(path))
    onnx.helper.set_model_props(quantized, {
        "automl_prune.int8_layers": ",".join(sorted(chosen)),
        "automl_prune.float_layers": ",".join(sorted(set(layer_nodes) - chosen)),
        "automl_prune.ort_disabled_optimizers": ",".join(DISABLED_OPTIMIZERS),
        "automl_prune.weight_qmax": "64" if reduce_range else "127",
        "automl_prune.onnxruntime_version": ort.__version__,
    })
    onnx.save(quantized, str(path))
    return path


def _layer_nodes(model: onnx.ModelProto, layers: Sequence[str]) -> dict[str, str]:
    """Module path -> name of the Conv/Gemm/MatMul node whose weight is the initializer ``<layer>.weight``."""
    weight_of = {f"{layer}.weight": layer for layer in layers}
    initializers = {init.name for init in model.graph.initializer}
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in _PARAMETRIC_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight in weight_of and weight in initializers:
            found[weight_of[weight]] = node.name
    return found


# ------------------------------------------------------------------------------------------------- sessions
def create_session(
    path: str | Path, *, threads: int = 1, optimized_model_filepath: str | Path | None = None
) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session: all graph optimizations but `DISABLED_OPTIMIZERS`, ``threads`` intra-op threads.

    One inter-op thread and sequential execution, so ``threads`` is the whole parallelism. With
    ``optimized_model_filepath`` the optimized graph the session runs is saved there.
    """
    ort = _require_onnxruntime()
    if threads < 1:
        raise ConfigError(f"`threads >= 1` must hold, but got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: saving an NCHWc-optimized graph warns that it is CPU-specific
    if optimized_model_filepath is not None:
        options.optimized_model_filepath = str(optimized_model_filepath)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def optimized_graph(path: str | Path) -> onnx.ModelProto:
    """The graph ONNX Runtime really runs for the model at ``path`` (after its CPU graph optimizations)."""
    _require_onnxruntime()
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "optimized.onnx"
        create_session(path, optimized_model_filepath=saved)
        return onnx.load(str(saved))


def int8_node_counts(path: str | Path) -> dict[str, int]:
    """Int8 compute nodes (``QLinearConv``, ``QGemm``, ``QLinearAdd``, ``ConvInteger``, ...) by op type, counted
    in the optimized graph ONNX Runtime runs; empty for a float model. Q/DQ conversions are not counted."""
    counts = Counter(node.op_type for node in optimized_graph(path).graph.node if _is_int8_op(node.op_type))
    return dict(sorted(counts.items()))


def int8_weight_layers(path: str | Path, layers: Iterable[str]) -> set[str]:
    """Those of ``layers`` whose weight an int8 node of the optimized graph consumes (i.e. that run in int8).

    ONNX Runtime names a quantized weight after the original initializer (``<layer>.weight_quantized``) or after
    the node it belongs to; both are matched against ``<layer>.weight``.
    """
    graph = optimized_graph(path).graph
    initializers = {init.name for init in graph.initializer}
    consumed = {name for node in graph.node if _is_int8_op(node.op_type) for name in node.input if name in initializers}
    return {layer for layer in layers if any(name.startswith(f"{layer}.weight") for name in consumed)}


# ------------------------------------------------------------------------------------------------- accuracy
def onnx_accuracy(path: str | Path, split: Split, *, batch_size: int = 256, threads: int = 1) -> float:
    """Top-1 accuracy in [0, 1] of the ONNX model at ``path`` on ``split`` (ONNX Runtime, CPU)."""
    from automl_prune.data.datasets import iterate_batches

    if len(split) == 0:
        raise ConfigError("cannot evaluate on an empty split (was `val_size=0`?)")
    session = create_session(path, threads=threads)
    correct = 0
    for x, y in iterate_batches(split, batch_size, shuffle=False, seed=0):
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.to(torch.float32).contiguous().numpy()})
        correct += int((np.argmax(logits, axis=1) == y.numpy()).sum())
    return correct / len(split)


# -------------------------------------------------------------------------------------------------- latency
def measure_latency(
    model_or_onnx_path: nn.Module | str | Path,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of single forward passes: a PyTorch model (float, eval mode, no autograd) or an ONNX model (CPU
    ONNX Runtime session from `create_session`), ``warmup`` untimed runs then ``repeats`` timed ones per batch size.

    Args:
        model_or_onnx_path: An `nn.Module` (timed in PyTorch on the CPU; a fake-quantized model is converted to
            float first, since its simulation is not a deployment) or the path of an ``.onnx`` file.
        input_shape: One input's shape without the batch dimension, e.g. ``(1, 28, 28)``; a 4-d
            ``[1, C, H, W]`` (as in ``arch.json``) works too.
        batch_sizes: Batch sizes to time.
        repeats, warmup: Timed and untimed runs per batch size.
        threads: Intra-op threads (PyTorch's are restored afterwards); stated in the result.

    Returns:
        ``{"runtime": "pytorch" | "onnxruntime", "threads", "repeats", "warmup", "input_shape", "batches":
        {batch_size: {"median_ms", "iqr_ms", "q1_ms", "q3_ms", "min_ms", "median_ms_per_image"}}}``; a
        quartile is the median of its half of the sorted timings.
    """
    if repeats < 2 or warmup < 0 or threads < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"latency needs repeats >= 2, warmup >= 0, threads >= 1 and positive batch sizes, but got "
                          f"{repeats=}, {warmup=}, {threads=}, {batch_sizes=}")
    sample_shape = _sample_shape(input_shape)
    generator = torch.Generator().manual_seed(seed)
    inputs = {b: torch.randn(b, *sample_shape, generator=generator) for b in batch_sizes}
    if isinstance(model_or_onnx_path, nn.Module):
        runtime = "pytorch"
        model = _as_float_model(model_or_onnx_path)
        with _torch_threads(threads), torch.inference_mode():
            timings = {b: _time(lambda x=x: model(x), repeats, warmup) for b, x in inputs.items()}
    else:
        runtime = "onnxruntime"
        session = create_session(model_or_onnx_path, threads=threads)
        feeds = {b: {INPUT_NAME: x.numpy()} for b, x in inputs.items()}
        timings = {b: _time(lambda f=f: session.run(None, f), repeats, warmup) for b, f in feeds.items()}
    return {
        "runtime": runtime,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "input_shape": list(sample_shape),
        "batches": {b: _summary(t, b) for b, t in timings.items()},
    }


def _time(run: Any, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append((time.perf_counter() - start) * 1e3)
    return timings


def _summary(timings_ms: list[float], batch_size: int) -> dict[str, float]:
    ordered = sorted(timings_ms)
    half = len(ordered) // 2
    q1 = statistics.median(ordered[:half])
    q3 = statistics.median(ordered[len(ordered) - half:])
    median = statistics.median(ordered)
    return {"median_ms": median, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3, "min_ms": ordered[0],
            "median_ms_per_image": median / batch_size}


def _sample_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:  # [N, C, H, W]: the batch dimension is set per measurement
        shape = shape[1:]
    if not shape or min(shape) < 1:
        raise ConfigError(f"input_shape must be one input's positive shape such as (1, 28, 28), but got {input_shape}")
    return shape


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """Silence the exporter's and the quantizer's INFO/WARNING chatter (e.g. "consider pre-processing")."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

