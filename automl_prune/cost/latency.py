"""Measured latency: a per-layer latency table that predicts an architecture's latency in microseconds, and
interleaved whole-model measurements with their noise.

The table (`LatencyTable`) times every conv and linear layer of a network on its own, on a grid of (input,
output) channel counts between the smallest and the full width the search space allows, at one batch size and
thread count on this device. A width assignment is then predicted as::

    latency = alpha * sum_l T_l(c_in, c_out) + beta * sum_l c_out * positions_l * batch + constant

where ``T_l`` interpolates layer ``l``'s grid bilinearly, the second term stands for the per-channel work that
follows each layer (batch norm, activation, residual add), and ``constant`` for everything the widths do not
change (pooling, the Python overhead of the forward pass). ``alpha``, ``beta`` and ``constant`` are fitted by
non-negative least squares (relative error) on whole-model measurements of a few calibration architectures.
The table is measured once per device + model + batch + threads and cached as JSON.

The table and its fit use the fastest of repeated timings (as `timeit` advises: slower ones are other processes
interfering, which no table can predict); whole-model measurements (`compare_latency`) report the median with
its quartiles and the minimum, interleaved across models so that a change of load hits them alike.

`LatencyCostModel` puts the table behind `automl_prune.cost.flops.CostModel`'s interface, in integer nanoseconds,
so a `search_spaces.SearchSpace` built with it (`SearchSpace.with_width_cost`) hands the searchers predicted
latency where they otherwise see FLOPs, and every searcher works unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from automl_prune.atomic import atomic_write_text
from automl_prune.cost.flops import CostModel, Costs
from automl_prune.cost.timing import compare_latency, device_name, on_target, time_call
from automl_prune.errors import BudgetError, ConfigError
from automl_prune.graph.analysis import NetworkGraph

__all__ = ["LATENCY_TABLE_VERSION", "LatencyCostModel", "LatencyTable", "latency_budget", "latency_table"]


LATENCY_TABLE_VERSION = 1


# the table ---------------------------------------------------------------------------------------------------
@dataclass
class LatencyTable:
    """Per-layer latency on a grid of (input, output) channel counts, and the fitted whole-model terms.

    Build one with `LatencyTable.measure` (or the cached `latency_table`); `predict_ns` gives an
    architecture's latency from its layers' channel counts. All times are nanoseconds per forward pass of
    ``batch_size`` inputs.
    """

    layers: list[str]
    """Module paths of the timed conv and linear layers."""
    in_grid: list[list[int]]
    out_grid: list[list[int]]
    times_ns: list[list[list[float]]]
    """``times_ns[l][i][j]``: layer ``l`` with ``in_grid[l][i]`` input and ``out_grid[l][j]`` output channels."""
    positions: list[int]
    """Output elements per channel and sample of each layer (H x W of a conv's output)."""
    batch_size: int
    threads: int
    device: str
    alpha: float = 1.0
    beta_ns: float = 0.0
    constant_ns: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    _grid_in: np.ndarray = field(init=False, repr=False, compare=False)
    _grid_out: np.ndarray = field(init=False, repr=False, compare=False)
    _times: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        width = max(max(len(g) for g in self.in_grid), max(len(g) for g in self.out_grid), 2) if self.layers else 2
        n = len(self.layers)
        self._grid_in = np.zeros((n, width))
        self._grid_out = np.zeros((n, width))
        self._times = np.zeros((n, width, width))
        for k in range(n):
            gi, go = np.asarray(self.in_grid[k], float), np.asarray(self.out_grid[k], float)
            t = np.asarray(self.times_ns[k], float).reshape(len(gi), len(go))
            # pad by repeating the last point: a zero-width interval interpolates with weight 0
            self._grid_in[k] = np.pad(gi, (0, width - len(gi)), mode="edge")
            self._grid_out[k] = np.pad(go, (0, width - len(go)), mode="edge")
            self._times[k] = np.pad(t, ((0, width - len(gi)), (0, width - len(go))), mode="edge")

    # prediction ----------------------------------------------------------------------------------------------
    @staticmethod
    def _bracket(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(x))
        i = np.minimum(np.maximum((grid <= x[:, None]).sum(axis=1) - 1, 0), grid.shape[1] - 2)
        lo, hi = grid[rows, i], grid[rows, i + 1]
        span = hi - lo
        w = np.divide(x - lo, span, out=np.zeros_like(x, dtype=float), where=span > 0)
        return i, np.minimum(np.maximum(w, 0.0), 1.0)

    def layer_times_ns(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        """Interpolated time of each table layer (``alpha`` not applied) at ``cin``/``cout`` channels (per layer)."""
        cin, cout = np.asarray(cin, float), np.asarray(cout, float)
        rows = np.arange(len(self.layers))
        i, wi = self._bracket(self._grid_in, cin)
        j, wo = self._bracket(self._grid_out, cout)
        t = self._times
        return ((1 - wi) * (1 - wo) * t[rows, i, j] + (1 - wi) * wo * t[rows, i, j + 1]
                + wi * (1 - wo) * t[rows, i + 1, j] + wi * wo * t[rows, i + 1, j + 1])

    def layer_costs_ns(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        """Each table layer's share of the predicted latency: ``alpha`` x its time + ``beta`` x its output elements."""
        elements = np.asarray(cout, float) * np.asarray(self.positions, float) * self.batch_size
        return self.alpha * self.layer_times_ns(cin, cout) + self.beta_ns * elements

    def predict_ns(self, cin: np.ndarray, cout: np.ndarray) -> float:
        """Predicted latency of the whole network with these per-layer channel counts."""
        return float(self.layer_costs_ns(cin, cout).sum() + self.constant_ns)

    def features(self, cin: np.ndarray, cout: np.ndarray) -> tuple[float, float]:
        """The fit's two width-dependent features: summed layer time (ns) and summed output elements."""
        elements = np.asarray(cout, float) * np.asarray(self.positions, float) * self.batch_size
        return float(self.layer_times_ns(cin, cout).sum()), float(elements.sum())

    # fitting ---------------------------------------------------------------------------------------------
    def fit(self, features: Sequence[tuple[float, float]], measured_ns: Sequence[float]) -> dict[str, Any]:
        """Fit ``alpha``, ``beta_ns``, ``constant_ns`` (non-negative, least relative error) to whole-model times.

        Returns:
            The fit's relative errors on the calibration points (``{"median", "max"}``), also kept in ``meta``.
        """
        from scipy.optimize import nnls

        y = np.asarray(measured_ns, float)
        x = np.column_stack([np.asarray(features, float), np.ones(len(y))])
        coef, _ = nnls(x / y[:, None], np.ones(len(y)))
        if coef[0] <= 0:  # degenerate (a single point, or noise): keep the layer sum and fit the constant only
            coef = np.array([1.0, 0.0, max(0.0, float(np.median(y - x[:, 0])))])
        self.alpha, self.beta_ns, self.constant_ns = (float(c) for c in coef)
        errors = np.abs(x @ coef - y) / y
        fit = {"points": len(y), "median_relative_error": float(np.median(errors)),
               "max_relative_error": float(errors.max())}
        self.meta["fit"] = fit
        return fit

    # serialization -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"version": LATENCY_TABLE_VERSION, "layers": self.layers, "in_grid": self.in_grid,
                "out_grid": self.out_grid, "times_ns": self.times_ns, "positions": self.positions,
                "batch_size": self.batch_size, "threads": self.threads, "device": self.device, "alpha": self.alpha,
                "beta_ns": self.beta_ns, "constant_ns": self.constant_ns, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        """Inverse of `to_dict`."""
        if data.get("version") != LATENCY_TABLE_VERSION:
            raise ConfigError(f"latency table version {data.get('version')!r} is not {LATENCY_TABLE_VERSION}")
        keys = ("layers", "in_grid", "out_grid", "times_ns", "positions", "batch_size", "threads", "device",
                "alpha", "beta_ns", "constant_ns", "meta")
        return cls(**{k: data[k] for k in keys})

    # measuring -----------------------------------------------------------------------------------------------
    @classmethod
    def measure(
        cls,
        model: nn.Module,
        graph: NetworkGraph,
        choices: Mapping[str, Sequence[int]],
        *,
        batch_size: int = 1,
        grid_points: int = 5,
        repeats: int = 9,
        min_seconds: float = 2e-3,
        calibration: int = 10,
        calibration_rounds: int = 15,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> LatencyTable:
        """Time every conv and linear layer of ``model`` on a width grid, then fit the whole-model terms.

        Runs at the caller's thread count (`torch.get_num_threads`) on the model's device. ``model`` is not
        modified (its layers are rebuilt at each grid width with random weights: latency does not depend on them).

        Args:
            model: The base network ``graph`` was traced from.
            graph: Its `NetworkGraph`.
            choices: The valid widths of each searched channel group (others stay at full width), e.g.
                ``{d.name: d.choices() for d in space.decisions}``; the grid spans each layer's reachable range.
            batch_size: Inputs per forward pass.
            grid_points: Widths per dimension (at most; fewer when a layer has fewer channel counts).
            repeats, min_seconds: Of each grid point's timing (`time_call`; the minimum is kept, see below).
            calibration: Whole-model architectures the fit uses (full, smallest, uniform ones, random ones).
            calibration_rounds: Interleaved rounds of each calibration measurement.
            seed: Of the random calibration architectures.
            log: Called with progress lines.
        """
        if batch_size < 1 or grid_points < 2 or repeats < 1 or calibration < 2:
            raise ConfigError(f"a latency table needs batch_size >= 1, grid_points >= 2, repeats >= 1 and "
                              f"calibration >= 2, but got {batch_size=}, {grid_points=}, {repeats=}, {calibration=}")
        say = log or (lambda _m: None)
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        cost = CostModel(graph)
        full = {g.name: g.size for g in graph.groups}
        smallest = {**full, **{name: min(c) for name, c in choices.items()}}
        lo_in, lo_out = cost.layer_widths(smallest)
        hi_in, hi_out = cost.layer_widths(full)
        inputs = _layer_inputs(model, graph)
        start = time.perf_counter()
        layers, in_grid, out_grid, times, positions = [], [], [], [], []
        with torch.inference_mode():
            for row, name in enumerate(cost.layer_names):
                info = graph.layers[name]
                if info.kind not in ("conv", "linear") or name not in inputs:
                    continue
                module = model.get_submodule(name)
                shape, calls = inputs[name]
                step = info.groups if info.kind == "conv" and info.groups > 1 and not info.depthwise else 1
                gout = _grid(int(lo_out[row]), int(hi_out[row]), grid_points, step)
                gin = [int(hi_in[row])] if info.depthwise else _grid(int(lo_in[row]), int(hi_in[row]), grid_points,
                                                                      step)
                table = []
                for cin in gin:
                    line = []
                    for cout in gout:
                        layer, x = _layer_at(module, info.depthwise, cin if not info.depthwise else cout, cout,
                                             shape, batch_size, device, dtype)
                        samples = time_call(functools.partial(layer, x), repeats=repeats,
                                            min_seconds=min_seconds, device=device)
                        line.append(1e9 * min(samples) * calls)
                    table.append(line)
                layers.append(name)
                in_grid.append(gin)
                out_grid.append(gout)
                times.append(table)
                positions.append(int(info.positions))
        threads = torch.get_num_threads()
        result = cls(layers, in_grid, out_grid, times, positions, batch_size, threads, device_name(device),
                     meta={"grid_points": grid_points, "repeats": repeats, "layer_seconds":
                           round(time.perf_counter() - start, 2)})
        say(f"latency table: timed {len(layers)} layers on a grid of up to {grid_points}x{grid_points} widths "
            f"in {result.meta['layer_seconds']:.1f} s (batch {batch_size}, {threads} threads)")
        result._calibrate(model, graph, cost, choices, full, smallest, calibration, calibration_rounds, seed,
                          min_seconds, say)
        return result

    def _calibrate(self, model: nn.Module, graph: NetworkGraph, cost: CostModel, choices: Mapping[str, Sequence[int]],
                   full: dict[str, int], smallest: dict[str, int], count: int, rounds: int, seed: int,
                   min_seconds: float, say: Callable[[str], None]) -> None:
        from automl_prune.prune.pruning import compress_widths

        rng = np.random.default_rng(seed)
        archs = [full, smallest]
        for ratio in (0.3, 0.6):
            if len(archs) < count:
                near = {n: _nearest(c, ratio * full[n]) for n, c in choices.items()}
                archs.append({**full, **near})
        while len(archs) < count:
            archs.append({**full, **{n: int(rng.choice(list(c))) for n, c in choices.items()}})
        start = time.perf_counter()
        models = {str(k): compress_widths(model, graph, a).eval() for k, a in enumerate(archs)}
        sample_shape = tuple(graph.input_shape[1:])
        measured = compare_latency(models, sample_shape, [self.batch_size], rounds=max(3, rounds),
                                   min_seconds=min_seconds, seed=seed)[self.batch_size]
        rows = [cost.layer_names.index(name) for name in self.layers]
        feats = []
        for a in archs:
            cin, cout = cost.layer_widths(a)
            feats.append(self.features(cin[rows], cout[rows]))
        y = [1e6 * measured[str(k)]["min_ms"] for k in range(len(archs))]
        fit = self.fit(feats, y)
        self.meta["calibration_seconds"] = round(time.perf_counter() - start, 2)
        spread = [measured[str(k)]["iqr_ms"] / measured[str(k)]["median_ms"] for k in range(len(archs))]
        self.meta["calibration_relative_iqr_median"] = float(np.median(spread))
        say(f"latency table: fitted on {len(archs)} whole-model measurements (alpha {self.alpha:.3f}, "
            f"{self.beta_ns:.4f} ns per output element, constant {self.constant_ns / 1e3:.1f} us); relative error "
            f"median {100 * fit['median_relative_error']:.1f}%, max {100 * fit['max_relative_error']:.1f}%")


def _nearest(values: Sequence[int], target: float) -> int:
    """The first of ``values`` closest to ``target``."""
    return min(values, key=lambda v: abs(v - target))


def _grid(lo: int, hi: int, points: int, step: int = 1) -> list[int]:
    """Up to ``points`` distinct channel counts from ``lo`` to ``hi`` (both included), multiples of ``step``."""
    lo, hi = max(1, lo), max(1, hi)
    values = {lo, hi}
    for v in np.linspace(lo, hi, points):
        values.add(min(hi, max(lo, int(np.rint(v / step)) * step)))
    return sorted(values)


def _layer_inputs(model: nn.Module, graph: NetworkGraph) -> dict[str, tuple[tuple[int, ...], int]]:
    """Each conv/linear layer's input shape per sample (first call) and how many times one forward pass calls it."""
    seen: dict[str, tuple[tuple[int, ...], int]] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            shape, calls = seen.get(name, (tuple(args[0].shape[1:]), 0))
            seen[name] = (shape, calls + 1)
        return record

    for name, info in graph.layers.items():
        if info.kind in ("conv", "linear"):
            handles.append(model.get_submodule(name).register_forward_pre_hook(hook(name)))
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, *graph.input_shape[1:], device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _layer_at(module: nn.Module, depthwise: bool, cin: int, cout: int, sample_shape: tuple[int, ...], batch: int,
              device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
    """A layer like ``module`` with ``cin`` inputs and ``cout`` outputs, and an input of the shape it sees."""
    if isinstance(module, nn.Linear):
        layer: nn.Module = nn.Linear(cin, cout, bias=module.bias is not None)
        x = torch.randn(batch, *sample_shape[:-1], cin)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        groups = cin if depthwise else module.groups
        # The same class as ``module``, so its kernel_size, stride, padding and dilation fit: torch types them
        # ``tuple[int, ...]``, while each class's constructor takes tuples of its own length.
        conv_type: Callable[..., nn.Module] = type(module)
        layer = conv_type(cin, cout, module.kernel_size, stride=module.stride, padding=module.padding,
                          dilation=module.dilation, groups=groups, bias=module.bias is not None,
                          padding_mode=module.padding_mode)
        x = torch.randn(batch, cin, *sample_shape[1:])
    else:
        raise ConfigError(f"cannot time layer of type {type(module).__name__} for a latency table (Conv1d/2d/3d "
                          "and Linear are supported)")
    return layer.to(device, dtype).eval(), x.to(device, dtype)


# the cached table ------------------------------------------------------------------------------------------------
#: `LatencyTable.measure`'s settings with their defaults, all in the cache key: a table measured with other
#: settings (an explicit value, or a default changed in a later version) is another table.
_MEASURE_DEFAULTS = {name: p.default for name, p in inspect.signature(LatencyTable.measure).parameters.items()
                     if p.default is not inspect.Parameter.empty and name not in ("batch_size", "log")}


def latency_table(
    model: nn.Module,
    graph: NetworkGraph,
    choices: Mapping[str, Sequence[int]],
    cache_dir: str | Path,
    *,
    batch_size: int = 1,
    log: Callable[[str], None] | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    **measure: Any,
) -> tuple[LatencyTable, Path]:
    """The latency table of ``model`` on the target device at this batch size and thread count: read from
    ``cache_dir/latency/`` when it was measured before, else measured (`LatencyTable.measure`) and written there
    atomically. Returns the table and its file.

    The target is ``device`` in ``precision`` (defaults: the run's, `automl_prune.train.device`): ``model`` is
    timed as a copy there with its weights in that precision's dtype (fp32 on the CPU); both are in the cache key.
    """
    model, precision_name = on_target(model, device, precision)
    param = next(model.parameters())
    key_data = {"version": LATENCY_TABLE_VERSION, "graph": graph.to_dict(), "device": device_name(param.device),
                "threads": torch.get_num_threads(), "batch_size": batch_size, "dtype": str(param.dtype),
                "choices": {k: sorted(int(v) for v in c) for k, c in sorted(choices.items())},
                "measure": {**_MEASURE_DEFAULTS, **measure}}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "latency" / f"table-{key}.json"
    say = log or (lambda _m: None)
    if path.is_file():
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, ConfigError):
            say(f"latency table {path} is unreadable: measuring it again")
        else:
            say(f"latency table: read {path} (measured before on {table.device}, batch {table.batch_size}, "
                f"{table.threads} threads)")
            return table, path
    table = LatencyTable.measure(model, graph, choices, batch_size=batch_size, log=log, **measure)
    table.meta["key"] = key
    table.meta["precision"] = precision_name
    atomic_write_text(path, json.dumps(table.to_dict(), indent=1))
    say(f"latency table: written to {path}")
    return table, path


# the cost model --------------------------------------------------------------------------------------------------
class LatencyCostModel(CostModel):
    """`CostModel` whose "FLOPs" are predicted latency in integer nanoseconds (of one forward pass of the table's
    batch), so searchers built around FLOPs budgets search under a latency budget unchanged.

    Per-layer costs (`layer_flops`) are each timed layer's share; the constant term is booked on the classifier
    (which runs last), so the per-layer costs add up to the prediction. Params, MACs and weights stay analytic.
    """

    unit: ClassVar[str] = "ns"

    def __init__(self, graph: NetworkGraph, table: LatencyTable) -> None:
        names = [layer.name for layer in graph.layers.values()]
        missing = [name for name in table.layers if name not in names]
        if missing:
            raise ConfigError(f"the latency table times layers the network does not have: {missing[:5]}")
        self.table = table
        self._table_rows = np.array([names.index(name) for name in table.layers], dtype=np.int64)
        self._constant_row = names.index(graph.classifier) if graph.classifier in names else len(names) - 1
        super().__init__(graph)

    def layer_flops(self, widths: Mapping[str, int]) -> np.ndarray:
        """Predicted nanoseconds of every layer (in `layer_names` order); zero for layers the table does not time."""
        return self._layer_ns(*self.layer_widths(widths))

    def _layer_ns(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        rows = self._table_rows
        per_layer = np.zeros(len(self.layer_names), dtype=np.float64)
        per_layer[rows] = self.table.layer_costs_ns(cin[rows], cout[rows])
        per_layer[self._constant_row] += self.table.constant_ns
        return np.rint(per_layer).astype(np.int64)

    def layer_macs(self, widths: Mapping[str, int]) -> np.ndarray:
        """Multiply-accumulates per sample of every layer (analytic, as `CostModel`)."""
        return CostModel.layer_flops(self, widths) // 2

    def costs(self, widths: Mapping[str, int]) -> Costs:
        """Predicted latency in nanoseconds (as ``flops``) and params."""
        cin, cout = self.layer_widths(widths)
        per_out = np.where(self._is_depthwise, 1, cin // self._groups)
        weight_params = np.where(self._is_weighted, cout * per_out * self._weights_per_unit + self._bias * cout, 0)
        channelwise = (self._channelwise_params_per_channel * cout).sum()
        params = int(weight_params.sum() + channelwise) + self.graph.fixed_params  # as `CostModel.costs`
        return Costs(flops=int(self._layer_ns(cin, cout).sum()), params=params)

    def analytic_flops(self, widths: Mapping[str, int]) -> int:
        """True FLOPs per sample (2 x MACs), as `CostModel.flops`."""
        return super().costs(widths).flops

    def differentiable_flops(self, kept: torch.Tensor) -> torch.Tensor:
        """Predicted nanoseconds as a differentiable (piecewise bilinear) function of kept channels per group."""
        sizes = torch.as_tensor(self.group_sizes, dtype=kept.dtype, device=kept.device)
        removed = sizes - kept
        rows = torch.as_tensor(self._table_rows, device=kept.device)
        in_coef = torch.as_tensor(self._in_coef, dtype=kept.dtype, device=kept.device)[rows]
        out_coef = torch.as_tensor(self._out_coef, dtype=kept.dtype, device=kept.device)[rows]
        cin = torch.as_tensor(self._in_full, dtype=kept.dtype, device=kept.device)[rows] - in_coef @ removed
        cout = torch.as_tensor(self._out_full, dtype=kept.dtype, device=kept.device)[rows] - out_coef @ removed
        table = self.table
        grid_in = torch.as_tensor(table._grid_in, dtype=kept.dtype, device=kept.device)
        grid_out = torch.as_tensor(table._grid_out, dtype=kept.dtype, device=kept.device)
        times = torch.as_tensor(table._times, dtype=kept.dtype, device=kept.device)
        i, wi = _bracket_torch(grid_in, cin)
        j, wo = _bracket_torch(grid_out, cout)
        n = torch.arange(len(rows), device=kept.device)
        t = ((1 - wi) * (1 - wo) * times[n, i, j] + (1 - wi) * wo * times[n, i, j + 1]
             + wi * (1 - wo) * times[n, i + 1, j] + wi * wo * times[n, i + 1, j + 1])
        positions = torch.as_tensor(table.positions, dtype=kept.dtype, device=kept.device)
        elements = cout * positions * table.batch_size
        return (table.alpha * t + table.beta_ns * elements).sum() + table.constant_ns


def _bracket_torch(grid: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(len(x), device=x.device)
    i = ((grid <= x.detach()[:, None]).sum(dim=1) - 1).clamp(0, grid.shape[1] - 2)
    lo, hi = grid[rows, i], grid[rows, i + 1]
    span = hi - lo
    w = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))
    return i, w.clamp(0.0, 1.0)


def latency_budget(space: Any, fraction: float) -> int:
    """The predicted-latency limit (ns) of a budget given as a fraction of the full network's predicted latency.

    Args:
        space: A `search_spaces.SearchSpace` whose width cost is a `LatencyCostModel`.
        fraction: In (0, 1].

    Raises:
        BudgetError: ``fraction`` outside (0, 1], or below what the smallest architecture is predicted to take.
    """
    if not 0.0 < fraction <= 1.0:
        raise BudgetError(f"the latency budget must be a fraction in (0, 1], but got {fraction}")
    budget = math.floor(fraction * space.full_flops)
    if budget < space.min_flops:
        raise BudgetError(
            f"a latency budget of {fraction:g} ({budget / 1e3:,.1f} us predicted) is below what this search space "
            f"can reach: with every group at its minimum width the model is still predicted to take "
            f"{space.min_flops / 1e3:,.1f} us ({space.min_flops / space.full_flops:.3f} of full; the constant part "
            "of a forward pass does not shrink with the widths); raise the budget or lower min_keep_ratio"
        )
    return budget
