"""The seed papers' data-driven criteria, CCP's programme and least-squares reconstruction, on tiny models."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from automl_prune.errors import ConfigError, UnknownNameError
from automl_prune.graph.analysis import build_dependency_graph
from automl_prune.models import build_model
from automl_prune.prune.calibration import Calibration
from automl_prune.prune.criteria import get_criterion
from automl_prune.prune.criteria_ccp import CCP, ccp_objective, solve_ccp
from automl_prune.prune.pruning import channel_order, compress, compress_widths
from automl_prune.prune.reconstruct import kept_channels, reconstruct
from search_spaces import SearchSpace

SEED_CRITERIA = ["l1-std", "taylor", "ezcrop", "similarity", "reap", "ccp"]
DUPLICATE, COPY, ZERO = 1, 3, 5


class _Redundant(nn.Module):
    """conv1 (8 filters: filter 3 copies filter 1, filter 5 is zero) -> relu -> conv2 -> relu -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv1.weight[COPY] = self.conv1.weight[DUPLICATE]
            self.conv1.bias[COPY] = self.conv1.bias[DUPLICATE]
            self.conv1.weight[ZERO] = 0
            self.conv1.bias[ZERO] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def _data(n: int = 32, channels: int = 1, size: int = 16, classes: int = 4) -> Calibration:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, channels, size, size, generator=generator)
    return Calibration(images, torch.randint(0, classes, (n,), generator=generator), batch_size=16)


@pytest.mark.parametrize("name", SEED_CRITERIA)
def test_zero_then_duplicate_channels_go_first(name: str) -> None:
    model = _Redundant().eval()
    calibration = _data()
    space = SearchSpace.from_model(model, calibration.images[:1])
    ranking = channel_order(model, space.graph, name, ["conv1"], calibration=calibration)["conv1"]
    assert ranking[-1] == ZERO and ranking[-2] in (DUPLICATE, COPY)
    chosen = channel_order(model, space.graph, name, ["conv1"], calibration=calibration, widths={"conv1": 6})["conv1"]
    assert set(chosen[6:]) in ({ZERO, DUPLICATE}, {ZERO, COPY})
    pruned = compress_widths(model, space.graph, {"conv1": 6}, name, calibration=calibration)
    kept = kept_channels(pruned)["conv1"]["out"]
    assert ZERO not in kept and len({DUPLICATE, COPY} & set(kept)) == 1


@pytest.mark.parametrize("name", ["similarity", "reap"])
def test_folding_or_refitting_makes_removing_a_duplicate_lossless(name: str) -> None:
    model = _Redundant().eval()
    calibration = _data()
    space = SearchSpace.from_model(model, calibration.images[:1])
    pruned = compress_widths(model, space.graph, {"conv1": 6}, name, calibration=calibration).eval()
    with torch.no_grad():
        x = calibration.images
        assert torch.allclose(pruned(x), model(x), atol=1e-3 * float(model(x).abs().max()))


@functools.cache
def _zoo(model_name: str) -> tuple[nn.Module, SearchSpace]:
    torch.manual_seed(0)
    model = build_model(model_name, 1, 4).eval()
    return model, SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize("model_name", ["tiny-resnet", "mobilenetv2-small"])
@pytest.mark.parametrize("name", SEED_CRITERIA)
def test_compress_residual_and_depthwise_models_to_exact_widths(model_name: str, name: str) -> None:
    model, space = _zoo(model_name)
    calibration = _data(16)
    architecture = space.from_ratios(0.5)
    pruned = compress(model, space.graph, architecture, name, calibration=calibration).eval()
    with torch.no_grad():
        assert pruned(calibration.images[:2]).shape == (2, 4)
    for group, width in architecture.widths.items():
        assert pruned.get_submodule(group).out_channels == width, group
    assert any(width < space[group].size for group, width in architecture.widths.items())


@pytest.mark.parametrize("name", SEED_CRITERIA)
def test_uncalibrated_data_criterion_is_one_clear_line(name: str) -> None:
    model, space = _zoo("tiny-resnet")
    for call in (
        lambda: channel_order(model, space.graph, name),
        lambda: compress(model, space.graph, space.from_ratios(0.5), name),
    ):
        with pytest.raises(ConfigError, match="calibration") as info:
            call()
        assert "\n" not in str(info.value) and repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["taylor", "ccp"])
def test_loss_criteria_need_labels(name: str) -> None:
    model, space = _zoo("tiny-resnet")
    with pytest.raises(ConfigError, match="labels"):
        channel_order(model, space.graph, name, calibration=Calibration(_data().images))


def test_unknown_criterion_lists_every_name() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'taylor'") as info:
        get_criterion("taylr")
    assert all(name in str(info.value) for name in [*SEED_CRITERIA, "l1", "fpgm"])


def _brute_force(g: torch.Tensor, h: torch.Tensor, remove: int) -> float:
    """The exact optimum of CCP's programme, by enumerating every removed set."""
    sets = torch.tensor(list(itertools.combinations(range(g.numel()), remove)))
    values = -g[sets].sum(1) + 0.5 * h[sets[:, :, None], sets[:, None, :]].sum((1, 2))
    return float(values.min())


