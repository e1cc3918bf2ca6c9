"""Data-driven channel criteria from the seed papers: L1+std, Taylor (Gate Decorator), EZCrop, channel similarity.

All of them observe a channel where removing it takes effect: at the input of every mixing layer that reads
it (`automl_prune.prune.calibration.consumer_sites`), over calibration batches from the training split. In a
residual group a channel is read at several places (after each add); a depthwise group is read by its
projection conv. Statistics of each place are normalised by their mean over channels and averaged, so every
place counts equally. Before any criterion-specific ordering, channels whose feature map is zero at every
place are removed first, then exact duplicates of a kept channel (`ActivationCriterion.__call__`).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automl_prune.errors import ConfigError
from automl_prune.prune.calibration import (
    Calibration,
    Site,
    consumer_sites,
    mixing_layers,
    producer_filters,
    run_calibration,
)
from automl_prune.prune.criteria import Criterion

__all__ = ["ActivationCriterion", "ChannelSimilarity", "EZCrop", "L1Std", "Taylor"]

_MAX_GRAM_CHANNELS = 8192  # a linear layer reading more inputs than this keeps no channel Gram matrix
_ZERO_TOL = 1e-12  # relative to the site's mean channel energy
_DUPLICATE_TOL = 1e-6  # squared distance relative to the two channels' energies


def _root_name(group: tp.Group) -> str:
    """The name of the layer a group was built from (its first item's), for messages."""
    target = group[0].dep.target
    return str(getattr(target, "name", target)).split(" ")[0]


def group_size(group: tp.Group) -> int:
    """Channels of the group's root layer."""
    return len(group[0].idxs)


def to_root(values: Tensor, site: Site, size: int) -> Tensor:
    """Per-input-channel ``values`` of a site (first dim), reindexed by the group's root channels."""
    return scatter_root(values[site.layer_idxs], site.root_idxs, size)


def scatter_root(values: Tensor, root_idxs: Tensor, size: int) -> Tensor:
    """``values[k]`` (first dim) placed at root channel ``root_idxs[k]``."""
    out = torch.zeros((size, *values.shape[1:]), dtype=values.dtype)
    out[root_idxs] = values
    return out


def gram_to_root(gram: Tensor, site: Site, size: int) -> Tensor:
    """A site's channel Gram matrix reindexed by the group's root channels."""
    out = torch.zeros((size, size), dtype=gram.dtype)
    out[site.root_idxs.unsqueeze(1), site.root_idxs.unsqueeze(0)] = gram[site.layer_idxs][:, site.layer_idxs]
    return out


def mean_normalized(vectors: list[Tensor]) -> Tensor:
    """Average of per-site vectors, each divided by its mean (a zero vector stays zero)."""
    scaled = [v / v.mean() if float(v.mean()) > 0 else v for v in vectors]
    return torch.stack(scaled).mean(0)


def channels_last_flat(x: Tensor) -> Tensor:
    """``(C, N * positions)`` view of a layer input (NCHW or NC)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


class ActivationCriterion(Criterion):
    """Base of the criteria that look at what each mixing consumer reads, over calibration batches.

    `prepare` runs the calibration batches once through the model with hooks on every mixing layer and keeps
    per-layer statistics: always each layer's input-channel Gram matrix (for the zero/duplicate rule and
    similarity), plus what `observe` adds. Subclasses implement `score`.
    """

    requires_data: ClassVar[bool] = True
    needs_grads: ClassVar[bool] = False
    reads_flatten: ClassVar[bool] = False  # whether `sites` includes a linear layer behind a flatten (`Site.block`)
    name: ClassVar[str] = "data-driven"

    def __init__(self) -> None:
        self._stats: dict[nn.Module, dict[str, Any]] | None = None
        self._batch = 0
        self.fallback_groups: list[str] = []

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:
        """Record the statistics of ``model``'s mixing layers over ``calibration``."""
        if calibration is None:
            raise ConfigError(
                f"criterion {self.name!r} is data-driven and needs calibration batches from the training split "
                "(calibration=Calibration(images, labels)); choose a weight criterion such as 'l1' otherwise"
            )
        if self.needs_grads and calibration.labels is None:
            raise ConfigError(f"criterion {self.name!r} differentiates a loss, so its calibration batches need labels")
        self._stats = {}
        self._batch = 0

        def next_batch() -> None:
            self._batch += 1

        run_calibration(
            model, calibration, mixing_layers(model), self._observe_all, grads=self.needs_grads, batch_done=next_batch
        )

    def _observe_all(self, module: nn.Module, x: Tensor, gate_grad: Tensor | None) -> None:
        assert self._stats is not None
        stats = self._stats.setdefault(module, {"samples": 0, "batch": self._batch})
        stats["batch"] = self._batch
        stats["samples"] += x.shape[0]
        if x.shape[1] <= _MAX_GRAM_CHANNELS:
            flat = channels_last_flat(x).double()
            gram = (flat @ flat.T).cpu()
            stats["gram"] = gram if "gram" not in stats else stats["gram"] + gram
        self.observe(stats, module, x, gate_grad)

    def observe(self, stats: dict[str, Any], module: nn.Module, x: Tensor, gate_grad: Tensor | None) -> None:
        """Add one batch's input ``x`` of ``module`` (and its gate gradient) to ``stats`` (default: nothing)."""

    @property
    def _observed(self) -> dict[nn.Module, dict[str, Any]]:
        """The per-layer statistics recorded by `prepare`.

        Raises:
            ConfigError: `prepare` has not run.
        """
        if self._stats is None:
            raise ConfigError(
                f"criterion {self.name!r} is data-driven and was not prepared with calibration batches "
                "(pass calibration=... to compress/channel_order)"
            )
        return self._stats

    def sites(self, group: tp.Group) -> list[Site]:
        """The group's consumer sites that were observed in `prepare`."""
        observed = self._observed
        sites = consumer_sites(group, group_size(group), flattened=self.reads_flatten)
        seen = [s for s in sites if s.module in observed]
        if sites and not seen:
            raise ConfigError(f"criterion {self.name!r} was prepared on another model than the one being pruned")
        return seen

    def fallback(self, group: tp.Group) -> Tensor:
        """Scores of a group with no consumer this criterion can measure (it is read only through a flatten into
        a linear layer, or by layers too wide to observe): the L1 magnitude of its weights over every coupled
        layer (criterion ``l1``), so that such a group is still pruned, by the data-free rule. The group's
        producing layer is named in `fallback_groups`."""
        self.fallback_groups.append(_root_name(group))
        return tp.importance.GroupMagnitudeImportance(p=1)(group).double().cpu()

    def fallback_ranking(self, group: tp.Group) -> list[int]:
        """The group's channels by `fallback` score, most important first."""
        return torch.argsort(self.fallback(group), descending=True, stable=True).tolist()

    @abc.abstractmethod
    def score(self, group: tp.Group, sites: list[Site], size: int) -> Tensor:
        """Criterion-specific importance of each root channel (float64, higher = keep)."""

    def __call__(self, group: tp.Group) -> Tensor | None:
        """`score`, with zero channels placed last and exact duplicates just above them."""
        size = group_size(group)
        sites = self.sites(group)
        if not sites:
            return self.fallback(group)
        raw = self.score(group, sites, size).double()
        return demote(raw, self.redundant(sites, size, raw))

    def redundant(self, sites: list[Site], size: int, raw: Tensor) -> tuple[list[int], list[int]]:
        """Channels zero at every site, and exact duplicates (at every site) of a higher-scored channel.

        Both lists are in the order they should go: the lowest ``raw`` score first.
        """
        observed = self._observed
        # A flatten's linear layer (block > 1) keeps a Gram matrix of its inputs, not of the group's channels.
        grams = [gram_to_root(observed[s.module]["gram"], s, size) for s in sites
                 if s.block == 1 and "gram" in observed[s.module]]
        if not grams:
            return [], []
        diag = torch.stack([g.diagonal() for g in grams])  # (sites, size)
        scale = diag.mean(1, keepdim=True).clamp_min(1e-300)
        zero = (diag <= _ZERO_TOL * scale).all(0)
        same = torch.ones(size, size, dtype=torch.bool)
        for g, d in zip(grams, diag, strict=True):
            dist = d[:, None] + d[None, :] - 2 * g
            same &= dist <= _DUPLICATE_TOL * (d[:, None] + d[None, :])
        by_score = torch.argsort(raw, descending=True, stable=True).tolist()
        zeros = [c for c in reversed(by_score) if zero[c]]
        is_representative = torch.zeros(size, dtype=torch.bool)
        duplicates: list[int] = []
        for c in by_score:
            if zero[c]:
                continue
            if bool((same[c] & is_representative).any()):
                duplicates.append(c)
            else:
                is_representative[c] = True
        return zeros, duplicates[::-1]

    def forced_removals(self, group: tp.Group, raw: Tensor) -> list[int]:
        """Zero channels then duplicates, in the order they should be removed (for `select` overrides)."""
        zeros, duplicates = self.redundant(self.sites(group), group_size(group), raw)
        return zeros + duplicates


