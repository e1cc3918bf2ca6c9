"""Gymnasium environments over a search space, registered with `gymnasium.register`.

Example::

    env = gymnasium.make(CHANNEL_PRUNING_ID, space=space, evaluate=fn, budget_flops=budget)
"""

from __future__ import annotations

import gymnasium

from envs.pruning_env import FEATURES, REWARDS, ChannelPruningEnv
from envs.wrappers import MovingAverageBaseline

__all__ = ["CHANNEL_PRUNING_ID", "FEATURES", "REWARDS", "ChannelPruningEnv", "MovingAverageBaseline"]

CHANNEL_PRUNING_ID = "AutoMLPrune/ChannelPruning-v0"

if CHANNEL_PRUNING_ID not in gymnasium.registry:
    gymnasium.register(id=CHANNEL_PRUNING_ID, entry_point="envs.pruning_env:ChannelPruningEnv")
