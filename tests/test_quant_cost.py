"""Analytic size and BOPs with per-layer bits agree with independent counts; `fit_bits` meets every budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from automl_prune.errors import BudgetError
from automl_prune.models import build_model
from automl_prune.quantize.fake import FLOAT_BITS, QuantMixin, compress_and_quantize
from search_spaces import SearchSpace

N_ARCHITECTURES = 50
INPUT = (1, 1, 16, 16)


class _GroupedDepthwise(nn.Module):
    """A stem, an inverted residual (1x1 expand, depthwise 3x3, 1x1 project, identity add), a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32),
                                       nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1, groups=4), nn.ReLU())
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.head(self.grouped(x).mean((2, 3)))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "grouped-depthwise":
        return _GroupedDepthwise().eval()
    return build_model(name, in_channels=1, num_classes=10).eval()


def _counted(model: nn.Module) -> tuple[int, int]:
    """BOPs from forward hooks (output elements x weight elements per output) and size from the parameters."""
    bops = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal bops
        macs = output[0].numel() * module.weight[0].numel()  # per output element: one weight row/kernel
        w_bits, a_bits = (module.w_bits, module.a_bits) if isinstance(module, QuantMixin) else (32, 32)
        bops += macs * w_bits * a_bits

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(INPUT))
    for handle in handles:
        handle.remove()
    size = 0
    quantized = {id(m.weight): m for m in model.modules() if isinstance(m, QuantMixin) and m.w_bits < FLOAT_BITS}
    for param in model.parameters():
        layer = quantized.get(id(param))
        # a quantized weight: its bits, plus one float32 scale per output channel
        size += param.numel() * 32 if layer is None else param.numel() * layer.w_bits + param.shape[0] * 32
    size += sum(64 for m in model.modules() if isinstance(m, QuantMixin) and m.a_bits < FLOAT_BITS)
    return bops, size


@pytest.mark.parametrize("name", ["tiny-resnet", "grouped-depthwise"])
def test_bops_and_size_match_independent_counts_over_random_mixed_architectures(name: str) -> None:
    model = _model(name)
    space = SearchSpace.from_model(model, torch.zeros(INPUT), min_keep_ratio=0.25)
    assert len(space) > 0 and len(space.quantizable_layers) == sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()
    )
    rng = np.random.default_rng(0)
    for i in range(N_ARCHITECTURES):
        arch = space.sample_bits(rng, space.sample(rng))
        if i % 5 == 0:  # some layers float, some weight-only or activation-only
            layers = space.quantizable_layers
            arch = arch.with_bits({**arch.bits, layers[i % len(layers)]: (32, 32), layers[-1]: (4, 32),
                                   layers[0]: (32, 6)})
        space.validate(arch)
        quantized = compress_and_quantize(model, space.graph, arch)
        for layer in quantized.modules():  # any range: only the shapes matter here
            if isinstance(layer, QuantMixin):
                layer.set_activation_range(-1.0, 1.0)
        bops, size = _counted(quantized)
        assert space.bops(arch) == bops, f"architecture {i}: {arch.to_dict()}"
        assert space.size_bits(arch) == size, f"architecture {i}: {arch.to_dict()}"


def test_fractions_of_the_float_model() -> None:
    space = SearchSpace.from_model(_model("tiny-resnet"), torch.zeros(INPUT))
    full = space.full()
    assert space.size_fraction(full) == 1.0 and space.bops_fraction(full) == 1.0
    assert space.full_size_bits == 32 * sum(p.numel() for p in _model("tiny-resnet").parameters())
    assert space.bops_fraction(space.uniform_bits(8)) == pytest.approx(1 / 16)
    assert space.bops_fraction(space.uniform_bits(4, 8)) == pytest.approx(1 / 32)
    assert 4 / 32 < space.size_fraction(space.uniform_bits(4)) < 0.2  # scales and float params cost a little


@pytest.mark.parametrize("name", ["tiny-resnet", "grouped-depthwise"])
def test_fit_bits_always_meets_the_budget(name: str) -> None:
    model = _model(name)
    space = SearchSpace.from_model(model, torch.zeros(INPUT), min_keep_ratio=0.25, pin_first_last=8)
    rng = np.random.default_rng(1)
    lowest_size = space.size_fraction(space.lowest_bits())
    lowest_bops = space.bops_fraction(space.lowest_bits())
    for i in range(60):
        start = space.sample(rng) if i % 2 else space.sample_bits(rng, space.sample(rng))
        size = float(rng.uniform(lowest_size, 0.5)) if i % 3 != 1 else None
        bops = float(rng.uniform(lowest_bops, 0.1)) if i % 3 != 0 else None
        try:
            fitted = space.fit_bits(start, size=size, bops=bops)
        except BudgetError:  # only when these widths cannot fit even at the lowest bits
            lowest = space.lowest_bits(start)
            assert (size is not None and space.size_bits(lowest) > space.size_budget(size)) or (
                bops is not None and space.bops(lowest) > space.bops_budget(bops)
            )
            continue
        space.validate(fitted)
        assert fitted.widths == start.widths
        if size is not None:
            assert space.size_bits(fitted) <= space.size_budget(size)
        if bops is not None:
            assert space.bops(fitted) <= space.bops_budget(bops)
        for layer, (w_bits, a_bits) in fitted.bits.items():  # bits only ever go down
            w_start, a_start = start.bits.get(layer, (32, 32))
            assert w_bits <= w_start and a_bits <= a_start
        assert space.fit_bits(start, size=size, bops=bops) == fitted  # deterministic
        assert space.fit_bits(fitted, size=size, bops=bops) == fitted  # within budget: unchanged


def test_fit_bits_takes_bits_off_the_costliest_layer_first() -> None:
    space = SearchSpace.from_model(_model("tiny-resnet"), torch.zeros(INPUT))
    start = space.uniform_bits(8)
    # one step below uniform 8 bits: only the layer with the most weight bits loses a bit
    weights = space.quant_cost_model.layer_weights(start.widths)
    costliest = space.quantizable_layers[int(np.argmax(weights))]
    fitted = space.fit_bits(start, size=(space.size_bits(start) - 1) / space.full_size_bits)
    changed = {k: v for k, v in fitted.bits.items() if v != start.bits[k]}
    assert changed == {costliest: (7, 8)}


def test_unreachable_budgets_are_refused() -> None:
    space = SearchSpace.from_model(_model("tiny-resnet"), torch.zeros(INPUT))
    with pytest.raises(BudgetError, match="below what this search space can reach"):
        space.size_budget(1e-4)
    with pytest.raises(BudgetError, match="fraction in"):
        space.bops_budget(1.5)
    reachable = space.size_fraction(space.lowest_bits()) * 1.01
    with pytest.raises(BudgetError, match="cannot be met by these widths"):
        space.fit_bits(space.full(), size=reachable)  # reachable with the smallest widths, not with full ones


def test_cost_model_with_bits_is_fast() -> None:
    import time

    space = SearchSpace.from_model(build_model("resnet20", 1, 10), torch.zeros(INPUT))
    arch = space.sample_bits(np.random.default_rng(0), space.from_ratios(0.5))
    start = time.perf_counter()
    for _ in range(200):
        space.bops(arch)
        space.size_bits(arch)
    assert (time.perf_counter() - start) / 200 < 0.005
