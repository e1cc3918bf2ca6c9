"""The analytic cost model agrees exactly with FlopCounterMode on physically compressed models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from automl_prune.compress import compress
from automl_prune.graph import measure_flops
from automl_prune.models import build_model
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
