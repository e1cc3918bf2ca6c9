"""Sparsity-regularized pruning (`automl_prune.prune.sparsity`): group lasso and growing L2 before the cut."""

from __future__ import annotations

import functools
import itertools
import json

import pytest
import torch
from torch import nn

from automl_prune.config import SearchConfig
from automl_prune.data.datasets import Split
from automl_prune.errors import ConfigError
from automl_prune.graph.analysis import NetworkGraph, analyze
from automl_prune.prune.pruning import channel_order, compress_widths
from automl_prune.prune.sparsity import (
    REGULARIZERS,
    ChannelPenalty,
    PinnedOrder,
    coupled_slices,
    regularize,
    removed_channels,
)
from automl_prune.train.training import Trainer, train


class PlainNet(nn.Module):
    """Two convs with batch norm, then a flatten into a linear layer (one channel: 16 classifier inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class ResidualNet(nn.Module):
    """A residual block and a depthwise conv sharing the stem's channels, then a pointwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn_stem = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv_a, self.bn_a = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv_b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.dw, self.bn_dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.pw, self.bn_pw = nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_stem(self.stem(x)))
        x = torch.relu(x + self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x))))))
        x = torch.relu(self.bn_pw(self.pw(torch.relu(self.bn_dw(self.dw(x))))))
        return self.fc(x.mean((2, 3)))


def _split(n: int, generator: torch.Generator) -> Split:
    prototypes = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (n,), generator=generator)
    return Split(prototypes[labels] + torch.randn(n, 3, 8, 8, generator=generator), labels)


@functools.cache
def _trained(kind: str) -> tuple[nn.Module, NetworkGraph, Split, Split]:
    generator = torch.Generator().manual_seed(0)
    train_split, val_split = _split(1024, generator), _split(256, generator)
    torch.manual_seed(0)
    model = PlainNet() if kind == "plain" else ResidualNet()
    train(model, train_split, epochs=3, lr=0.05, batch_size=64, progress=False, channels_last=False)
    model.eval()
    return model, analyze(model, val_split.images[:1]), train_split, val_split


