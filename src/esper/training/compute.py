"""Compute accounting: what an episode spends, in FLOPs, counted once per architecture.

A model's cost per scored item changes only when a lifecycle event changes what runs in
the forward pass (a seed germinates, starts blending, is fossilized or culled). The meter
counts a small probe batch once per distinct architecture (`esper.training.loop`'s
FLOP counters) and the episode multiplies by the items each pass scored, so accounting
costs a few milliseconds per lifecycle event and nothing per batch.

Training FLOPs are the forward and backward of every training step; evaluation FLOPs are
the validation pass, counterfactual branches included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from esper.contracts import SeedCost, TaskType
from esper.model.blueprints import blueprint_names, get_blueprint
from esper.model.morphogenetic import MorphogeneticModel
from esper.training.loop import Batch, eval_flops, module_flops, train_flops

__all__ = ["ComputeMeter"]

PROBE_ITEMS = 4
"""Samples (sequences) in the probe batch; FLOPs per item do not depend on it."""


def _architecture(model: MorphogeneticModel) -> tuple[tuple[str, str, str | None, bool], ...]:
    """What decides the cost of a forward pass: each slot's seed and how it runs."""
    return tuple(
        (s.slot_id, s.forward_mode, s.state.blueprint_id, s.gate is not None) for s in model.slots()
    )


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
        inputs, targets = probe
        self.probe: Batch = (inputs[:PROBE_ITEMS], targets[:PROBE_ITEMS])
        self.criterion = criterion
        self.task_type = task_type
        self._train: dict[object, float] = {}
        self._eval: dict[object, float] = {}
        self.host_train: float
        """Training FLOPs per item of the host without any seed."""
        self.host_eval: float
        """Evaluation FLOPs per item of the host without any seed."""
        self.seed_costs: Mapping[str, Mapping[str, SeedCost]]
        """Per slot, per blueprint of the host's topology: what a seed there would cost."""
        # Building blueprints to count them draws initial weights from torch's global
        # generator; the fork keeps the run's random stream exactly as without counting.
        with torch.random.fork_rng(devices=[]):
            self.host_train = train_flops(model.host, self.probe, criterion, task_type)
            self.host_eval = eval_flops(model.host, self.probe, criterion, task_type)
            self.seed_costs = _seed_costs(model, self.probe[0])
        """Per slot, per blueprint of the host's topology: what a seed there would cost."""

    def train_per_item(self, model: MorphogeneticModel) -> float:
        """Training FLOPs per item of ``model`` as it is now."""
        key = _architecture(model)
        if key not in self._train:
            self._train[key] = train_flops(model, self.probe, self.criterion, self.task_type)
        return self._train[key]

    def eval_per_item(self, model: MorphogeneticModel, counterfactual: Sequence[str]) -> float:
        """Evaluation FLOPs per item of ``model``, removing each of ``counterfactual``."""
        key = (_architecture(model), tuple(counterfactual))
        if key not in self._eval:
            self._eval[key] = eval_flops(
                model, self.probe, self.criterion, self.task_type, counterfactual
            )
        return self._eval[key]


@torch.no_grad()
def _slot_features(model: MorphogeneticModel, inputs: Tensor) -> dict[str, Tensor]:
    """One sample's features arriving at each slot (shape ``[1, ...]``)."""
    seen: dict[str, Tensor] = {}
    hooks = [
        slot.register_forward_pre_hook(
            lambda module, args, sid=slot.slot_id: seen.setdefault(sid, args[0][:1].clone())
        )
        for slot in model.slots()
    ]
    was_training = model.training
    try:
        model.eval()
        model(inputs[:1])
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return seen


def _seed_costs(model: MorphogeneticModel, inputs: Tensor) -> Mapping[str, Mapping[str, SeedCost]]:
    features = _slot_features(model, inputs)
    topology = model.host.topology
    costs: dict[str, dict[str, SeedCost]] = {}
    for slot in model.slots():
        feature = features[slot.slot_id].to("cpu", torch.float32)
        costs[slot.slot_id] = {}
        for name in blueprint_names(topology):
            spec = get_blueprint(topology, name)
            train, forward = module_flops(spec.build(slot.channels), feature)
            costs[slot.slot_id][name] = SeedCost(spec.params(slot.channels), train, forward)
    return costs
