"""`automl_prune.search` leaves the caller's process as it was, with its default (Ray) workers and with none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Run in a fresh interpreter: the caller's process is the thing under test, and Ray starts inside it.
SCRIPT = r"""
import faulthandler, json, logging, multiprocessing, os, random, signal, sys, threading
import numpy as np, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import automl_prune

def snapshot():
    return {
        "environ": dict(os.environ),
        "path": list(sys.path),
        "excepthook": repr(sys.excepthook),
        "threading_excepthook": repr(threading.excepthook),
        "signals": {int(s): repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)},
        "faulthandler": faulthandler.is_enabled(),
        "root_handlers": [repr(h) for h in logging.getLogger().handlers],
        "start_method": multiprocessing.get_start_method(allow_none=True),
        "random": [random.random(), float(np.random.rand()), float(torch.rand(1))],
        "threads": sorted(t.name for t in threading.enumerate() if not t.daemon),
    }

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
x, y = torch.randn(256, 1, 12, 12), torch.randint(0, 10, (256,))
loader = DataLoader(TensorDataset(x, y), batch_size=64)
random.seed(5); np.random.seed(5); torch.manual_seed(5)
before = snapshot()
random.seed(5); np.random.seed(5); torch.manual_seed(5)
kwargs = json.loads(sys.argv[2])
automl_prune.search(model, train=loader, val=loader, flops=0.5, agent=sys.argv[3], episodes=2, out=sys.argv[1],
                    finetune_epochs=0.05, rerank_top_k=0, progress=False, **kwargs)
after = snapshot()
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.parametrize(("agent", "kwargs"), [("random", {}), ("ddpg", {"workers": 0})],
                         ids=["default-workers-ray", "in-process-ddpg"])
def test_search_leaves_the_callers_process_as_it_was(tmp_path: Path, agent: str, kwargs: dict) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"), json.dumps(kwargs), agent],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = result["before"], result["after"]
    changed = {key for key in before if before[key] != after[key]}
    detail = {key: (before[key], after[key]) for key in changed if key != "environ"}
    env_diff = {k for k in set(before["environ"]) | set(after["environ"])
                if before["environ"].get(k) != after["environ"].get(k)}
    assert not changed, (detail, sorted(env_diff))