def _half(graph: NetworkGraph) -> dict[str, int]:
    return {g.name: g.size // 2 for g in graph.groups}


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_coupled_slices_cover_every_layer_of_a_group() -> None:
    model, graph, _, _ = _trained("residual")
    slices = coupled_slices(model, graph)
    # The residual group: stem, the block's second conv, the depthwise conv, their batch norms, and the inputs
    # of the block's first conv and of the pointwise conv.
    shared = graph.group("dw")
    assert {s.layer for s in slices["dw"]} == set(shared.member_layers())
    by_layer = {(s.layer, s.param): s for s in slices["dw"]}
    assert by_layer[("conv_a", "weight")].dim == 1 and by_layer[("pw", "weight")].dim == 1
    assert by_layer[("dw", "weight")].dim == 0 and by_layer[("bn_stem", "bias")].dim == 0
    for s in slices["dw"]:
        assert sorted(s.channel.tolist()) == list(range(16))
    plain, plain_graph, _, _ = _trained("plain")
    fc = next(s for s in coupled_slices(plain, plain_graph)["conv2"] if s.layer == "fc")
    # A flatten into the classifier: each channel owns its 16 spatial inputs.
    assert fc.dim == 1 and len(fc.index) == 256
    assert torch.bincount(fc.channel).tolist() == [16] * 16
    assert torch.equal(fc.channel, fc.index // 16)


def test_group_lasso_norm_is_the_norm_over_all_coupled_parameters() -> None:
    model, graph, _, _ = _trained("plain")
    penalty = ChannelPenalty(model, graph, {"conv1": [3]}, method="group-lasso", strength=2.0, steps=10)
    expected = (model.conv1.weight[3].pow(2).sum() + model.bn1.weight[3] ** 2 + model.bn1.bias[3] ** 2
                + model.conv2.weight[:, 3].pow(2).sum()).sqrt().detach()
    removed, kept = penalty.norms(model)["conv1"]
    assert removed.tolist() == pytest.approx([float(expected)], rel=1e-5)
    assert len(kept) == 15
    assert float(penalty(model, 0).detach()) == pytest.approx(2.0 * float(expected), rel=1e-4)


def test_growing_l2_rises_by_a_fixed_increment_to_its_ceiling() -> None:
    model, graph, _, _ = _trained("plain")
    penalty = ChannelPenalty(model, graph, {"conv1": [0, 1]}, method="growing-l2", strength=0.5, steps=100)
    coefficients = [penalty.coefficient(step) for step in range(100)]
    steps_up = sorted({round(b - a, 9) for a, b in itertools.pairwise(coefficients) if b != a})
    assert steps_up == [0.05]  # ten equal increments...
    assert coefficients[0] == pytest.approx(0.05) and coefficients[49] == pytest.approx(0.5)
    assert max(coefficients) == pytest.approx(0.5) and coefficients[50:] == [pytest.approx(0.5)] * 50  # ...capped
    assert ChannelPenalty(model, graph, {"conv1": [0]}, method="group-lasso", strength=0.5,
                          steps=100).coefficient(0) == 0.5


@pytest.mark.parametrize("kind", ["plain", "residual"])
@pytest.mark.parametrize("method", ["group-lasso", "growing-l2"])
def test_regularization_drives_the_removed_channels_to_zero_and_makes_the_cut_nearly_free(
        kind: str, method: str) -> None:
    model, graph, train_split, val_split = _trained(kind)
    widths = _half(graph)
    order = channel_order(model, graph, "l1", widths=widths)
    removed = removed_channels(graph, widths, order)
    penalty = ChannelPenalty(model, graph, removed, method=method, strength=1.0, steps=100)
    before = penalty.norms(model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}

    regularized = regularize(model, graph, removed, train_split, method=method, steps=100, strength=1.0,
                             lr=0.01, batch_size=64, seed=0)

    after = penalty.norms(regularized)
    for group in removed:
        (removed_before, kept_before), (removed_after, kept_after) = before[group], after[group]
        assert removed_after.sum() < removed_before.sum() / 10, group
        assert kept_after.sum() > 0.8 * kept_before.sum(), group
    one_shot_model = compress_widths(model, graph, widths, "l1", order).eval()
    cut = compress_widths(regularized, graph, widths, PinnedOrder(order), order).eval()
    with torch.no_grad():
        base_out, regularized_out = model(val_split.images), regularized(val_split.images)
        one_shot, cut_out = one_shot_model(val_split.images), cut(val_split.images)
    one_shot_change = _relative_change(one_shot, base_out)
    regularized_change = _relative_change(cut_out, regularized_out)
    # The paper's claim: after the regularized phase, pruning itself costs almost nothing.
    assert one_shot_change > 0.3
    assert regularized_change < one_shot_change / 100
    assert regularized_change < 1e-3
    # And the regularized phase did not wreck the network on the way.
    base_acc = float((base_out.argmax(1) == val_split.labels).float().mean())
    cut_acc = float((cut_out.argmax(1) == val_split.labels).float().mean())
    assert cut_acc >= base_acc - 0.1
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())  # the base model is untouched


def test_pinned_order_cuts_exactly_the_given_channels() -> None:
    model, graph, _, val_split = _trained("plain")
    widths = _half(graph)
    order = {g.name: list(reversed(channel_order(model, graph, "l1")[g.name])) for g in graph.groups}
    pinned = compress_widths(model, graph, widths, PinnedOrder(order))
    given = compress_widths(model, graph, widths, "l1", order)
    with torch.no_grad():
        assert torch.equal(pinned.eval()(val_split.images), given.eval()(val_split.images))


def test_trainer_adds_the_penalty_to_every_step() -> None:
    model, _, train_split, _ = _trained("plain")
    calls: list[int] = []

    def penalty(net: nn.Module, step: int) -> torch.Tensor:
        calls.append(step)
        return 10.0 * net.fc.bias.pow(2).sum()

    plain = PlainNet()
    plain.load_state_dict(model.state_dict())
    penalized = PlainNet()
    penalized.load_state_dict(model.state_dict())
    for net, extra in ((plain, None), (penalized, penalty)):
        Trainer(net, train_split, epochs=1, max_steps=5, lr=0.01, batch_size=64, channels_last=False,
                penalty=extra).run(progress=False)
    assert calls == [0, 1, 2, 3, 4]
    assert penalized.fc.bias.norm() < 0.8 * plain.fc.bias.norm()


def test_config_lists_the_valid_regularizers() -> None:
    with pytest.raises(ConfigError) as error:
        SearchConfig(regularize="group_lasso")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert all(repr(name) in message for name in REGULARIZERS) and "did you mean 'group-lasso'" in message
    with pytest.raises(ConfigError, match="regularize_steps"):
        SearchConfig(regularize="growing-l2", regularize_steps=0)
    with pytest.raises(ConfigError, match="regularize_strength"):
        SearchConfig(regularize="growing-l2", regularize_strength=0.0)
    assert SearchConfig(regularize="growing-l2").regularize == "growing-l2"


def test_unknown_regularizer_on_the_command_line_writes_nothing(tmp_path, capsys) -> None:
    from automl_prune.cli import main

    run = tmp_path / "run"
    code = main(["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--cache-dir", str(tmp_path / "cache"),
                 "--regularize", "lasso", "--out", str(run), "--workers", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'growing-l2'" in err and "'group-lasso'" in err
    assert not run.exists()


def test_search_with_group_lasso_regularizes_each_candidate_then_exports_and_loads(tmp_path, capsys,
                                                                                   monkeypatch) -> None:
    import automl_prune
    import automl_prune.prune.sparsity as sparsity
    from automl_prune.cli import main

    regularized: list[tuple[str, int]] = []
    real = sparsity.regularize

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        regularized.append((kwargs["method"], kwargs["steps"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(sparsity, "regularize", counting)
    cache, run = tmp_path.parent / "cache-tiny-resnet", tmp_path / "run"
    code = main(["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.3",
                 "--cache-dir", str(cache), "--no-progress", "--workers", "0", "--agent", "random", "--episodes",
                 "2", "--flops", "0.5", "--finetune-epochs", "0.5", "--rerank-top-k", "1", "--rerank-rungs", "2",
                 "--regularize", "group-lasso", "--regularize-steps", "4", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    recipe = json.loads((run / "rerank_recipe.json").read_text())["recipe"]
    assert (recipe["regularize"], recipe["regularize_steps"], recipe["regularize_strength"]) == ("group-lasso", 4, 1.0)
    ladder = json.loads((run / "ladder.json").read_text())
    assert len(ladder["rungs"]) == 2 and any(r["rung"] == 1 for r in ladder["results"])
    # Once per candidate, at its rung 0: later rungs and the final model load their weights over the cut model.
    assert len(regularized) == len(ladder["candidates"]) >= 2
    assert set(regularized) == {("group-lasso", 4)}
    arch = json.loads((run / "best" / "arch.json").read_text())
    assert arch["flops"] <= 0.5 * arch["base_flops"]
    loaded = automl_prune.load(run / "best" / "arch.json")
    assert loaded(torch.zeros(2, *arch["input_shape"][1:])).shape == (2, 10)
