"""`SearchConfig`: every setting of a search, built once (CLI flags over a YAML file over defaults).

The YAML file, the flags and the Python API all end in one `SearchConfig`, and its types are checked by one
typed model: each field's annotation is validated by pydantic (strict: a YAML ``flops: "0.5"`` or
``episodes: 2.5`` is refused, not guessed at) when the object is built, and again key by key when a YAML file is
read so that the error names the file. Cross-field rules (a latency budget replaces the FLOPs budget, ...) follow
in ``__post_init__``. Every failure is one `ConfigError` line naming the setting, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from automl_prune.errors import ConfigError, did_you_mean
from automl_prune.prune.names import REGULARIZERS


def _as_patterns(value: Any) -> Any:
    """One pattern or a list of them -> a tuple (YAML and the API give lists, the CLI a list, users a string)."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _number_as_text(value: Any) -> Any:
    """``size: 0.125`` and ``time_limit: 90`` in YAML or Python arrive as numbers; the field keeps text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


#: Module path patterns (``--exclude``, repeatable).
Patterns = Annotated[tuple[str, ...], BeforeValidator(_as_patterns)]
#: A setting written as text that may be given as a number (``size``, ``time_limit``).
NumberOrText = Annotated[str | None, BeforeValidator(_number_as_text)]

#: Where DDPG, PPO and Optuna start: the uniform width, or the sensitivity profile's one-shot answer.
SEARCH_STARTS = ("uniform", "one-shot")
#: What ``agent: auto`` (the default) runs for each ``resolved_search``: the sensitivity profile's one-shot
#: answer for widths and for bits alone (benchmarks/allocation.py and benchmarks/quality.py, docs/benchmarks.md:
#: no searcher beat it by more than the spread on vgg-small, mobilenetv2-small or resnet20 bits, and DDPG's
#: re-ranking ladder, which always enters the one-shot answer and so measures its profile too, handed that answer
#: or the uniform one back in every measured run; a DDPG search costs the same profile plus its evaluations).
#: Joint searches: DDPG, whose joint runs beat uniform (benchmarks/bits_quality.py); the one-shot joint answer
#: was not measured against it.
AUTO_AGENTS = {"widths": "sensitivity", "both": "ddpg", "bits": "sensitivity"}
#: When the re-ranking ladder enters the sensitivity one-shot answer beside the uniform one (`run.rerank_stage`).
ONE_SHOT_ENTRANTS = ("always", "if-cheaper", "never")
#: The budgets that may be given as a list: a front, one search per value (`run.front`).
FRONT_KEYS = ("flops", "size", "bops")

__all__ = [
    "AUTO_AGENTS",
    "DEFAULTS",
    "FRONT_KEYS",
    "ONE_SHOT_ENTRANTS",
    "SEARCH_MODES",
    "SEARCH_STARTS",
    "SearchConfig",
    "check_path",
    "load_config_file",
    "parse_duration",
    "parse_size",
]


@dataclass(frozen=True)
class SearchConfig:
    """One search run. Field names are also the YAML keys and (with ``-``) the CLI flags."""

    model: str = "vgg-small"
    weights: str | None = None
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    input_size: int | None = None
    stream: str = "auto"
    loader_workers: int | None = None
    flops: float = 0.5
    agent: str = "auto"
    episodes: int = 100
    out: str = "runs/search"
    cache_dir: str = "runs/cache"
    seed: int = 0
    pretrain_epochs: float = 3.0
    finetune_epochs: float = 1.0
    finetune_lr: float = 0.01
    distill: bool = False
    distill_temperature: float = 4.0
    distill_weight: float = 0.5
    regularize: str = "none"
    regularize_steps: int = 200
    regularize_strength: float = 1.0
    criterion: str = "auto"
    reconstruct: bool = False
    calibration_size: int = 512
    min_keep_ratio: float = 0.1
    round_to: int = 1
    proxy: str = "auto"
    proxy_finetune_steps: int = 20
    bn_batches: int = 10
    val_size: int | None = None
    val_batches: int | None = None
    reward: str = "accuracy"
    threads: int | None = None
    onnx: bool = False
    storage: str | None = None
    progress: bool = True
    fill_budget: bool = True
    pretrain_seed: int = 0
    rerank_top_k: int = 3
    rerank_rungs: int = 3
    rerank_eta: int = 3
    workers: int | None = None
    address: str | None = None
    device: str = "auto"
    gpus_per_worker: float | None = None
    precision: str = "auto"
    deterministic: bool = False
    exclude: Patterns = ()
    time_limit: NumberOrText = None
    search: str = "auto"
    size: NumberOrText = None
    bops: float | None = None
    latency: float | None = None
    latency_batch_size: int = 1
    search_start: str = "uniform"
    one_shot_entrant: str = "always"
    agent_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            checked = check_setting(item.name, value)
            if checked is not value:
                object.__setattr__(self, item.name, checked)
            if isinstance(checked, float) and not math.isfinite(checked):
                raise ConfigError(f"`{item.name}` must be a finite number, but got {checked}")
        if self.agent == "auto":  # the measured default for what is searched (AUTO_AGENTS)
            object.__setattr__(self, "agent", AUTO_AGENTS[self.resolved_search] if self.search_start == "uniform"
                               else "ddpg")  # a one-shot start is for a searcher; sensitivity is the one shot
        self._check_paths()
        if self.input_size is not None and self.input_size < 8:
            raise ConfigError(f"`input_size` must be >= 8 pixels, but got {self.input_size}")
        if self.stream not in STREAM_MODES:
            raise ConfigError(f"`stream` must be one of {list(STREAM_MODES)}, but got {self.stream!r}")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ConfigError(f"`loader_workers` must be >= 0 (0: read in this process), but got {self.loader_workers}")
        if self.time_limit is not None:
            parse_duration(self.time_limit)
        if self.search not in SEARCH_MODES:
            raise ConfigError(f"`search` must be one of {list(SEARCH_MODES)}, but got {self.search!r}")
        if self.size is not None:
            parse_size(self.size)
        if self.bops is not None and not 0.0 < self.bops <= 1.0:
            raise ConfigError(f"`bops` must be a fraction of the 32/32-bit model's BOPs in (0, 1], but got {self.bops}")
        if self.resolved_search == "widths" and (self.size is not None or self.bops is not None):
            raise ConfigError("`search widths` decides no bits, so a size or BOPs budget cannot be met by it; use "
                              "--search bits or both (or auto)")
        if not 0.0 < self.flops <= 1.0:
            raise ConfigError(f"`flops` must be a fraction of the base FLOPs in (0, 1], but got {self.flops}")
        if self.latency is not None:
            if not 0.0 < self.latency <= 1.0:
                raise ConfigError(f"`latency` must be a fraction of the base model's measured latency in (0, 1], "
                                  f"but got {self.latency}")
            if self.flops < 1.0:
                raise ConfigError(f"a latency budget replaces the FLOPs budget: give `latency` or `flops`, not both "
                                  f"(got latency {self.latency} and flops {self.flops}; flops 1 means none)")
            if self.search == "bits":
                raise ConfigError("`search bits` keeps every channel, and bits do not change the float model's "
                                  "latency, so a latency budget cannot be met by it; use --search widths or both")
        if self.latency_batch_size < 1:
            raise ConfigError(f"`latency_batch_size` must be >= 1, but got {self.latency_batch_size}")
        if self.episodes < 1:
            raise ConfigError(f"`episodes` must be >= 1, but got {self.episodes}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"`finetune_epochs` must be >= 0, but got {self.finetune_epochs}")
        if self.pretrain_epochs <= 0:
            raise ConfigError(f"`pretrain_epochs` must be > 0 (the epochs a zoo base model is trained for when "
                              f"it is not cached), but got {self.pretrain_epochs}")
        if not self.finetune_lr > 0:
            raise ConfigError(f"`finetune_lr` must be > 0, but got {self.finetune_lr}")
        for name in ("seed", "pretrain_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, but got {getattr(self, name)}")
        if self.bn_batches < 1:
            raise ConfigError(f"`bn_batches` must be >= 1 (batches that re-estimate batch-norm statistics before "
                              f"a candidate is scored), but got {self.bn_batches}")
        if self.proxy_finetune_steps < 0:
            raise ConfigError(f"`proxy_finetune_steps` must be >= 0, but got {self.proxy_finetune_steps}")
        if self.val_size is not None and self.val_size < 1:
            raise ConfigError(f"`val_size` must be >= 1 image, but got {self.val_size}")
        if self.val_batches is not None and self.val_batches < 1:
            raise ConfigError(f"`val_batches` must be >= 1 (candidates are scored on the first N batches of the "
                              f"validation data; none: all of it), but got {self.val_batches}")
        if self.search_start not in SEARCH_STARTS:
            raise ConfigError(f"`search_start` must be one of {list(SEARCH_STARTS)}, but got {self.search_start!r}")
        if self.search_start == "one-shot" and self.agent not in ("ddpg", "ppo", "optuna", "optuna-mo"):
            raise ConfigError(f"`search_start one-shot` starts the agents ddpg, ppo, optuna and optuna-mo from the "
                              f"sensitivity profile's answer; agent {self.agent!r} has no such start (give "
                              "search_start uniform, or one of those agents)")
        if self.one_shot_entrant not in ONE_SHOT_ENTRANTS:
            raise ConfigError(f"`one_shot_entrant` must be one of {list(ONE_SHOT_ENTRANTS)}, but got "
                              f"{self.one_shot_entrant!r}")
        if self.proxy not in ("auto", "adaptive-bn", "finetune"):
            raise ConfigError(f"`proxy` must be one of ['adaptive-bn', 'auto', 'finetune'], but got {self.proxy!r}")
        if self.reward not in ("accuracy", "acc_flops_log"):
            raise ConfigError(f"`reward` must be one of ['acc_flops_log', 'accuracy'], but got {self.reward!r}")
        if not 0.0 < self.min_keep_ratio <= 1.0:
            raise ConfigError(f"`min_keep_ratio` must be in (0, 1], but got {self.min_keep_ratio}")
        if self.regularize not in REGULARIZERS:
            hint = did_you_mean(self.regularize, REGULARIZERS)
            raise ConfigError(f"`regularize` must be one of {list(REGULARIZERS)}, but got {self.regularize!r}"
                              + (f" (did you mean {hint!r}?)" if hint else ""))
        if self.regularize_steps < 1 or not self.regularize_strength > 0:
            raise ConfigError(f"`regularize_steps` must be >= 1 and `regularize_strength` > 0, but got "
                              f"{self.regularize_steps} and {self.regularize_strength}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"`distill_temperature` must be > 0, but got {self.distill_temperature}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ConfigError(f"`distill_weight` must be in [0, 1], but got {self.distill_weight}")
        if self.calibration_size < 1:
            raise ConfigError(f"`calibration_size` must be >= 1 image, but got {self.calibration_size}")
        if self.round_to < 1:
            raise ConfigError(f"`round_to` must be >= 1, but got {self.round_to}")
        if self.rerank_top_k < 0:
            raise ConfigError(f"`rerank_top_k` must be >= 0 (0: only uniform and the widened best), "
                              f"but got {self.rerank_top_k}")
        if self.rerank_rungs < 1:
            raise ConfigError(f"`rerank_rungs` must be >= 1, but got {self.rerank_rungs}")
        if self.rerank_eta < 2:
            raise ConfigError(f"`rerank_eta` must be >= 2, but got {self.rerank_eta}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"`workers` must be >= 0 (0: no Ray, everything in this process), "
                              f"but got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"`threads` must be >= 1, but got {self.threads}")
        self._check_device()
        if self.storage is not None:
            check_storage(self.storage, self.agent)

    def _check_device(self) -> None:
        """``device``, ``precision`` and ``gpus_per_worker`` are well formed (whether a GPU is there is checked when
        the run decides its device: `automl_prune.train.device.resolve_device`)."""
        device = self.device.strip().lower()
        if _DEVICE.match(device) is None:
            raise ConfigError(f"`device` must be one of auto, cpu, cuda or cuda:N (N a GPU index such as cuda:1), "
                              f"but got {self.device!r}")
        object.__setattr__(self, "device", device)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"`precision` must be one of {list(PRECISIONS)} (auto: bf16 where the GPU supports it, "
                              f"else fp16; always fp32 on the CPU), but got {self.precision!r}")
        if self.gpus_per_worker is not None:
            if not 0.0 <= self.gpus_per_worker <= 1.0:
                raise ConfigError(f"`gpus_per_worker` must be a share of one GPU in [0, 1] (0.5: two workers per "
                                  f"GPU; 0: CPU workers), but got {self.gpus_per_worker}")
            if self.gpus_per_worker > 0 and device == "cpu":
                raise ConfigError(f"`gpus_per_worker` {self.gpus_per_worker:g} asks for GPUs, but `device` is cpu")

    def _check_paths(self) -> None:
        """Settings that name a folder or a file must not name the other kind (nothing is created here)."""
        check_path("out", self.out, "folder")
        check_path("cache_dir", self.cache_dir, "folder")
        if self.data_root is not None:
            check_path("data_root", self.data_root, "folder")
        if self.weights is not None:
            check_path("weights", self.weights, "file")

    @property
    def search_finetune_steps(self) -> int:
        """Fine-tune steps before each candidate's score (0: adaptive BN only); ``auto`` follows the budget and
        whether the criterion re-fits the kept weights (`automl_prune.scoring.fidelity_rule`)."""
        if self.proxy == "adaptive-bn":
            return 0
        if self.proxy == "finetune":
            return self.proxy_finetune_steps
        from automl_prune.prune.criteria import CRITERIA
        from automl_prune.scoring.fidelity_rule import default_search_fidelity

        refits = self.reconstruct or bool(getattr(CRITERIA.get(self.resolved_criterion), "reconstructs", False))
        return default_search_fidelity(self.flops if self.latency is None else min(self.flops, self.latency), refits)

    @property
    def resolved_criterion(self) -> str:
        """The channel criterion: ``auto`` is ``reap`` (least-squares reconstruction error, then the kept weights
        refit; the best at 50%, 25% and 10% FLOPs in ``benchmarks/criteria.py``: see `AUTO_CRITERION`), and
        ``l1-std`` for ``agent: global``, whose one threshold needs a score per channel rather than a set."""
        if self.criterion != "auto":
            return self.criterion
        return "l1-std" if self.agent == "global" else AUTO_CRITERION

    @property
    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments of `automl_prune.data.datasets.load_dataset` that come from the config (image folders)."""
        return {"input_size": self.input_size, "stream": {"auto": None, "on": True, "off": False}[self.stream],
                "loader_workers": self.loader_workers, "val_size": self.val_size}

    @property
    def gpu_count(self) -> int:
        """GPUs this run may use on this machine (`automl_prune.train.device.gpu_count`: 0 on the CPU, 1 for
        ``cuda:N``); `ConfigError` when ``device`` asks for a GPU that does not work."""
        from automl_prune.train.device import gpu_count

        return gpu_count(self.device)

    @property
    def resolved_gpus_per_worker(self) -> float:
        """Each Ray worker's share of a GPU: ``gpus_per_worker``, or 1 on a machine with GPUs (one worker per GPU)
        and 0 without."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if self.gpu_count > 0 else 0.0

    @property
    def resolved_workers(self) -> int:
        """Parallel workers: ``workers``, or as many as the GPUs hold at ``gpus_per_worker`` each (one per GPU by
        default) on a machine with GPUs, else one per CPU of this machine."""
        import os

        if self.workers is not None:
            return self.workers
        share, gpus = self.resolved_gpus_per_worker, self.gpu_count
        if share > 0 and gpus > 0:
            return max(1, math.floor(gpus / share + 1e-9))
        return os.cpu_count() or 1

    @property
    def resolved_search(self) -> str:
        """What the search decides: ``auto`` is widths without a size/BOPs budget, bits with one and no FLOPs
        budget (``flops`` 1) or latency budget, both with both."""
        if self.search != "auto":
            return self.search
        if self.size is None and self.bops is None:
            return "widths"
        return "bits" if self.flops >= 1.0 and self.latency is None else "both"

    @property
    def time_limit_seconds(self) -> float | None:
        """``time_limit`` in seconds (``None``: the search runs all its evaluations)."""
        return None if self.time_limit is None else parse_duration(self.time_limit)

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (written to the run directory as ``config.json``)."""
        data = dataclasses.asdict(self)
        data["exclude"] = list(self.exclude)
        return data


