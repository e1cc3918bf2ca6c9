"""A small CNN whose last conv is flattened into a linear layer: every data-driven criterion prunes it.

REAP (the default criterion) re-fits the linear layer as a conv whose taps are the flattened positions
(`automl_prune.prune.calibration.Site.block`); the other data-driven criteria cannot read a channel that is
many inputs of a linear layer, so they rank that group by L1 weight magnitude and say so in one line.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automl_prune.prune.calibration import Calibration
from automl_prune.prune.pruning import channel_order, compress_widths
from search_spaces import SearchSpace

DATA_CRITERIA = ["l1-std", "taylor", "ezcrop", "similarity", "ccp"]


class _FlattenNet(nn.Module):
    """conv (1 -> 6) -> relu -> conv (6 -> 5, stride 2) -> relu -> flatten (5 x 4 x 4) -> linear (80 -> 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def _setup() -> tuple[nn.Module, SearchSpace, Calibration]:
    torch.manual_seed(0)
    model = _FlattenNet().eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(48, 1, 8, 8, generator=generator)
    calibration = Calibration(images, torch.randint(0, 4, (48,), generator=generator), batch_size=16)
    return model, SearchSpace.from_model(model, images[:1]), calibration


def _head_inputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.relu(model.conv2(torch.relu(model.conv1(images)))).flatten(1).double()


def test_reap_removes_first_the_channel_the_linear_layer_best_absorbs(capsys: pytest.CaptureFixture[str]) -> None:
    """The first channel REAP removes from the flattened group is the one whose 16 inputs of the linear layer
    cost the least output error after the other inputs are re-fit (the Schur complement of the ridge Gram
    matrix, computed here independently); no fallback is announced."""
    model, space, calibration = _setup()
    ranking = channel_order(model, space.graph, "reap", ["conv2"], calibration=calibration)["conv2"]
    assert sorted(ranking) == list(range(5))
    z = _head_inputs(model, calibration.images)
    gram = z.T @ z
    ridge = 1e-3 * float(gram.diagonal().mean())  # REAP's default ridge, relative to the mean diagonal
    m = gram + ridge * torch.eye(80, dtype=torch.float64)
    w = model.head.weight.detach().double().T  # (80 inputs, 4 outputs)
    errors = []
    for channel in range(5):
        r = torch.arange(channel * 16, (channel + 1) * 16)
        s = torch.tensor([i for i in range(80) if not channel * 16 <= i < (channel + 1) * 16])
        schur = m[r][:, r] - m[r][:, s] @ torch.linalg.solve(m[s][:, s], m[s][:, r])
        errors.append(float((w[r] * (schur @ w[r])).sum()))
    assert ranking[-1] == min(range(5), key=errors.__getitem__)
    assert "ranked by L1" not in capsys.readouterr().err


@pytest.mark.parametrize("name", DATA_CRITERIA)
def test_other_data_criteria_rank_the_flattened_group_by_magnitude(name: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, space, calibration = _setup()
    orders = channel_order(model, space.graph, name, calibration=calibration, widths={"conv1": 4, "conv2": 3})
    by_l1 = channel_order(model, space.graph, "l1", ["conv2"])["conv2"]
    assert set(orders["conv2"][:3]) == set(by_l1[:3])
    assert sorted(orders["conv1"]) == list(range(6))
    err = capsys.readouterr().err
    assert f"criterion {name!r}" in err and "group(s) conv2 (" in err and "ranked by L1" in err


@pytest.mark.parametrize("name", ["reap", "taylor"])
def test_the_pruned_flatten_net_runs_with_the_asked_widths(name: str) -> None:
    model, space, calibration = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = compress_widths(model, space.graph, {"conv1": 4, "conv2": 2}, name, calibration=calibration)
    assert pruned.conv1.out_channels == 4 and pruned.conv2.out_channels == 2
    assert pruned.head.in_features == 2 * 16
    assert pruned(calibration.images[:3]).shape == (3, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched


def test_layers_too_wide_to_refit_keep_their_pruned_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """`reconstruct` re-fits a layer only up to ``MAX_REFIT_INPUTS`` input entries (a VGG classifier behind a
    25,088-input flatten would need a gigabyte Gram matrix per candidate): with the limit at 33 the linear layer
    (32 inputs left) is re-fit and conv2 (4 x 9 = 36) keeps the weights pruning left it."""
    from automl_prune.prune import reconstruct as refit

    model, space, calibration = _setup()
    pruned = compress_widths(model, space.graph, {"conv1": 4, "conv2": 2}, "l1", calibration=calibration)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    monkeypatch.setattr(refit, "MAX_REFIT_INPUTS", 33)
    refit.reconstruct(model, pruned, calibration)
    assert torch.equal(pruned.conv2.weight, before["conv2.weight"])
    assert not torch.equal(pruned.head.weight, before["head.weight"])
