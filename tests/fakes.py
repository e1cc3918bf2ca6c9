"""Instant, deterministic stand-ins for the evaluator, shared by the searcher tests (no network runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search_spaces import Architecture, SearchSpace


@dataclass
class FakeMetrics:
    """What a searcher reads of an evaluation."""

    accuracy: float
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "flops": self.flops}


class AnalyticEvaluator:
    """Accuracy falls with each group's narrowing (later groups matter more) and each layer's lost bits. Counts
    its calls; microseconds per evaluation, so that the tests time the searchers, not a network."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.weights = {d.name: 0.05 * (i + 1) ** 2 for i, d in enumerate(space.decisions)}
        self.bit_weights = {name: 0.01 * (i + 1) for i, name in enumerate(space.quantizable_layers)}
        self.calls: list[Architecture] = []

    def evaluate(self, architecture: Architecture) -> FakeMetrics:
        self.calls.append(architecture)
        loss = sum(w * (1 - architecture.widths.get(name, self.space[name].size) / self.space[name].size) ** 2
                   for name, w in self.weights.items())
        for name, (w_bits, a_bits) in architecture.bits.items():
            loss += self.bit_weights[name] * ((8 - min(w_bits, 8)) + 0.5 * (8 - min(a_bits, 8))) / 8
        return FakeMetrics(accuracy=max(0.0, 0.9 - loss), flops=self.space.flops(architecture))