SEARCH_MODES = ("auto", "widths", "bits", "both")
#: ``device``: what `automl_prune.train.device.resolve_device` takes (checked here without importing torch).
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
#: ``precision`` (`automl_prune.train.device.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: What ``criterion: auto`` means (except for ``agent: global``). Measured on 2026-11-25 (vgg-small /
#: Fashion-MNIST, uniform and searched architectures at 50/25/10% FLOPs, every criterion; README "Which channels
#: to keep"): ``reap`` led at every budget, by 0.3-7 points after a quarter-epoch fine-tune and, with the
#: pipeline's 1-epoch fine-tune and 3 seeds, by +0.5 (25%) and +0.9 points (10%) over ``l1``, the old default.
AUTO_CRITERION = "reap"
#: ``stream``: ``auto`` streams an image folder from disk when its decoded size is over the limit
#: (`automl_prune.data.streaming`), ``on`` always, ``off`` never.
STREAM_MODES = ("auto", "on", "off")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)$")
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str | float) -> tuple[str, float]:
    """A size budget: ``("fraction", f)`` for ``"0.125"`` (of the float32 model) or ``("bits", n)`` for
    ``"1.5MB"`` (decimal KB/MB/GB, binary KiB/MiB/GiB, B)."""
    value = str(text).strip()
    try:
        fraction = float(value)
    except ValueError:
        match = _SIZE.match(value.lower())
        if match is None:
            raise ConfigError(f"`size` must be a fraction of the float32 model such as 0.125, or a size such as "
                              f"1.5MB or 600KiB, but got {text!r}") from None
        bits = float(match.group(1)) * _SIZE_UNITS[match.group(2)] * 8
        if bits <= 0:
            raise ConfigError(f"`size` must be positive, but got {text!r}") from None
        return "bits", bits
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"`size` as a fraction of the float32 model must be in (0, 1], but got {text!r}")
    return "fraction", fraction


