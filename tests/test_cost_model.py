"""The analytic cost model agrees exactly with FlopCounterMode on physically compressed models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl_prune.errors import ConfigError
from automl_prune.graph.analysis import measure_flops
from automl_prune.models import build_model
from automl_prune.prune.pruning import compress
from search_spaces import SearchSpace

# Every zoo model and two torchvision families (residual, depthwise) at Fashion-MNIST's input shape.
MODELS = [
    "tiny-cnn",
    "tiny-resnet",
    "resnet20",
    "resnet56",
    "vgg-small",
    "mobilenetv2-small",
    "torchvision:resnet18",
    "torchvision:mobilenet_v2",
]
N_ARCHITECTURES = 50


def _space(name: str) -> tuple[torch.nn.Module, SearchSpace]:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, input_size=28)
    return model, SearchSpace.from_model(model, torch.zeros(1, 1, 28, 28), model_name=name)


@pytest.mark.parametrize("name", MODELS)
def test_full_model_flops_and_params_match(name: str) -> None:
    model, space = _space(name)
    assert space.full_flops == measure_flops(model, (1, 1, 28, 28))
    assert space.cost_model.full.params == sum(p.numel() for p in model.parameters())
    assert len(space) > 0


@pytest.mark.parametrize("name", MODELS)
def test_random_architectures_flops_exact_and_trainable(name: str) -> None:
    model, space = _space(name)
    rng = np.random.default_rng(1)
    x = torch.randn(2, 1, 28, 28)
    for i in range(N_ARCHITECTURES):
        arch = space.sample(rng)
        pruned = compress(model, space.graph, arch)
        costs = space.costs(arch)
        assert measure_flops(pruned, (1, 1, 28, 28)) == costs.flops, f"architecture {i}: {arch.widths}"
        assert sum(p.numel() for p in pruned.parameters()) == costs.params
        for group in space.graph.groups:
            root = pruned.get_submodule(group.name)
            out = root.out_channels if hasattr(root, "out_channels") else root.out_features
            assert out == arch.widths[group.name]
        if i % 10 == 0:  # forward + backward on a sample of them keeps the test fast
            pruned.train()
            pruned(x).sum().backward()
            assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)


def test_residual_adds_are_one_group() -> None:
    _, space = _space("resnet20")
    # The stem output feeds the whole first stage through identity shortcuts: one decision for all of it.
    stem_group = space.graph.group(space.names[0])
    touched = stem_group.member_layers()
    assert sum(1 for n in touched if n.startswith("layers.")) >= 6
    assert len(space) < sum(1 for layer in space.graph.layers.values() if layer.kind == "conv")


def test_classifier_outputs_and_network_input_are_never_pruned() -> None:
    model, space = _space("vgg-small")
    classifier = space.graph.classifier
    assert classifier not in space.names
    pruned = compress(model, space.graph, space.smallest())
    assert pruned.get_submodule(classifier).out_features == 10
    first = next(m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1


def test_depthwise_conv_follows_its_expansion() -> None:
    model, space = _space("mobilenetv2-small")
    pruned = compress(model, space.graph, space.from_ratios(0.5))
    for module in pruned.modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels


def test_cost_model_is_fast() -> None:
    _, space = _space("resnet56")
    arch = space.from_ratios(0.5)
    import time

    start = time.perf_counter()
    for _ in range(200):
        space.flops(arch)
    per_call = (time.perf_counter() - start) / 200
    assert per_call < 0.005  # generous: measured ~50 us; a forward pass takes ~100x longer


class _ConvTranspose(torch.nn.Module):
    """An upsampling decoder step: ConvTranspose2d, which the cost model does not model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(torch.relu(self.conv(x))).mean((2, 3)))


class _Grouped(torch.nn.Module):
    """A grouped (not depthwise) conv between two plain ones, with GroupNorm after each conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.gn1 = torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.GroupNorm(4, 16)
        self.conv2, self.gn2 = torch.nn.Conv2d(16, 16, 3, padding=1, groups=2), torch.nn.GroupNorm(4, 16)
        self.conv3, self.gn3 = torch.nn.Conv2d(16, 24, 3, padding=1), torch.nn.GroupNorm(8, 24)
        self.head = torch.nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gn1(self.conv1(x)))
        x = torch.relu(self.gn2(self.conv2(x)))
        x = torch.relu(self.gn3(self.conv3(x)))
        return self.head(x.mean((2, 3)))


class _Split(torch.nn.Module):
    """Splits its channels in two branches (chunk) and concatenates them again."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.left = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.right = torch.nn.Conv2d(8, 12, 1)
        self.mix = torch.nn.Conv2d(20, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.stem(x)).chunk(2, dim=1)
        x = torch.relu(self.mix(torch.cat([self.left(a), self.right(b)], dim=1)))
        return self.head(x.mean((2, 3)))


def test_a_layer_the_cost_model_does_not_count_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"ConvTranspose2d 'up'") as info:
        SearchSpace.from_model(_ConvTranspose(), torch.zeros(1, 1, 16, 16))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("factory", [_Grouped, _Split], ids=["grouped-groupnorm", "channel-split"])
def test_grouped_groupnorm_and_split_models_have_exact_flops_and_run(factory: type[torch.nn.Module]) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    assert space.full_flops == measure_flops(model, (1, 1, 16, 16))
    assert space.cost_model.full.params == sum(p.numel() for p in model.parameters())
    assert len(space) > 0
    rng = np.random.default_rng(0)
    for _ in range(10):
        architecture = space.sample(rng)
        pruned = compress(model, space.graph, architecture)
        assert pruned(torch.zeros(2, 1, 16, 16)).shape == (2, 10)  # GroupNorm widths stay multiples of groups
        assert space.flops(architecture) == measure_flops(pruned, (1, 1, 16, 16))
        assert space.costs(architecture).params == sum(p.numel() for p in pruned.parameters())
