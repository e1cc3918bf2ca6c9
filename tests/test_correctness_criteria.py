"""A criterion that cannot score a group is refused in one line, before any search, not mid-search."""

from __future__ import annotations

import pytest
import torch

from automl_prune.errors import ConfigError
from automl_prune.prune.pruning import channel_order
from search_spaces import SearchSpace


class _NoNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_bn_scale_on_groups_without_batch_norm_is_one_clear_line() -> None:
    model = _NoNorm()
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16))
    assert set(channel_order(model, space.graph, "l1")) == {d.name for d in space.decisions}
    with pytest.raises(ConfigError, match=r"criterion BNScale cannot score the 8 channels of group 'conv1'") as info:
        channel_order(model, space.graph, "bn_scale")
    assert "\n" not in str(info.value) and "'l1'" in str(info.value)