#: Agents that keep their trials in an Optuna storage (``storage``).
STORAGE_AGENTS = ("optuna", "optuna-mo")


def check_storage(url: str, agent: str) -> None:
    """`ConfigError` unless ``url`` is a database URL that SQLAlchemy parses and ``agent`` uses a storage."""
    if agent not in STORAGE_AGENTS:
        raise ConfigError(f"`storage` is the Optuna study's database, used only by agents {list(STORAGE_AGENTS)}; "
                          f"agent {agent!r} keeps its state in the run directory, so drop --storage {url!r}")
    from sqlalchemy.dialects import registry
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        registry.load(parsed.drivername.replace("+", "."))
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ConfigError(f"`storage` must be a database URL such as sqlite:///study.db or "
                          f"postgresql://user@host/db, but got {url!r}") from None


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1h30m"``; `ConfigError` for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        match = _DURATION.match(value)
        try:
            seconds = float(value)
        except ValueError:
            if not value or match is None:
                raise ConfigError(f"`time_limit` must be a duration such as 90s, 30m, 2h or 1h30m, but got "
                                  f"{text!r}") from None
            hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
            seconds = 3600 * hours + 60 * minutes + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"`time_limit` must be a positive, finite duration, but got {text!r}")
    return seconds


@functools.cache
def _adapters() -> dict[str, TypeAdapter[Any]]:
    """A strict pydantic validator per field, from `SearchConfig`'s annotations."""
    hints = typing.get_type_hints(SearchConfig, include_extras=True)
    return {f.name: TypeAdapter(hints[f.name], config=ConfigDict(strict=True)) for f in fields(SearchConfig)}