def demote(raw: Tensor, redundant: tuple[list[int], list[int]]) -> Tensor:
    """Scores in ``[2, 3]`` for ordinary channels, ``[1, 2)`` for duplicates and ``[0, 1)`` for zero channels."""
    low, high = raw.min(), raw.max()
    unit = (raw - low) / (high - low) if float(high - low) > 0 else torch.zeros_like(raw)
    scores = 2.0 + unit
    zeros, duplicates = redundant
    for rank, c in enumerate(duplicates):
        scores[c] = 1.0 + rank / max(len(duplicates), 1) * 0.5
    for rank, c in enumerate(zeros):
        scores[c] = rank / max(len(zeros), 1) * 0.5
    return scores


class L1Std(ActivationCriterion):
    """L1 norm of each filter times the standard deviation of its feature map (seed 001).

    "Pruning filters with L1-norm and standard deviation for CNN compression": a filter is worth keeping when
    its weights are large *and* its output carries information, measured by the spread of its feature map.
    Here: L1 = mean over the group's producing convs/linears of each filter's L1 norm (each layer normalised
    by its mean); std = per image, the standard deviation over positions of the feature map as the next
    layers read it (after batch norm and activation), averaged over calibration images and over the places
    the channel is read (for a linear consumer with no positions: the std over images). Score = L1 x std.
    Simplified: the paper's multilayer pruning schedule is not part of a criterion (the search sets widths).
    """

    name = "l1-std"

    def observe(self, stats: dict[str, Any], module: nn.Module, x: Tensor, gate_grad: Tensor | None) -> None:
        """Accumulate per-channel spatial std (conv inputs) or sums of values and squares (linear inputs)."""
        x = x.double()
        if x.ndim > 2:
            std = x.flatten(2).std(dim=2, unbiased=False).sum(0)
            stats["std_sum"] = stats.get("std_sum", 0) + std.cpu()
        else:
            stats["sum"] = stats.get("sum", 0) + x.sum(0).cpu()
            stats["sumsq"] = stats.get("sumsq", 0) + (x * x).sum(0).cpu()

    def _std(self, stats: dict[str, Any]) -> Tensor:
        n = stats["samples"]
        if "std_sum" in stats:
            return stats["std_sum"] / n
        mean = stats["sum"] / n
        return (stats["sumsq"] / n - mean * mean).clamp_min(0).sqrt()

    def score(self, group: tp.Group, sites: list[Site], size: int) -> Tensor:
        """L1 x std per root channel."""
        std = mean_normalized([to_root(self._std(self._observed[s.module]), s, size) for s in sites])
        filters = producer_filters(group, size)
        if not filters:
            return std
        l1 = mean_normalized([scatter_root(w.abs().sum(1).double().cpu(), roots, size) for w, roots in filters])
        return l1 * std


