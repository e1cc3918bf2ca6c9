"""Small trained fixtures shared by tests (cached per session)."""

from __future__ import annotations

import functools

import torch

from automl_prune.data.datasets import Splits, load_dataset
from automl_prune.models import build_model
from automl_prune.train.training import train
from search_spaces import SearchSpace


@functools.cache
def trained(model_name: str = "tiny-resnet", epochs: float = 3) -> tuple[torch.nn.Module, Splits, SearchSpace]:
    """A model briefly trained on the synthetic dataset, its data and its search space."""
    splits = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    spec = splits.spec
    model = build_model(model_name, spec.in_channels, spec.num_classes, spec.input_size)
    train(model, splits, epochs=epochs, lr=0.05, batch_size=64, seed=0, progress=False)
    model = model.to(memory_format=torch.contiguous_format).eval()
    example = splits.val.images[:1].to(next(model.parameters()).device)  # trained on CUDA when there is one
    space = SearchSpace.from_model(model, example, model_name=model_name)
    return model, splits, space
