"""Write the bytecode of the modules a search imports, and only those (run once by `make setup`).

`pip install --no-compile` skips compiling the ~15,000 modules of the dependencies (about a minute of the
set-up on the 2-core VMs here), but then every process, each Ray worker included, compiles what it imports
again when ``PYTHONDONTWRITEBYTECODE`` is set, as it is on these machines (26 s against 9 s for the imports of
a search). Importing those modules once here, with bytecode writing forced on, costs about 17 s.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

sys.dont_write_bytecode = False

DEPENDENCIES = [
    "torch", "torch._dynamo", "torch.utils.flop_counter", "torchvision", "torch_pruning", "numpy", "yaml",
    "tqdm", "gymnasium", "stable_baselines3", "optuna", "matplotlib", "matplotlib.pyplot", "ray", "ray.tune",
    "ray.util.actor_pool", "pytest",
]
OWN_PACKAGES = ["automl_prune", "agents", "envs", "search_spaces"]


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    names = list(DEPENDENCIES)
    for package in OWN_PACKAGES:
        module = importlib.import_module(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}.")]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # an optional extra that is not installed is not a set-up failure
            failed.append(f"{name} ({type(error).__name__})")
    if failed:
        print("warm_bytecode: not imported: " + ", ".join(failed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