def test_ccp_solver_matches_exhaustive_optimum_on_small_programmes() -> None:
    generator = torch.Generator().manual_seed(0)
    gaps = []
    for trial in range(40):
        size = 10
        grads = torch.randn(64, size, generator=generator, dtype=torch.float64)
        grads[:, :3] += grads[:, 3:6] * (trial % 3)  # correlated channels: joint removal matters
        g, h = grads.mean(0), grads.T @ grads / 64
        for remove in (3, 5, 7):
            best = _brute_force(g, h, remove)
            found = ccp_objective(g, h, solve_ccp(g, h, remove))
            gaps.append((found - best) / max(abs(best), 1e-12))
    gaps_t = torch.tensor(gaps)
    assert float(gaps_t.min()) >= -1e-9  # never better than the optimum: the objective is computed right
    assert float((gaps_t <= 1e-9).float().mean()) >= 0.95  # exact on (almost) every instance
    assert float(gaps_t.max()) <= 0.05


def test_ccp_select_on_a_real_group_is_near_the_exhaustive_optimum() -> None:
    model, _ = _zoo("tiny-resnet")
    calibration = _data(32)
    criterion = CCP()
    criterion.prepare(model, calibration)
    dg = build_dependency_graph(model, torch.zeros(1, 1, 16, 16))
    for name in ("stem.0", "layers.0.conv1"):
        root = model.get_submodule(name)
        size = root.out_channels
        group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(size)))
        g, h = criterion.problem(group)
        for keep in (2, 4, 6):
            kept = set(criterion.select(group, keep))
            found = ccp_objective(g, h, [c for c in range(size) if c not in kept])
            best = _brute_force(g, h, size - keep)
            assert found <= best + 0.05 * abs(best) + 1e-12, (name, keep, found, best)


def _trained_tiny_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """tiny-cnn trained for a few hundred steps on a learnable synthetic task (class = brightest quadrant)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(640, 1, 16, 16, generator=generator)
    labels = torch.randint(0, 4, (640,), generator=generator)
    for k in range(4):
        rows, cols = divmod(k, 2)
        images[labels == k, :, rows * 8 : rows * 8 + 8, cols * 8 : cols * 8 + 8] += 1.0
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 1, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(150):
        idx = torch.randint(0, 512, (64,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
        optimizer.step()
    return model.eval(), images, labels


def _layer_error(original: nn.Module, pruned: nn.Module, layer: str, x: torch.Tensor) -> float:
    outputs = []
    for model in (original, pruned):
        found: list[torch.Tensor] = []
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o, found=found: found.append(o))
        with torch.no_grad():
            model(x)
        handle.remove()
        outputs.append(found[0])
    kept = kept_channels(pruned)[layer].get("out")
    target = outputs[0] if kept is None else outputs[0][:, kept]
    return float((outputs[1] - target).square().mean() / target.square().mean())


def test_reconstruction_lowers_the_pruned_layers_output_error() -> None:
    model, images, labels = _trained_tiny_cnn()
    space = SearchSpace.from_model(model, images[:1])
    calibration = Calibration(images[:256], labels[:256], batch_size=64)
    held_out = images[512:]
    architecture = space.from_ratios(0.5)
    plain = compress(model, space.graph, architecture, "l1").eval()
    refit = reconstruct(model, compress(model, space.graph, architecture, "l1"), calibration).eval()
    via_flag = compress(model, space.graph, architecture, "l1", calibration=calibration, reconstruct=True).eval()
    for layer in ("conv2.0", "conv3.0", "fc"):
        before = _layer_error(model, plain, layer, held_out)
        after = _layer_error(model, refit, layer, held_out)
        assert after < 0.8 * before, (layer, before, after)
        assert _layer_error(model, via_flag, layer, held_out) == pytest.approx(after, rel=1e-4)


def test_reconstruct_needs_kept_indices() -> None:
    model, _ = _zoo("tiny-resnet")
    with pytest.raises(ConfigError, match="kept channel indices"):
        reconstruct(model, build_model("tiny-resnet", 1, 4), _data())


@pytest.mark.parametrize("model_name", ["tiny-resnet", "mobilenetv2-small"])
def test_reap_keeps_a_prefix_of_one_ranking_so_a_search_can_rank_once(model_name: str) -> None:
    """`reap` is ``nested``: for every width, `select` keeps the first channels of its `ranking`. So the
    search's evaluator, which ranks once and re-fits to cached original outputs, builds exactly the model a
    plain `compress_widths` (a fresh greedy elimination per width, as export does) builds."""
    from automl_prune.prune.reconstruct import OriginalOutputs
    from automl_prune.scoring.evaluator import Evaluator

    model, space = _zoo(model_name)
    calibration = _data(n=32, channels=1, size=16)
    ranking = channel_order(model, space.graph, "reap", calibration=calibration)
    targets = OriginalOutputs()
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(4)]
    for arch in archs + archs[:1]:  # the last one again: served from the stored targets
        plain = compress_widths(model, space.graph, arch.widths, "reap", calibration=calibration).eval()
        ranked = compress_widths(model, space.graph, arch.widths, "reap", ranking, calibration=calibration,
                                 targets=targets).eval()
        assert kept_channels(ranked) == kept_channels(plain)
        with torch.no_grad():
            x = calibration.images
            assert torch.equal(ranked(x), plain(x))
    assert targets.bytes > 0
    crit = get_criterion("reap")  # widths across every group, not only the sampled ones
    crit.prepare(model, calibration)
    dg = build_dependency_graph(model, calibration.images[:1])
    for g in space.graph.groups:
        root = model.get_submodule(g.name)
        group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(g.size)))
        order = crit.ranking(group)
        assert order == ranking[g.name]
        for keep in {*range(1, g.size, max(1, g.size // 12)), g.size - 1}:  # ~12 widths a group, the ends too
            assert sorted(crit.select(group, keep)) == sorted(order[:keep]), (g.name, keep)
    evaluator = Evaluator(model, space, calibration.images, calibration.images, calibration.labels,
                          criterion="reap", calibration=calibration, bn_batches=1)
    assert evaluator._channel_order() == ranking
