"""Least-squares reconstruction of pruned layers (the step of CP, ThiNet, AMC and REAP), after any criterion.

After channels are removed, every mixing layer (a conv with ``groups == 1`` or a linear layer) that lost
input channels is re-fit so that, on calibration batches, its output matches the *original* model's output
of that layer (its kept output channels). Layers are re-fit in execution order and each one sees the
inputs the compressed model really gives it (earlier layers already re-fit), so errors do not pile up.

Each fit solves the normal equations ``(Z^T Z + lam I) W = Z^T Y + lam W0`` with `torch.linalg`: ``Z``
holds the layer's input patches (``unfold``) at a random subset of output positions per batch, ``Y`` the
original outputs there, ``W0`` the current weights (so the ridge pulls towards them, and a patch column
that is never seen, e.g. padding on a 1x1 map, keeps its weight).

Residual adds: a layer whose output is summed with another branch is fit to its *own* original output, not
to the sum; the other branch's error (e.g. a pruned shortcut conv, itself re-fit the same way) is not
compensated here, so a residual stream is reconstructed only as well as each of its addends. Depthwise
convs are not re-fit (a channel of theirs has no other input to take over).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from automl_prune.errors import ConfigError
from automl_prune.prune.calibration import Calibration

__all__ = ["KEPT_ATTR", "MAX_REFIT_INPUTS", "OriginalOutputs", "kept_channels", "normal_equations", "reconstruct",
           "record_kept", "solve_ridge"]

MAX_REFIT_INPUTS = 9216
"""A layer with more input patch entries than this is not re-fit (a VGG classifier reading a 512 x 7 x 7 flatten:
its Gram matrix alone would take gigabytes and the solve minutes, per candidate); it keeps its pruned weights."""

KEPT_ATTR = "automl_prune_kept"
"""Attribute of a compressed model: ``{layer: {"in": [...], "out": [...]}}`` kept indices of the original."""


class _Stop(Exception):
    """Raised by a hook once the layer of interest has run, to skip the rest of the forward pass."""


def kept_channels(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """The kept input/output channel indices (of the original model) recorded by `compress`, or ``{}``."""
    return dict(getattr(model, KEPT_ATTR, {}))


def record_kept(model: nn.Module, layers: Mapping[str, Mapping[str, list[int]]]) -> None:
    """Record kept indices on a just-pruned ``model``, composed with any recorded by an earlier compression."""
    previous = kept_channels(model)
    merged = {name: dict(dims) for name, dims in previous.items()}
    for name, dims in layers.items():
        for dim, idxs in dims.items():
            before = previous.get(name, {}).get(dim)
            merged.setdefault(name, {})[dim] = [before[i] for i in idxs] if before is not None else list(idxs)
    setattr(model, KEPT_ATTR, merged)


class OriginalOutputs:
    """The original model's layer outputs at the sampled positions, kept across reconstructions.

    Every candidate of a search is re-fit to the same targets: the unpruned model's outputs on the same
    calibration batches at the same sampled positions, so they are computed once per layer instead of once
    per candidate. Valid for one original model and one calibration set (`reconstruct` checks both by
    identity); entries stop being added past ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._owner: tuple[int, int] | None = None
        self._rows: dict[tuple[str, int, int, int], Tensor] = {}

    def bind(self, original: nn.Module, calibration: Calibration) -> None:
        """Tie the store to ``original`` and ``calibration``; a different pair empties it."""
        owner = (id(original), id(calibration))
        if owner != self._owner:
            self._owner, self._rows, self.bytes = owner, {}, 0

    def get(self, key: tuple[str, int, int, int]) -> Tensor | None:
        return self._rows.get(key)

    def put(self, key: tuple[str, int, int, int], rows: Tensor) -> None:
        size = rows.numel() * rows.element_size()
        if self.bytes + size <= self.max_bytes:
            self._rows[key] = rows
            self.bytes += size


def _inputs(module: nn.Module) -> int:
    """Input patch entries of a conv/linear layer: what its least-squares re-fit solves for, per output."""
    weight = module.weight
    return int(weight[0].numel()) if isinstance(weight, Tensor) else 0