class Taylor(ActivationCriterion):
    """First-order Taylor estimate of the loss change when a channel's gate is removed (Gate Decorator, seed 002).

    Zhong et al., "Gate Decorator: Global Filter Pruning Method for Accelerating Deep CNNs" (NeurIPS 2019):
    multiply each channel by a gate phi (=1) and score it by ``|dL/dphi * phi|``, the first-order change of
    the loss when phi goes to 0, accumulated over batches. Here the gate sits at the input of every mixing
    layer that reads the channel (one shared gate per channel, so a residual channel's gradient is summed over
    all the places it is read); the score is the sum over calibration batches of the absolute batch-mean
    gradient, with a cross-entropy loss on the calibration labels. Simplified: Gate Decorator gates the
    batch-norm scale and trains with a sparsity penalty and tick-tock fine-tuning; the gradient of a gate on
    the channel as read downstream equals removing it exactly, and no training happens here.
    """

    needs_grads = True
    name = "taylor"

    def observe(self, stats: dict[str, Any], module: nn.Module, x: Tensor, gate_grad: Tensor | None) -> None:
        """Keep each batch's gate gradient summed over its images (a module called twice adds both calls)."""
        assert gate_grad is not None
        grads = stats.setdefault("batch_grads", {})
        grads[stats["batch"]] = grads.get(stats["batch"], 0) + gate_grad.double().sum(0).cpu()
        stats.setdefault("batch_sizes", {})[stats["batch"]] = x.shape[0]

    def score(self, group: tp.Group, sites: list[Site], size: int) -> Tensor:
        """Sum over batches of ``|sum over sites of the batch-mean gate gradient|``."""
        observed = self._observed
        batch_sizes = observed[sites[0].module]["batch_sizes"]
        total = torch.zeros(size, dtype=torch.float64)
        for b, n in batch_sizes.items():
            # A 0-d zero start (`sum`'s default is the int 0): the sum is a tensor of the terms' dtype and shape.
            grad = sum((to_root(observed[s.module]["batch_grads"][b], s, size) for s in sites), torch.zeros(()))
            total += grad.abs() / n
        return total