_EXPECTED = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false",
             "string_type": "text", "dict_type": "a mapping of option -> value", "tuple_type": "a list of text"}


def check_setting(key: str, value: Any, source: str | None = None) -> Any:
    """``value`` validated (and normalised: a list of patterns -> a tuple) for field ``key``, else one
    `ConfigError` line naming ``source`` (a file) when given, the key, the value and the expected type."""
    try:
        return _adapters()[key].validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = f"{source}: " if source else ""
        kinds = {e["type"] for e in exc.errors()}
        optional = "none_required" in kinds or "None" in str(SearchConfig.__dataclass_fields__[key].type)
        wanted = next((_EXPECTED[k] for k in (error["type"], *kinds) if k in _EXPECTED), None)
        if wanted is None:
            raise ConfigError(f"{where}`{key}`: {error['msg'].lower()}, but got {value!r}") from None
        if value is None and not optional:
            raise ConfigError(f"{where}`{key}` must not be empty") from None
        what = f"items of `{key}`" if error["loc"] else f"`{key}`"
        raise ConfigError(f"{where}{what} must be {wanted}{' (or empty)' if optional else ''}, "
                          f"but got {value!r}") from None


def check_path(setting: str, path: str | Path, kind: str, *, must_exist: bool = False) -> Path:
    """``path`` as a `Path` when it can be the ``kind`` (``"file"`` or ``"folder"``) that ``setting`` names,
    else one `ConfigError` line naming the setting, the path and what it must be."""
    path = Path(path)
    flag = "--" + setting.replace("_", "-")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, so nothing can be inside it; "
                              f"{setting} must be a {kind} path")
    if path.exists():
        if kind == "file" and path.is_dir():
            raise ConfigError(f"{flag} {str(path)!r} is a folder; {setting} must be a file")
        if kind == "folder" and not path.is_dir():
            raise ConfigError(f"{flag} {str(path)!r} is an existing file; {setting} must be a folder")
    elif must_exist:
        raise ConfigError(f"{flag} {str(path)!r}: no such {kind}")
    return path


DEFAULTS = SearchConfig()
_TYPES = {f.name: f.type for f in fields(SearchConfig)}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config; unknown keys and wrong types are errors that name the key."""
    import yaml

    path = check_path("config", path, "file")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _TYPES:
            hint = did_you_mean(key, _TYPES)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            raise ConfigError(f"{path}: unknown key {raw_key!r}{suggestion}; valid keys are {sorted(_TYPES)}")
        if key in FRONT_KEYS and isinstance(value, list):  # a front of budgets (`run.front`): each one checked
            values[key] = [check_setting(key, item, str(path)) for item in value]
        else:
            values[key] = check_setting(key, value, str(path))
    return values
