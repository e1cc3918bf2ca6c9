"""DMCP: Differentiable Markov Channel Pruning (Guo et al., CVPR 2020), over our dependency-aware groups.

Per channel group (one search-space decision), channels are ranked by the evaluator's importance criterion on
the base model (the same ranking `automl_prune.prune.pruning` uses, so the kept prefix is what compression keeps).
The first ``min_keep`` ranked channels are always kept; the rest are split into ``K`` near-equal sub-groups
whose boundaries are valid widths of the decision. Learnable ``alpha_k`` give the Markov keep probabilities
``P(keep k | keep k-1) = sigmoid(alpha_k)``; the marginals ``m_k = prod_{j<=k} sigmoid(alpha_j)`` scale each
sub-group's channels, and the expected width is ``min_keep + sum_k m_k * |sub-group k|``.

Coupled layers share their parameters by construction: a decision *is* a coupled group, and every "out"
member of it (all the convs and BNs feeding a residual stream) gets the same per-channel mask. The mask is
applied to the output of each channel-wise (BN) "out" member, and to a conv/linear "out" member's output only
when no BN of the group follows it directly.

Training (a deep copy of ``evaluator.model`` at full width, on ``evaluator.train_images``):

- every step trains the weights with the sandwich rule: the full width on the labels, the minimum width and
  ``n_random`` random widths distilled in place from the full width's outputs (KL divergence);
  random widths are uniform during warm-up and drawn from the learned Markov chains afterwards;
- after ``warmup_steps``, every ``arch_every`` steps the architecture parameters take an Adam step on the
  task loss of the soft-masked network plus the FLOPs loss.

FLOPs loss (DMCP's piecewise log form, made scale-free): with ``E`` the expected FLOPs from the expected
widths (`CostModel.differentiable_flops`), ``T`` the target and ``b`` the band (0.05),
``log((E - (1 - b) T) / T)`` above ``T``, ``log((T - E) / T)`` below ``(1 - b) T`` and ``0`` inside the band.
Each branch measures the distance to the far edge of the band, so the gradient stays bounded (``<= 1 / (b T)``)
at the edges and grows weaker far away, as in the paper. After training, if ``E`` is outside the band,
``calibration_steps`` architecture steps on the FLOPs loss alone bring it in (recorded in the result).

Result: the expected widths rounded to valid widths and projected onto the budget (`project_to_budget` with
``fill`` when over it; `fill_budget` towards the expected widths when under it, so the budget is used),
evaluated through `Searcher._evaluate`; further evaluations sample architectures from the learned chains
(moved onto the budget the same way) until the requested count is reached.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from agents.base import SearchContext, Searcher, SearchHistory, SearchResult
from agents.budget import fill_budget, project_to_budget
from automl_prune.atomic import atomic_write, atomic_write_text
from automl_prune.prune.pruning import channel_order
from search_spaces import Architecture

__all__ = ["DMCPConfig", "DMCPSearcher", "flops_loss"]

_STATE_FILE = "dmcp.pt"


@dataclass(frozen=True)
class DMCPConfig:
    """DMCP's schedule and hyper-parameters, sized for a CPU (a few seconds on the tiny fixtures).

    Attributes:
        steps: Total training steps (weights every step; architecture after the warm-up). The default, 400,
            is where the expected-width architecture's accuracy stopped improving on vgg-small.
        warmup_steps: Steps of weight-only sandwich training before the architecture parameters learn.
        arch_every: Architecture step frequency after the warm-up.
        batch_size: Training batch size.
        lr: SGD learning rate of the supernet weights (cosine-annealed to 0).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        arch_lr: Adam learning rate of the architecture parameters.
        flops_weight: Weight of the FLOPs loss against the task loss.
        band: Relative width of the flat zone ``[(1 - band) T, T]`` of the FLOPs loss.
        max_subgroups: Most sub-groups per channel group (fewer when the group has fewer valid widths).
        alpha_init: Initial ``alpha`` (``sigmoid(2) = 0.88`` keep probability per sub-group).
        n_random: Random widths per sandwich step.
        distill: In-place distillation of the smaller widths from the full width (else labels).
        calibration_steps: Most FLOPs-only architecture steps after training while outside the band.
        checkpoint_every: With a run_dir, save the state there every so many steps (0: only at the end).
        target_flops: The expected-FLOPs target; default the budget.
    """

    # Measured on vgg-small / Fashion-MNIST (expected widths, 20-step fine-tune proxy, seed 0): at 10% FLOPs
    # 100/200/400/800 steps gave 71.7/75.3/76.5/74.4% (27/59/121/218 s CPU); at 25%, 86.4/86.1/86.8% up to
    # 400. 400 is where it stops improving, ~2 minutes of one CPU core.
    steps: int = 400
    warmup_steps: int = 60
    arch_every: int = 1
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    arch_lr: float = 0.05
    flops_weight: float = 1.0
    band: float = 0.05
    max_subgroups: int = 10
    alpha_init: float = 2.0
    n_random: int = 1
    distill: bool = True
    calibration_steps: int = 500
    checkpoint_every: int = 100
    target_flops: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "steps >= 1": self.steps >= 1,
            "0 <= warmup_steps": self.warmup_steps >= 0,
            "arch_every >= 1": self.arch_every >= 1,
            "batch_size >= 1": self.batch_size >= 1,
            "lr > 0": self.lr > 0,
            "arch_lr > 0": self.arch_lr > 0,
            "flops_weight >= 0": self.flops_weight >= 0,
            "0 < band < 1": 0 < self.band < 1,
            "max_subgroups >= 1": self.max_subgroups >= 1,
            "n_random >= 0": self.n_random >= 0,
            "calibration_steps >= 0": self.calibration_steps >= 0,
            "checkpoint_every >= 0": self.checkpoint_every >= 0,
        }
        for rule, ok in checks.items():
            if not ok:
                name = rule.replace("0 <= ", "").replace("0 < ", "").split()[0]
                raise ValueError(f"`{rule}` must hold, but got {name}={getattr(self, name)!r}")


def flops_loss(expected: Tensor, target: float, band: float = 0.05) -> Tensor:
    """DMCP's piecewise log FLOPs loss on ``expected`` FLOPs for a ``target`` (see the module docstring)."""
    lower = (1.0 - band) * target
    value = float(expected.detach())
    if value > target:
        return torch.log((expected - lower) / target)
    if value < lower:
        return torch.log((target - expected) / target)
    return expected * 0.0