class EZCrop(ActivationCriterion):
    """Energy of the low-frequency zone of each channel's feature map in the 2-D Fourier domain (seed 002).

    Lin et al., "EZCrop: Energy-Zoned Channels for Robust Output Pruning" (WACV 2022) explain HRank's
    constant feature-map rank by where a map's spectral energy lies and score channels with an FFT instead of
    a rank. Here: per image and channel, ``|FFT2(map)|^2 / (H W)`` summed over the zone of frequencies with
    ``|f_h|, |f_w| <= zone`` cycles per pixel (default 0.25: the central half of the shifted spectrum in each
    direction, DC included), averaged over images and over the places the channel is read. Simplified: the
    score is the zone's energy (not its ratio to the whole spectrum), and the paper's repetitive pruning
    schedule is left to the search.
    """

    name = "ezcrop"

    def __init__(self, zone: float = 0.25) -> None:
        super().__init__()
        if not 0.0 <= zone <= 0.5:
            raise ConfigError(f"`0 <= zone <= 0.5` must hold, but got {zone=}")
        self.zone = zone

    def observe(self, stats: dict[str, Any], module: nn.Module, x: Tensor, gate_grad: Tensor | None) -> None:
        """Accumulate each channel's low-frequency energy."""
        x = x.double()
        if x.ndim == 2:
            energy = (x * x).sum(0)
        else:
            h, w = x.shape[-2:]
            spectrum = torch.fft.fft2(x).abs().square() / (h * w)
            mask = (torch.fft.fftfreq(h).abs() <= self.zone)[:, None] & (torch.fft.fftfreq(w).abs() <= self.zone)[None]
            energy = (spectrum * mask.to(spectrum.device)).flatten(2).sum(2).sum(0)
        stats["energy"] = stats.get("energy", 0) + energy.cpu()

    def score(self, group: tp.Group, sites: list[Site], size: int) -> Tensor:
        """Mean low-frequency energy per root channel."""
        observed = self._observed
        return mean_normalized([to_root(observed[s.module]["energy"] / observed[s.module]["samples"], s, size)
                                for s in sites])


