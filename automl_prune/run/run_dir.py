"""The run directory: which settings define it (a resume must match them) and its JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from automl_prune.atomic import atomic_write_text
from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError

__all__ = ["IDENTITY_KEYS", "check_run_dir", "write_json"]

# Settings that define what a run directory holds; the others may change on resume.
IDENTITY_KEYS = ("model", "dataset", "flops", "agent", "seed", "criterion", "min_keep_ratio", "round_to",
                 "proxy", "proxy_finetune_steps", "bn_batches", "val_size", "val_batches", "search_start",
                 "one_shot_entrant", "pretrain_epochs", "reward",
                 "pretrain_seed", "agent_options", "exclude", "search", "size", "bops", "reconstruct",
                 "calibration_size", "latency", "latency_batch_size",
                 # the ladder's shape: other entrants or rungs would discard the rungs already fine-tuned
                 "rerank_top_k", "rerank_rungs", "rerank_eta")


def check_run_dir(config: SearchConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds a compatible earlier run (resume); error when it holds another search."""
    previous = run_dir / "config.json"
    if not previous.exists():
        return False
    old = json.loads(previous.read_text())
    new = config.to_dict()
    changed = [k for k in IDENTITY_KEYS if old.get(k, new.get(k)) != new.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{run_dir} holds a search with other settings ({diffs}); choose another --out to start a new "
            "search, or repeat the same settings to resume it"
        )
    return True


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))