def _mixing(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def patches(module: nn.Module, x: Tensor) -> Tensor:
    """``(N, D, L)`` inputs of ``module`` per output position: unfolded patches of a conv, the input of a linear.

    Raises:
        ConfigError: A conv with string padding (``"same"``, ``"valid"``), which `unfold` does not take.
    """
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ConfigError(f"cannot unfold the inputs of a Conv2d with padding={module.padding!r}: least-squares "
                              "criteria and reconstruction need numeric padding")
        return nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return x.reshape(-1, x.shape[-1], 1)


def flat_weight(module: nn.Conv2d | nn.Linear) -> Tensor:
    """``(D, O)`` weight matching the columns of `patches`."""
    return module.weight.detach().reshape(module.weight.shape[0], -1).T


def normal_equations(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(Z^T Z, Z^T Y)`` in float64 for rows ``z`` (R, D) and targets ``y`` (R, O)."""
    return (z.T @ z).double(), (z.T @ y).double()


def solve_ridge(gram: Tensor, cross: Tensor, w0: Tensor, ridge: float) -> Tensor:
    """``argmin_W |Z W - Y|^2 + lam |W - W0|^2`` with ``lam = ridge * mean(diag(Z^T Z))``, from the normal equations."""
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + lam * eye, cross + lam * w0.to(gram.dtype))


def _capture(model: nn.Module, module: nn.Module, x: Tensor, *, output: bool) -> Tensor:
    """The input (or output) of ``module`` when ``model`` runs on ``x``; the rest of the pass is skipped."""
    found: list[Tensor] = []

    def pre(_: nn.Module, args: tuple[Tensor, ...]) -> None:
        found.append(args[0].detach())
        raise _Stop

    def post(_: nn.Module, __: tuple[Tensor, ...], out: Tensor) -> None:
        found.append(out.detach())
        raise _Stop

    handle = module.register_forward_hook(post) if output else module.register_forward_pre_hook(pre)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not found:
        raise ConfigError(f"layer {type(module).__name__} never ran on the calibration batches")
    return found[0]


def _execution_order(model: nn.Module, x: Tensor, names: set[str]) -> list[str]:
    order: list[str] = []
    by_module = {module: name for name, module in model.named_modules() if name in names}

    def hook(module: nn.Module, _: tuple[Tensor, ...]) -> None:
        if by_module[module] not in order:
            order.append(by_module[module])

    handles = [module.register_forward_pre_hook(hook) for module in by_module]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order


@torch.no_grad()
def reconstruct(
    original: nn.Module,
    compressed: nn.Module,
    calibration: Calibration,
    *,
    kept: Mapping[str, Mapping[str, list[int]]] | None = None,
    positions: int = 32,
    ridge: float = 1e-3,
    seed: int = 0,
    targets: OriginalOutputs | None = None,
) -> nn.Module:
    """Re-fit, in place, every mixing layer of ``compressed`` that lost input channels; returns ``compressed``.

    Args:
        original: The unpruned model (not modified).
        compressed: Its pruned copy from `automl_prune.prune.pruning.compress` (which records the kept indices).
        calibration: Batches from the training split (labels unused).
        kept: ``{layer: {"in": [...], "out": [...]}}`` kept indices, if ``compressed`` did not come from
            `compress`.
        positions: Output positions sampled per image and batch (all of them when the map is smaller).
        ridge: Ridge strength relative to the mean diagonal of ``Z^T Z``, towards the current weights.
        seed: Seed of the position sampling.
        targets: A store of the original outputs shared by the reconstructions of many candidates of the
            same ``original`` and ``calibration`` (the same numbers, computed once).

    Raises:
        ConfigError: No kept indices are known for ``compressed``.
    """
    layers = dict(kept) if kept is not None else kept_channels(compressed)
    if not layers:
        raise ConfigError("reconstruct needs the kept channel indices: compress the model with `compress` first")
    refit = {
        name
        for name, dims in layers.items()
        if "in" in dims and _mixing(compressed.get_submodule(name)) and _mixing(original.get_submodule(name))
        and _inputs(compressed.get_submodule(name)) <= MAX_REFIT_INPUTS
    }
    was = original.training, compressed.training
    original.eval()
    compressed.eval()
    try:
        param = next(compressed.parameters())
        first = next(calibration.batches(param))[0]
        if targets is not None:
            targets.bind(original, calibration)
        for name in _execution_order(compressed, first, refit):
            _refit(original, compressed, name, layers[name], calibration, positions, ridge, seed, targets)
    finally:
        original.train(was[0])
        compressed.train(was[1])
    return compressed


def _refit(
    original: nn.Module,
    compressed: nn.Module,
    name: str,
    dims: Mapping[str, list[int]],
    calibration: Calibration,
    positions: int,
    ridge: float,
    seed: int,
    targets: OriginalOutputs | None = None,
) -> None:
    layer, source = compressed.get_submodule(name), original.get_submodule(name)
    # `reconstruct` refits only the layers that `_mixing` accepts in both models.
    assert isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(source, (nn.Conv2d, nn.Linear))
    out_idx = torch.as_tensor(dims["out"]) if "out" in dims else None
    generator = torch.Generator().manual_seed(seed)
    gram: Tensor | None = None
    cross: Tensor | None = None
    param = next(compressed.parameters())
    for index, (x, _) in enumerate(calibration.batches(param)):
        z = patches(layer, _capture(compressed, layer, x, output=False))  # (N, D, L)
        pick = torch.randperm(z.shape[2], generator=generator)[:positions].to(z.device)
        key = (name, index, positions, seed)
        y = targets.get(key) if targets is not None else None
        if y is None:
            full = _capture(original, source, x.to(next(original.parameters()).device), output=True)
            y = full.reshape(full.shape[0], full.shape[1], -1)[:, :, pick.to(full.device)]  # (N, O, P)
            if targets is not None:
                targets.put(key, y)
        y = y.to(z.device)
        if out_idx is not None:
            y = y[:, out_idx.to(y.device)]
        if source.bias is not None and layer.bias is None:
            y = y - source.bias.detach()[out_idx if out_idx is not None else slice(None)].to(y.device)[None, :, None]
        rows = z[:, :, pick].transpose(1, 2).reshape(-1, z.shape[1])
        if layer.bias is not None:
            rows = torch.cat([rows, torch.ones_like(rows[:, :1])], 1)
        a, b = normal_equations(rows, y.transpose(1, 2).reshape(-1, y.shape[1]))
        gram, cross = (a, b) if gram is None or cross is None else (gram + a, cross + b)
    assert gram is not None and cross is not None
    w0 = flat_weight(layer)
    if layer.bias is not None:
        w0 = torch.cat([w0, layer.bias.detach()[None]], 0)
    solved = solve_ridge(gram, cross, w0, ridge).to(layer.weight.dtype)
    if layer.bias is not None:
        layer.bias.copy_(solved[-1])
        solved = solved[:-1]
    layer.weight.copy_(solved.T.reshape(layer.weight.shape))
