"""Using the library leaves the caller's process as it found it: environment, matplotlib backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MPLBACKEND", "MPLCONFIGDIR")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip()


def test_importing_the_package_sets_no_environment_variable() -> None:
    code = ("import os; before = dict(os.environ); import automl_prune, automl_prune.report.summary, search_spaces; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    assert _python(code) == "[]"


def test_plotting_keeps_the_callers_matplotlib_backend(tmp_path: Path) -> None:
    code = ("import matplotlib; from automl_prune.report.summary import plot_widths; "
            f"plot_widths({{'a': 8, 'b': 4}}, {{'a': 3}}, {str(tmp_path / 'w.png')!r}, 'widths'); "
            "import sys; print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    assert _python(code, MPLBACKEND="svg", MPLCONFIGDIR=str(tmp_path / "mpl")) == "svg False"
    assert (tmp_path / "w.png").stat().st_size > 0


def test_the_command_line_sets_the_openmp_policy_for_its_own_process() -> None:
    code = ("import os, sys; from automl_prune import cli; cli._configure_process(); "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    assert _python(code) == "PASSIVE"
