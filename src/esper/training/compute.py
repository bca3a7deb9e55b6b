"""Compute accounting: what an episode spends, in FLOPs, counted once per architecture.

A model's cost per scored item changes only when a lifecycle event changes what runs in
the forward pass (a seed germinates, starts blending, is fossilized or culled). The meter
counts a small probe batch once per distinct architecture (`train_flops`, `eval_flops`:
torch's ``FlopCounterMode`` on one step of the batch loop's forward and loss) and the
episode multiplies by the items each pass scored, so accounting costs a few
milliseconds per lifecycle event and nothing per batch.

Training FLOPs are the forward and backward of every training step; evaluation FLOPs are
the validation pass, counterfactual branches included.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from esper.contracts import SeedCost, TaskType
from esper.model.blueprints import GrowthKind, blueprint_names, get_blueprint
from esper.model.morphogenetic import MorphogeneticModel
from esper.model.width import WidthPoint, WidthSeed, point_units
from esper.training.loop import Batch, compute_task_loss_with_metrics

__all__ = ["ComputeMeter", "clear_cache", "eval_flops", "module_flops", "train_flops"]

PROBE_ITEMS = 4
"""Samples (sequences) in the probe batch; FLOPs per item do not depend on it."""


def _architecture(
    model: MorphogeneticModel,
) -> tuple[str, tuple[tuple[str, str, str | None, bool], ...]]:
    """What decides the cost of a forward pass: the host as it is now (a merged width
    seed leaves no module behind, only a wider host, whose slots read like an unmerged
    one's), and each slot's seed and how it runs."""
    slots = tuple(
        (s.slot_id, s.forward_mode, s.state.blueprint_id, s.gate is not None) for s in model.slots()
    )
    return repr(model.host), slots


_COUNTS: dict[tuple[object, ...], float] = {}
"""Per process: FLOPs per item by (host structure, probe shape, architecture, pass), so
the episodes of a compare or of PPO training count each architecture once."""


def clear_cache() -> None:
    """Forget every count made in this process (tests measure the counting itself)."""
    _COUNTS.clear()
    _BLUEPRINT_COSTS.clear()


class ComputeMeter:
    """Per-item FLOPs of training and evaluation for the architectures a model goes through.

    ``probe`` is any batch of the task (its first `PROBE_ITEMS` samples are used).
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        probe: Batch,
        criterion: nn.Module,
        task_type: TaskType,
    ) -> None:
        started = time.perf_counter()
        inputs, targets = probe
        self.probe: Batch = (inputs[:PROBE_ITEMS], targets[:PROBE_ITEMS])
        self.criterion = criterion
        self.task_type = task_type
        # The host's structure (its modules and their sizes) and the probe's shape decide
        # every count, whatever the weights.
        self._host_key = (repr(model.host), tuple(inputs.shape[1:]), task_type.value)
        self.seconds = 0.0
        """Wall time spent counting so far (the cost of accounting itself)."""
        # Building blueprints to count them draws initial weights from torch's global
        # generator; the fork keeps the run's random stream exactly as without counting.
        with torch.random.fork_rng(devices=[]):
            self.host_train = self._count(
                ("host", "train"), lambda: train_flops(model.host, self.probe, criterion, task_type)
            )
            """Training FLOPs per item of the host without any seed."""
            self.host_eval = self._count(
                ("host", "eval"), lambda: eval_flops(model.host, self.probe, criterion, task_type)
            )
            """Evaluation FLOPs per item of the host without any seed."""
            self.seed_costs: Mapping[str, Mapping[str, SeedCost]] = _seed_costs(
                model, self.probe[0]
            )
            """Per slot, per blueprint of the host's topology: what a seed there costs."""
        self.seconds = time.perf_counter() - started

    def _count(self, key: tuple[object, ...], count: Callable[[], float]) -> float:
        full = (*self._host_key, *key)
        if full not in _COUNTS:
            started = time.perf_counter()
            _COUNTS[full] = count()
            self.seconds += time.perf_counter() - started
        return _COUNTS[full]

    def train_per_item(self, model: MorphogeneticModel) -> float:
        """Training FLOPs per item of ``model`` as it is now."""
        return self._count(
            ("train", _architecture(model)),
            lambda: train_flops(model, self.probe, self.criterion, self.task_type),
        )

    def eval_per_item(self, model: MorphogeneticModel, counterfactual: Sequence[str]) -> float:
        """Evaluation FLOPs per item of ``model``, removing each of ``counterfactual``."""
        return self._count(
            ("eval", _architecture(model), tuple(counterfactual)),
            lambda: eval_flops(model, self.probe, self.criterion, self.task_type, counterfactual),
        )


