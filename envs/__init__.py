"""Gymnasium environments over a search space, registered with `gymnasium.register`.

Each takes the run's limits as one `search_spaces.Budget`. Example::

    env = gymnasium.make(CHANNEL_PRUNING_ID, space=space, evaluate=fn, budget=Budget.from_fractions(space, 0.5))
    env = gymnasium.make(QUANTIZATION_ID, space=space, evaluate=fn, budget=Budget.from_fractions(space, size=0.1))
    env = gymnasium.make(JOINT_ID, space=space, evaluate=fn, budget=Budget.from_fractions(space, 0.5, bops=0.02))
"""

from __future__ import annotations

import gymnasium

from envs.bit_phase import BIT_FEATURES, BitPhase
from envs.bits_env import JOINT_FEATURES, JointCompressionEnv, QuantizationEnv
from envs.pruning_env import FEATURES, REWARDS, ChannelPruningEnv
from envs.wrappers import MovingAverageBaseline

__all__ = [
    "BIT_FEATURES",
    "CHANNEL_PRUNING_ID",
    "FEATURES",
    "JOINT_FEATURES",
    "JOINT_ID",
    "QUANTIZATION_ID",
    "REWARDS",
    "BitPhase",
    "ChannelPruningEnv",
    "JointCompressionEnv",
    "MovingAverageBaseline",
    "QuantizationEnv",
]

CHANNEL_PRUNING_ID = "AutoMLPrune/ChannelPruning-v0"
QUANTIZATION_ID = "AutoMLPrune/Quantization-v0"
JOINT_ID = "AutoMLPrune/JointCompression-v0"

for _id, _entry in ((CHANNEL_PRUNING_ID, "envs.pruning_env:ChannelPruningEnv"),
                    (QUANTIZATION_ID, "envs.bits_env:QuantizationEnv"),
                    (JOINT_ID, "envs.bits_env:JointCompressionEnv")):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry)