class _GroupChain:
    """The Markov chain of one channel group: ranked channels, sub-groups, and its ``alpha``."""

    def __init__(self, name: str, size: int, min_keep: int, choices: list[int], rank: Tensor,
                 max_subgroups: int, alpha_init: float) -> None:
        self.name = name
        self.size = size
        self.min_keep = min_keep
        steps = len(choices) - 1
        k = min(max_subgroups, steps)
        self.bounds = [choices[round(i * steps / k)] for i in range(k + 1)] if k else [size]
        self.sub_sizes = torch.tensor(np.diff(self.bounds), dtype=torch.float32)
        self.rank = rank  # rank[c] = position of channel c in importance order (0 = most important)
        # channel c -> 0 for the always-kept part, else its sub-group 1..K
        sub = torch.zeros(size, dtype=torch.long)
        for i in range(k):
            sub[(rank >= self.bounds[i]) & (rank < self.bounds[i + 1])] = i + 1
        self.channel_sub = sub
        self.alpha = torch.full((k,), float(alpha_init), requires_grad=True)

    def marginals(self) -> Tensor:
        return torch.cumprod(torch.sigmoid(self.alpha), dim=0)

    def expected_width(self) -> Tensor:
        if self.alpha.numel() == 0:
            return torch.tensor(float(self.size))
        return self.min_keep + (self.marginals() * self.sub_sizes).sum()

    def soft_mask(self) -> Tensor:
        return torch.cat([torch.ones(1), self.marginals()])[self.channel_sub]

    def hard_mask(self, width: int) -> Tensor:
        return (self.rank < width).float()

    def sample(self, rng: np.random.Generator) -> int:
        keep = torch.sigmoid(self.alpha).detach().numpy()
        width = self.bounds[0]
        for i, p in enumerate(keep):
            if rng.random() >= p:
                break
            width = self.bounds[i + 1]
        return int(width)