@torch.no_grad()
def _slot_features(model: MorphogeneticModel, inputs: Tensor) -> dict[str, Tensor]:
    """One sample's features arriving at each slot, and at the layer a width seed there
    would widen (keys ``"<slot>:width"``); shapes ``[1, ...]``."""
    seen: dict[str, Tensor] = {}

    def keep(key: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            seen.setdefault(key, args[0][:1].clone())

        return hook

    hooks = [slot.register_forward_pre_hook(keep(slot.slot_id)) for slot in model.slots()]
    for slot in model.slots():
        point = slot.width_point
        if point is not None:
            producer = model.host.get_submodule(point.producer)
            hooks.append(producer.register_forward_pre_hook(keep(f"{slot.slot_id}:width")))
    was_training = model.training
    try:
        model.eval()
        model(inputs[:1])
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return seen


_BLUEPRINT_COSTS: dict[tuple[object, ...], SeedCost] = {}
"""Per process: a blueprint's cost depends only on its topology, name, the layers it
fits and the features' shape, so every episode after the first reuses it."""


def _seed_costs(model: MorphogeneticModel, inputs: Tensor) -> Mapping[str, Mapping[str, SeedCost]]:
    features = _slot_features(model, inputs)
    costs: dict[str, dict[str, SeedCost]] = {}
    for slot in model.slots():
        costs[slot.slot_id] = _depth_costs(model, slot.slot_id, features[slot.slot_id])
        if slot.width_point is not None:
            width = _width_costs(model, slot.width_point, features[f"{slot.slot_id}:width"])
            costs[slot.slot_id].update(width)
    return costs


def _depth_costs(model: MorphogeneticModel, slot_id: str, feature: Tensor) -> dict[str, SeedCost]:
    topology, channels = model.host.topology, model.slot(slot_id).channels
    feature = feature.to("cpu", torch.float32)
    costs = {}
    for name in blueprint_names(topology, GrowthKind.DEPTH):
        key = (topology.value, name, channels, tuple(feature.shape))
        if key not in _BLUEPRINT_COSTS:
            spec = get_blueprint(topology, name)
            train, forward = module_flops(spec.build(channels), feature)
            _BLUEPRINT_COSTS[key] = SeedCost(spec.params(channels), train, forward)
        costs[name] = _BLUEPRINT_COSTS[key]
    return costs


def _width_costs(
    model: MorphogeneticModel, point: WidthPoint, feature: Tensor
) -> dict[str, SeedCost]:
    """What each width blueprint's units would cost at ``point``: their parameters, and
    the FLOPs of their contribution to the consumers from the producer's input."""
    topology, host = model.host.topology, model.host
    layers = tuple(repr(host.get_submodule(n)) for n in (point.producer, *point.consumers_names))
    costs = {}
    for name in blueprint_names(topology, GrowthKind.WIDTH):
        units = get_blueprint(topology, name).units
        assert units is not None
        key = (topology.value, name, layers, tuple(feature.shape))
        if key not in _BLUEPRINT_COSTS:
            seed = WidthSeed(host, point, units(point_units(host, point)), control=None)
            seed = seed.to(feature.device)
            train, forward = module_flops(_Contribution(seed), feature)
            params = sum(p.numel() for p in seed.parameters())
            _BLUEPRINT_COSTS[key] = SeedCost(params, train, forward, width=True)
        costs[name] = _BLUEPRINT_COSTS[key]
    return costs


class _Contribution(nn.Module):
    """A width seed's units alone: producer input -> what they add to each consumer."""

    def __init__(self, seed: WidthSeed) -> None:
        super().__init__()
        self.seed = seed

    def forward(self, x: Tensor) -> Tensor:
        parts = [self.seed.contribution(x, i) for i in range(len(self.seed.point.consumers))]
        return torch.cat([p.flatten(1) for p in parts], dim=1)


# ---------------------------------------------------------------- counting one step
#
# Counted by torch's FlopCounterMode on a probe batch: matrix multiplications,
# convolutions and attention, forward and backward, 2 FLOPs per multiply-add. Results
# are per scored item (sample, or token for language models), so callers multiply by the
# items a pass scored.


def train_flops(model: nn.Module, batch: Batch, criterion: nn.Module, task_type: TaskType) -> float:
    """FLOPs per scored item of one training step's forward and backward on ``model``.

    Runs on a copy: a training-mode forward would move BatchNorm statistics, and the
    backward would leave gradients, in the model being measured.
    """
    inputs, targets = batch
    probe = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        loss, _, count = compute_task_loss_with_metrics(
            probe(inputs), targets, criterion, task_type
        )
        loss.backward()  # type: ignore[no-untyped-call]
    return float(counter.get_total_flops()) / count


@torch.no_grad()
def eval_flops(
    model: nn.Module,
    batch: Batch,
    criterion: nn.Module,
    task_type: TaskType,
    counterfactual: Sequence[str] = (),
) -> float:
    """FLOPs per scored item of one `evaluate` step, counterfactual branches included
    (``counterfactual`` needs a `MorphogeneticModel`; any module can be counted without)."""
    inputs, targets = batch
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            if counterfactual:
                assert isinstance(model, MorphogeneticModel)
                model.forward_counterfactual(inputs, counterfactual)
            else:
                model(inputs)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops()) / targets.numel()


def module_flops(module: nn.Module, features: Tensor) -> tuple[float, float]:
    """(training, evaluation) FLOPs of ``module`` on ``features`` ``[1, ...]``: forward and
    backward (gradients for its parameters and its input), and forward alone."""
    x = features.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        out = module(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    return float(forward + counter.get_total_flops()), float(forward)
