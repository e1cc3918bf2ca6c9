"""The search's default fidelity follows the budget and whether the criterion re-fits the kept weights."""

from __future__ import annotations

import pytest

from automl_prune.config import SearchConfig
from automl_prune.scoring.fidelity_rule import LOW_BUDGET_STEPS, default_search_fidelity


@pytest.mark.parametrize("flops", [0.1, 0.25, 0.5, 1.0])
def test_criteria_that_refit_score_by_adaptive_bn_at_every_budget(flops: float) -> None:
    assert SearchConfig(flops=flops).resolved_criterion == "reap"
    assert SearchConfig(flops=flops).search_finetune_steps == 0
    assert SearchConfig(flops=flops, criterion="l1", reconstruct=True).search_finetune_steps == 0


def test_weight_criteria_fine_tune_candidates_below_half_the_flops() -> None:
    assert SearchConfig(flops=0.1, criterion="l1").search_finetune_steps == LOW_BUDGET_STEPS
    assert SearchConfig(flops=0.25, criterion="l1").search_finetune_steps == LOW_BUDGET_STEPS
    assert SearchConfig(flops=0.5, criterion="l1").search_finetune_steps == 0
    # a latency budget counts like a FLOPs budget of the same fraction
    assert SearchConfig(flops=1.0, latency=0.25, criterion="l1").search_finetune_steps == LOW_BUDGET_STEPS


def test_an_explicit_proxy_wins_over_the_rule() -> None:
    assert SearchConfig(flops=0.1, proxy="adaptive-bn", criterion="l1").search_finetune_steps == 0
    assert SearchConfig(flops=0.5, proxy="finetune", proxy_finetune_steps=7).search_finetune_steps == 7


def test_the_rule_refuses_a_budget_outside_0_1() -> None:
    with pytest.raises(ValueError, match="flops_fraction"):
        default_search_fidelity(0.0)