class DMCPSearcher(Searcher):
    """Differentiable Markov channel pruning; the result is projected onto the FLOPs budget.

    Args:
        context: As every `Searcher`: one Markov chain per decision of its space; its evaluator is an
            `automl_prune.scoring.evaluator.Evaluator` (its ``model``, ``train_images`` and, when present,
            ``train_labels`` and ``criterion`` are used; without labels the base model's predictions are); its
            ``seed`` seeds batches, random widths and sampling; its ``run_dir`` holds ``history.jsonl`` and
            periodic checkpoints (``dmcp/dmcp.pt``). This searcher decides widths only, so any search but
            ``"widths"`` is refused with a `ConfigError`.
        config: A `DMCPConfig`; keyword ``options`` override its fields (``steps=50``, ...).
        device: Default ``evaluator.device`` (else the run's: `automl_prune.train.device.current_device`).
    """

    name: ClassVar[str] = "dmcp"
    searches: ClassVar[tuple[str, ...]] = ("widths",)

    def __init__(
        self,
        context: SearchContext,
        *,
        config: DMCPConfig | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(context)
        space, evaluator = self.space, self.evaluator
        fields = {f.name for f in dataclasses.fields(DMCPConfig)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"unknown DMCP option(s) {unknown}; valid options are {sorted(fields)}")
        self.config = dataclasses.replace(config or DMCPConfig(), **options)
        missing = [a for a in ("model", "train_images") if not hasattr(evaluator, a)]
        if missing:
            raise TypeError(
                f"DMCP trains a supernet, so its evaluator needs {missing} (an `Evaluator` "
                f"has them); got {type(evaluator).__name__}"
            )
        self.target_flops = int(self.config.target_flops or self.budget.flops)
        if not space.min_flops <= self.target_flops <= space.full_flops:
            raise ValueError(
                f"`min_flops <= target_flops <= full_flops` must hold, but got target_flops={self.target_flops} "
                f"(min {space.min_flops}, full {space.full_flops})"
            )
        from automl_prune.train.device import current_device

        self.device = torch.device(device or getattr(evaluator, "device", None) or current_device())
        self.step = 0
        self.calibration_steps_used = 0
        self.expected_flops_after_training: float | None = None
        self._built = False

    # construction -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        if self._built:
            return
        cfg = self.config
        base: nn.Module = self.evaluator.model  # type: ignore[attr-defined]
        torch.manual_seed(self.seed)
        self.supernet = copy.deepcopy(base).to(self.device).train()
        ranks = self._channel_ranks(base)
        self.chains = [
            _GroupChain(d.name, d.size, d.min_keep, d.choices(), ranks[d.name], cfg.max_subgroups, cfg.alpha_init)
            for d in self.space.decisions
        ]
        self._chain_index = {c.name: i for i, c in enumerate(self.chains)}
        self._masks: dict[str, Tensor | None] = {c.name: None for c in self.chains}
        self._hooks = [
            self.supernet.get_submodule(layer).register_forward_hook(self._make_hook(group))
            for group, layer in self._masked_layers()
        ]
        images = self.evaluator.train_images  # type: ignore[attr-defined]
        labels = getattr(self.evaluator, "train_labels", None)
        # The training images stay where they are (on disk when streamed, in host memory otherwise): each step
        # moves just its batch to the device (`_batch`), so a GPU never holds the whole split.
        self._images = images
        if labels is None:  # no labels given: learn to match the trained base model's predictions
            with torch.no_grad():
                was = base.training
                base.eval()
                labels = torch.cat([base(self._images[i:i + 512].to(self.device)).argmax(1)
                                    for i in range(0, len(images), 512)])
                base.train(was)
        self._labels = labels.to(self.device)
        self.weight_optimizer = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                weight_decay=cfg.weight_decay)
        alphas = [c.alpha for c in self.chains if c.alpha.numel()]
        self.arch_optimizer = torch.optim.Adam(alphas, lr=cfg.arch_lr, betas=(0.5, 0.999)) if alphas else None
        self._built = True

    def _channel_ranks(self, base: nn.Module) -> dict[str, Tensor]:
        """Importance rank of every channel of every group, by the evaluator's criterion: `channel_order`, the
        ranking `compress` uses (every group scored on the unpruned base), so both keep the same channels."""
        model = copy.deepcopy(base).cpu().eval()
        orders = channel_order(model, self.space.graph, getattr(self.evaluator, "criterion", "l1"),
                               [d.name for d in self.space.decisions],
                               calibration=getattr(self.evaluator, "calibration", None))
        ranks = {}
        for d in self.space.decisions:
            rank = torch.empty(d.size, dtype=torch.long)
            rank[torch.tensor(orders[d.name])] = torch.arange(d.size)
            ranks[d.name] = rank
        return ranks

    def _masked_layers(self) -> list[tuple[str, str]]:
        """(group, layer) pairs whose outputs carry the group's mask: BNs, and convs/linears with no BN after."""
        graph = self.space.graph
        pairs = []
        for d in self.space.decisions:
            group = graph.group(d.name)
            outs = [m for m in group.members if m.dim == "out" and m.count == group.size
                    and graph.layers[m.layer].out_channels == group.size]
            norm_orders = {graph.layers[m.layer].order for m in outs if graph.layers[m.layer].kind == "channelwise"}
            for m in outs:
                layer = graph.layers[m.layer]
                if layer.kind == "channelwise" or layer.order + 1 not in norm_orders:
                    pairs.append((d.name, m.layer))
        return pairs

    def _make_hook(self, group: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            mask = self._masks[group]
            if mask is None:
                return None
            shape = (1, -1) + (1,) * (output.dim() - 2)
            return output * mask.to(output.device, output.dtype).view(shape)

        return hook

    # masks and costs ----------------------------------------------------------------------------------------
    def _set_hard(self, widths: dict[str, int] | None) -> None:
        for chain in self.chains:
            width = chain.size if widths is None else widths[chain.name]
            self._masks[chain.name] = None if width >= chain.size else chain.hard_mask(width)

    def _set_soft(self) -> None:
        for chain in self.chains:
            self._masks[chain.name] = chain.soft_mask() if chain.alpha.numel() else None

    def expected_widths(self) -> dict[str, float]:
        """Expected channels per group under the learned chains."""
        self._build()
        with torch.no_grad():
            return {c.name: float(c.expected_width()) for c in self.chains}

    def _expected_flops(self) -> Tensor:
        cost = self.space.cost_model
        kept = []
        for name, size in zip(cost.group_names, cost.group_sizes, strict=True):
            i = self._chain_index.get(name)
            kept.append(self.chains[i].expected_width() if i is not None else torch.tensor(float(size)))
        return cost.differentiable_flops(torch.stack([k.to(torch.float64) for k in kept]))

    def expected_flops(self) -> float:
        """FLOPs of the expected widths (DMCP's estimate of the expected FLOPs)."""
        self._build()
        with torch.no_grad():
            return float(self._expected_flops())

    def expected_architecture(self) -> Architecture:
        """The expected widths rounded to the nearest valid widths (before projection)."""
        widths = self.expected_widths()
        return Architecture({d.name: d.round(widths[d.name]) for d in self.space.decisions})

    def _flops_loss(self) -> tuple[Tensor, Tensor]:
        expected = self._expected_flops()
        return self.config.flops_weight * flops_loss(expected, float(self.target_flops), self.config.band), expected

    # training -----------------------------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(len(self._labels), (self.config.batch_size,), generator=generator)
        return (self._images[idx].to(self.device, non_blocking=True),
                self._labels[idx.to(self._labels.device)])

    def _random_widths(self, rng: np.random.Generator, markov: bool) -> dict[str, int]:
        if markov:
            return {c.name: c.sample(rng) for c in self.chains}
        return {d.name: int(rng.choice(d.choices())) for d in self.space.decisions}

    def _lr(self, step: int) -> float:
        return 0.5 * self.config.lr * (1 + math.cos(math.pi * step / self.config.steps))

    def _train_step(self) -> None:
        cfg = self.config
        step = self.step
        x, y = self._batch(step)
        rng = np.random.default_rng([self.seed, step])
        arch_phase = step >= cfg.warmup_steps and self.arch_optimizer is not None
        self.supernet.train()
        for group in self.weight_optimizer.param_groups:
            group["lr"] = self._lr(step)
        # Sandwich rule: full width on the labels, minimum and random widths distilled from it.
        self.weight_optimizer.zero_grad(set_to_none=True)
        self._set_hard(None)
        logits = self.supernet(x)
        F.cross_entropy(logits, y).backward()
        teacher = logits.detach().softmax(1)
        others = [self.space.smallest().widths] + [self._random_widths(rng, arch_phase) for _ in range(cfg.n_random)]
        for widths in others:
            self._set_hard(widths)
            out = self.supernet(x)
            if cfg.distill:
                loss = F.kl_div(out.log_softmax(1), teacher, reduction="batchmean")
            else:
                loss = F.cross_entropy(out, y)
            loss.backward()
        self.weight_optimizer.step()
        if arch_phase and (step - cfg.warmup_steps) % cfg.arch_every == 0:
            self._arch_step(x, y)
        self._set_hard(None)
        self.step += 1

    def _arch_step(self, x: Tensor | None, y: Tensor | None) -> None:
        """One Adam step of the architecture parameters (task + FLOPs loss, or the FLOPs loss alone)."""
        assert self.arch_optimizer is not None  # internal invariant: only called when chains have parameters
        self.arch_optimizer.zero_grad(set_to_none=True)
        loss, _ = self._flops_loss()
        if x is not None and y is not None:
            self._set_soft()
            for p in self.supernet.parameters():
                p.requires_grad_(False)
            try:
                loss = loss + F.cross_entropy(self.supernet(x), y)
            finally:
                for p in self.supernet.parameters():
                    p.requires_grad_(True)
        loss.backward()
        self.arch_optimizer.step()

    def _in_band(self) -> bool:
        expected = self.expected_flops()
        return (1 - self.config.band) * self.target_flops <= expected <= self.target_flops

    def _calibrate(self) -> None:
        """FLOPs-only architecture steps while the expected FLOPs are outside the band."""
        if self.arch_optimizer is None:
            return
        while self.calibration_steps_used < self.config.calibration_steps and not self._in_band():
            self._arch_step(None, None)
            self.calibration_steps_used += 1

    def train(self) -> None:
        """Run (or finish) the training schedule and the calibration; idempotent once done."""
        self._build()
        cfg = self.config
        checkpoint = self.run_dir / "dmcp" if self.run_dir is not None else None
        if self.step == 0 and checkpoint is not None and (checkpoint / _STATE_FILE).exists():
            self.restore(checkpoint)
        while self.step < cfg.steps:
            self._train_step()
            if checkpoint is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save(checkpoint)
        if self.expected_flops_after_training is None:
            self.expected_flops_after_training = self.expected_flops()
            self._calibrate()
            if checkpoint is not None:
                self.save(checkpoint)

    # the search ---------------------------------------------------------------------------------------------
    def _onto_budget(self, widths: dict[str, float]) -> Architecture:
        """Valid widths nearest to ``widths`` moved onto the budget: scaled down together when over it,
        widened where they fall furthest below ``widths`` when under it (both end within the budget)."""
        arch = Architecture({d.name: d.round(widths[d.name]) for d in self.space.decisions})
        if self.space.flops(arch) > self.budget.flops:
            return project_to_budget(self.space, arch, self.budget.flops, fill=True)
        return Architecture(fill_budget(self.space, arch.widths, self.budget.flops, target=widths))

    def final_architecture(self) -> Architecture:
        """The expected-width architecture projected onto the budget (see `_onto_budget`)."""
        return self._onto_budget(self.expected_widths())

    def flops_step(self) -> float:
        """One architecture step on the FLOPs loss alone; returns the expected FLOPs after it."""
        self._build()
        if self.arch_optimizer is not None:
            self._arch_step(None, None)
        return self.expected_flops()

    def _run(self) -> None:
        self.train()
        done = {e.architecture.key() for e in self.history.entries}
        final = self.final_architecture()
        if self.remaining and final.key() not in done:
            self._evaluate(final)
            done.add(final.key())
        while self.remaining:
            # Sampled in batches of the evaluator's workers; each draw's generator depends on its index only,
            # so the samples are the same whatever the batch size.
            batch = []
            for index in range(len(self.history), len(self.history) + min(self.remaining, self.batch_size)):
                rng = np.random.default_rng([self.seed, 7919, index])
                for _ in range(20):  # prefer an architecture not evaluated yet
                    arch = self._onto_budget({c.name: float(c.sample(rng)) for c in self.chains})
                    if arch.key() not in done:
                        break
                batch.append(arch)
                done.add(arch.key())
            self._evaluate_many(batch)

    def result(self) -> SearchResult:
        """The best evaluated architecture, with DMCP's expected widths and FLOPs in ``extra``."""
        result = super().result()
        expected = self.expected_flops()
        result.extra.update({
            "target_flops": self.target_flops,
            "expected_flops": expected,
            "expected_flops_gap": (expected - self.target_flops) / self.target_flops,
            "expected_flops_after_training": self.expected_flops_after_training,
            "calibration_steps": self.calibration_steps_used,
            "expected_widths": self.expected_widths(),
            "final_architecture": self.final_architecture().to_dict(),
            "steps": self.step,
        })
        return result

    # save / restore -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything learned: alphas, supernet weights, optimizers, step counter (plain tensors and numbers)."""
        self._build()
        return {
            "alphas": {c.name: c.alpha.detach().clone() for c in self.chains},
            "supernet": self.supernet.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict() if self.arch_optimizer is not None else {},
            "step": self.step,
            "calibration_steps": self.calibration_steps_used,
            "expected_flops_after_training": self.expected_flops_after_training,
            "decisions": self.space.names,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`."""
        self._build()
        if list(state["decisions"]) != self.space.names:
            raise ValueError(
                f"saved DMCP state is for groups {list(state['decisions'])[:5]}, "
                f"not this space's {self.space.names[:5]}"
            )
        with torch.no_grad():
            for chain in self.chains:
                chain.alpha.copy_(state["alphas"][chain.name])
        self.supernet.load_state_dict(state["supernet"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        if self.arch_optimizer is not None and state["arch_optimizer"]:
            self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.step = int(state["step"])
        self.calibration_steps_used = int(state["calibration_steps"])
        after = state["expected_flops_after_training"]
        self.expected_flops_after_training = None if after is None else float(after)

    def save(self, path: str | Path) -> None:
        """Write `state_dict` to ``path/dmcp.pt`` atomically (and the history, when it is only in memory)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        atomic_write(path / _STATE_FILE, lambda handle: torch.save(state, handle))
        if self.history.path is None:
            atomic_write_text(path / "history.jsonl",
                              "".join(json.dumps(e.to_dict()) + "\n" for e in self.history.entries))

    def restore(self, path: str | Path) -> None:
        """Load ``path/dmcp.pt`` (with ``weights_only=True``), and a saved in-memory history into an empty one."""
        file = Path(path) / _STATE_FILE
        if not file.exists():
            raise FileNotFoundError(f"no saved DMCP state under {path} (expected {file.name})")
        self.load_state_dict(torch.load(file, map_location=self.device, weights_only=True))
        saved = Path(path) / "history.jsonl"
        if self.history.path is None and len(self.history) == 0 and saved.exists():
            self.history.entries.extend(SearchHistory(saved).entries)
