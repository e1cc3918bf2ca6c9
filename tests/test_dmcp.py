"""DMCP: expected FLOPs reach the target, the result meets the budget, coupled groups share masks, resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from agents import SEARCHERS, SearchContext, uniform_architecture
from agents.dmcp import DMCPConfig, DMCPSearcher, flops_loss
from automl_prune.data.datasets import Splits, load_dataset
from automl_prune.models import build_model
from automl_prune.prune.pruning import compress
from automl_prune.scoring.evaluator import Evaluator
from automl_prune.train.training import train
from search_spaces import Budget, SearchSpace

FAST = {"steps": 120, "warmup_steps": 40, "batch_size": 32}


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load_dataset("synthetic")


def _setup(splits: Splits, model_name: str, *, labels: bool = True) -> tuple[SearchSpace, Evaluator]:
    torch.manual_seed(0)
    model = build_model(model_name, 1, 10, 16)
    train(model, splits, epochs=1, lr=0.1, batch_size=64, seed=0, progress=False)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=2,
                          train_labels=splits.train.labels if labels else None)
    return space, evaluator


@pytest.fixture(scope="module")
def cnn(splits: Splits) -> tuple[SearchSpace, Evaluator]:
    return _setup(splits, "tiny-cnn")


def test_flops_loss_is_flat_in_the_band_and_points_to_the_target() -> None:
    target = 1000.0
    for value, sign in [(1500.0, 1), (990.0, 0), (960.0, 0), (400.0, -1)]:
        e = torch.tensor(value, requires_grad=True)
        loss = flops_loss(e, target, band=0.05)
        loss.backward()
        assert torch.sign(e.grad) == sign, value  # type: ignore[arg-type]
    # Bounded at the band's edges: the distance is measured to the far edge.
    above = torch.tensor(1000.001, requires_grad=True)
    flops_loss(above, target, band=0.05).backward()
    assert above.grad is not None and float(above.grad) == pytest.approx(1 / 50, rel=1e-3)


@pytest.mark.parametrize("model_name,fraction", [("tiny-cnn", 0.5), ("tiny-resnet", 0.4)])
def test_expected_flops_reach_the_target_and_the_result_meets_the_budget(
    splits: Splits, model_name: str, fraction: float
) -> None:
    space, evaluator = _setup(splits, model_name)
    budget = space.flops_budget(fraction)
    # No calibration: the training alone must bring the expected FLOPs within 5% of the target.
    searcher = SEARCHERS.create("dmcp", SearchContext(space, evaluator, Budget(budget), seed=0), calibration_steps=0,
                                **FAST)
    assert isinstance(searcher, DMCPSearcher)
    result = searcher.search(3)
    gap = result.extra["expected_flops_gap"]
    print(f"{model_name} @ {fraction}: expected FLOPs {result.extra['expected_flops']:.0f} vs target {budget} "
          f"(gap {gap:+.2%})")
    assert abs(gap) <= 0.05
    assert result.extra["calibration_steps"] == 0
    final = searcher.final_architecture()
    assert space.flops(final) <= budget and result.history[0].architecture == final
    assert len(result.history) == 3 and all(e.metrics["flops"] <= budget for e in result.history)
    assert space.flops(result.best) <= budget


@pytest.mark.parametrize("alpha_init,fraction", [(6.0, 0.3), (-3.0, 0.8)])
def test_flops_loss_alone_moves_expected_flops_to_the_target(
    cnn: tuple[SearchSpace, Evaluator], alpha_init: float, fraction: float
) -> None:
    space, evaluator = cnn
    target = int(fraction * space.full_flops)
    searcher = DMCPSearcher(SearchContext(space, evaluator, Budget(space.full_flops)), target_flops=target,
                            alpha_init=alpha_init, arch_lr=0.1)
    start = searcher.expected_flops()
    assert abs(start - target) / target > 0.3  # far from it to begin with
    trace = [start] + [searcher.flops_step() for _ in range(60)]
    gaps = [abs(f - target) / target for f in trace]
    arrival = next(i for i, g in enumerate(gaps) if g < 0.1)
    # Straight towards the target until it gets there, then it stays close (Adam's momentum makes it
    # oscillate a little around the flat band).
    assert all(a > b for a, b in itertools.pairwise(gaps[: arrival + 1]))
    assert min(gaps[-10:]) < 0.05 and max(gaps[-10:]) < 0.15


def test_calibration_brings_expected_flops_into_the_band(cnn: tuple[SearchSpace, Evaluator]) -> None:
    space, evaluator = cnn
    budget = space.flops_budget(0.3)
    # Too few architecture steps to get there by training: the calibration finishes the job.
    searcher = DMCPSearcher(SearchContext(space, evaluator, Budget(budget)), steps=12, warmup_steps=10, alpha_init=6.0)
    result = searcher.search(1)
    assert result.extra["expected_flops_after_training"] > 1.2 * budget
    assert result.extra["calibration_steps"] > 0
    assert 0.95 * budget <= result.extra["expected_flops"] <= budget


def test_coupled_layers_share_one_mask_in_importance_order(splits: Splits) -> None:
    space, evaluator = _setup(splits, "tiny-resnet")
    searcher = DMCPSearcher(SearchContext(space, evaluator, Budget(space.flops_budget(0.5))), steps=1)
    searcher._build()
    masked = searcher._masked_layers()
    # The residual stream's group masks its BNs; the convs right before them are covered by them.
    stream = {layer for group, layer in masked if group == "stem.0"}
    assert stream == {"stem.1", "layers.0.bn2"}
    assert len({layer for _, layer in masked}) == len(masked)  # no layer masked twice
    for chain in searcher.chains:
        mask = chain.soft_mask().detach()
        by_rank = mask[torch.argsort(chain.rank)]
        assert torch.all(by_rank[: chain.min_keep] == 1)
        assert torch.all(by_rank[1:] <= by_rank[:-1])  # the important channels are kept most
        assert float(chain.expected_width().detach()) == pytest.approx(float(mask.sum()), rel=1e-5)
    # The masks reach the network: zeroing the residual stream's optional channels changes the output.
    x = splits.val.images[:8]
    searcher.supernet.eval()
    with torch.no_grad():
        full = searcher.supernet(x)
        searcher._set_hard({**searcher.space.full().widths, "stem.0": space["stem.0"].min_keep})
        pruned = searcher.supernet(x)
        searcher._set_hard(None)
    assert not torch.allclose(full, pruned)


def test_save_restore_continues_without_retraining(splits: Splits, tmp_path: Path) -> None:
    space, evaluator = _setup(splits, "tiny-cnn", labels=False)  # trains on the base model's predictions
    budget = space.flops_budget(0.5)
    options = {"steps": 30, "warmup_steps": 10, "batch_size": 16}
    first = DMCPSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), **options)
    before = first.search(2)
    first.save(tmp_path / "state")
    second = DMCPSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), **options)
    second.restore(tmp_path / "state")
    assert second.step == 30
    for a, b in zip(first.chains, second.chains, strict=True):
        assert torch.equal(a.alpha, b.alpha)
    for (name, a), b in zip(first.supernet.state_dict().items(), second.supernet.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    after = second.search(4)
    assert second.step == 30  # nothing retrained
    assert [e.architecture for e in after.history[:2]] == [e.architecture for e in before.history]
    assert len(after.history) == 4 and all(e.metrics["flops"] <= budget for e in after.history)
    # A fresh searcher on the same run_dir picks up the checkpoint written at the end of training.
    third = DMCPSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), **options)

    def no_training() -> None:
        raise AssertionError("a restored DMCP search must not train again")

    third._train_step = no_training  # type: ignore[method-assign]
    third.search(5)
    assert third.step == 30 and len(third.history) == 5
    for a, b in zip(first.chains, third.chains, strict=True):
        assert torch.equal(a.alpha, b.alpha)


def test_in_memory_search_saves_its_history_too(cnn: tuple[SearchSpace, Evaluator], tmp_path: Path) -> None:
    space, evaluator = cnn
    budget = space.flops_budget(0.5)
    first = DMCPSearcher(SearchContext(space, evaluator, Budget(budget)), steps=5, warmup_steps=2)
    before = first.search(2).history
    first.save(tmp_path)
    second = DMCPSearcher(SearchContext(space, evaluator, Budget(budget)), steps=5, warmup_steps=2)
    second.restore(tmp_path)
    after = second.search(4).history
    assert len(after) == 4 and [e.architecture for e in after[:2]] == [e.architecture for e in before]


def test_options_are_checked(cnn: tuple[SearchSpace, Evaluator]) -> None:
    space, evaluator = cnn
    with pytest.raises(TypeError, match="valid options are"):
        DMCPSearcher(SearchContext(space, evaluator, Budget(space.full_flops)), stepz=3)
    with pytest.raises(ValueError, match="band"):
        DMCPConfig(band=1.5)
    with pytest.raises(ValueError, match="target_flops"):
        DMCPSearcher(SearchContext(space, evaluator, Budget(space.full_flops)), target_flops=1)


def test_dmcp_and_compress_keep_the_same_channels(splits: Splits) -> None:
    """DMCP's chains rank channels on the base model; compression must keep exactly those (all groups)."""
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 16).eval()
    with torch.no_grad():  # distinct per-channel statistics identify every surviving channel
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn_like(module.running_mean))
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=2)
    searcher = DMCPSearcher(SearchContext(space, evaluator, Budget(space.flops_budget(0.5))), steps=1, warmup_steps=0)
    searcher._build()
    architecture = uniform_architecture(space, space.flops_budget(0.5))
    widths = architecture.widths
    pruned = compress(model, space.graph, architecture, evaluator.criterion)  # no BN recalibration
    differ = {}
    for chain in searcher.chains:
        bn = next(m.layer for m in space.graph.group(chain.name).members
                  if m.dim == "out" and isinstance(model.get_submodule(m.layer), torch.nn.BatchNorm2d))
        base_mean = model.get_submodule(bn).running_mean.tolist()
        kept = sorted(base_mean.index(v) for v in pruned.get_submodule(bn).running_mean.tolist())
        expected = torch.nonzero(chain.hard_mask(widths[chain.name])).flatten().tolist()
        if kept != expected:
            differ[chain.name] = len(set(kept) ^ set(expected)) // 2
    assert not differ, f"channels kept differently per group: {differ}"