class ChannelSimilarity(ActivationCriterion):
    """Cluster channels whose feature maps are alike and keep one per cluster ("Exploiting Channel Similarity").

    Zhao et al. (2019, seed 002) argue that channels carrying similar information overlap functionally, and
    prune all but one channel of each cluster of a hierarchical clustering. Here the dissimilarity of channels
    ``j, k`` is what folding the weaker into the stronger loses, from the calibration Gram matrix at each
    place the channel is read: ``min(|x_j|^2, |x_k|^2) * (1 - cos^2(x_j, x_k))``, each place normalised by
    its mean energy and summed. Average-linkage agglomerative clustering (scipy) merges channels; at each merge
    the lower-energy representative is removed, so the clusters are nested and give one ranking for every
    width. `fold` then adds each removed channel's next-layer weights, scaled by the least-squares factor
    ``<x_j, x_r> / |x_r|^2``, into its most similar kept channel (exact for duplicates and rescaled copies).
    Simplified: the paper's probabilistic similarity metric is replaced by this reconstruction-based one.
    """

    name = "similarity"

    def _grams(self, sites: list[Site], size: int) -> list[Tensor]:
        observed = self._observed
        # A flatten's linear layer (block > 1) keeps a Gram matrix of its inputs, not of the group's channels.
        grams = [gram_to_root(observed[s.module]["gram"], s, size) for s in sites
                 if s.block == 1 and "gram" in observed[s.module]]
        if not grams:
            raise ConfigError(f"criterion {self.name!r} cannot compare channels read by layers of > 8192 inputs")
        return grams

    def distances(self, sites: list[Site], size: int) -> tuple[Tensor, Tensor]:
        """(dissimilarity matrix, energy per channel), both summed over sites after normalisation."""
        dist = torch.zeros(size, size, dtype=torch.float64)
        energy = torch.zeros(size, dtype=torch.float64)
        for gram in self._grams(sites, size):
            d = gram.diagonal()
            scale = float(d.mean()) or 1.0
            cos2 = gram.square() / (d[:, None] * d[None, :]).clamp_min(1e-300)
            dist += torch.minimum(d[:, None], d[None, :]) * (1 - cos2).clamp_min(0) / scale
            energy += d / scale
        dist.fill_diagonal_(0)
        return (dist + dist.T) / 2, energy

    def score(self, group: tp.Group, sites: list[Site], size: int) -> Tensor:
        """Removal order of the nested clustering: channels merged away earlier score lower."""
        from scipy.cluster.hierarchy import linkage
        from scipy.spatial.distance import squareform

        dist, energy = self.distances(sites, size)
        scores = torch.full((size,), float(size), dtype=torch.float64)
        if size < 2:
            return scores
        merges = linkage(squareform(dist.numpy(), checks=False), method="average")
        representative = list(range(size))
        for step, (a, b, _, _) in enumerate(merges):
            ra, rb = representative[int(a)], representative[int(b)]
            keep, drop = (ra, rb) if (energy[ra], -ra) >= (energy[rb], -rb) else (rb, ra)
            scores[drop] = step
            representative.append(keep)
        return scores

    @torch.no_grad()
    def fold(self, group: tp.Group, kept: list[int]) -> None:
        """Add each removed channel's consumer weights into its most similar kept channel."""
        size = group_size(group)
        sites = self.sites(group)
        if not sites or len(kept) == size or not kept:
            return
        dist, _ = self.distances(sites, size)
        kept_t = torch.as_tensor(kept)
        removed = [c for c in range(size) if c not in set(kept)]
        nearest = kept_t[dist[removed][:, kept_t].argmin(1)].tolist()
        for site in sites:
            if "gram" not in self._observed[site.module]:
                continue
            gram = gram_to_root(self._observed[site.module]["gram"], site, size)
            layer_of = dict(zip(site.root_idxs.tolist(), site.layer_idxs.tolist(), strict=True))
            weight = site.module.weight
            for j, r in zip(removed, nearest, strict=True):
                if gram[r, r] <= 0:
                    continue
                factor = float(gram[j, r] / gram[r, r])
                weight[:, layer_of[r]] += factor * weight[:, layer_of[j]]
