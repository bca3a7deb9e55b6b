"""What a learned controller sees and may do: the observation vector and action masks.

Both are pure functions of the `TrainingSignals` and `SlotReport`s every controller
receives, so the Gymnasium environment and a trained policy driving a run compute them
identically.

Observation layout, version `OBSERVATION_VERSION` (`observation_names` names every
index). Every feature is scaled to roughly [-1, 1] with fixed, documented scales, never
a running normaliser, so a policy means the same thing on every run:

* run (13): ``progress`` (epoch / epochs), ``train_loss`` and ``val_loss`` (over the
  task's random-guess loss, clipped to [0, 3]), ``train_accuracy``, ``val_accuracy`` and
  ``best_val_accuracy`` (/100), ``loss_delta`` (over the random-guess loss, clipped to
  +-1), ``accuracy_delta`` (pp / 10, clipped to +-1), ``plateau`` (epochs / 10, at most
  1), ``growth_params`` (ln(1 + seed / host parameters), at most `HIGH`),
  ``growth_flops`` (ln(1 + the grown seeds' training FLOPs / the host's), at most
  `HIGH`), ``live_seeds`` and ``fossils`` (/ slots);
* per slot, in depth order (`per_slot_size` each): the stage one-hot (9), ``alpha``,
  ``epochs_in_stage`` (/10, at most 1), ``contribution`` (pp / 10, clipped to +-1) and
  ``contribution_z`` (/5, clipped to +-1) with ``measured`` (1 when both are), the
  G2 ``gradient_ratio`` (/2, at most 1), ``seed_params`` (ln(1 + seed / host
  parameters)), ``can_widen`` (1 when the block before the slot has a width point) and
  ``width_units`` (ln(1 + its units / the mean units of the blocks that can widen): scale
  free, so a narrow block reads the same on every host), the blueprint one-hot (the
  topology's depth blueprints, then its width blueprints), the legal ops (4: WAIT,
  GERMINATE, FOSSILIZE, CULL) and ``depth`` (slot index / (slots - 1)).

Version 2 added ``can_widen``, ``width_units`` and the width blueprints: a seed at a slot
either deepens it or widens the block before it (`esper.model.width`).

Action: (op, slot, blueprint, blend) indices into `LifecycleOp`, the slots in depth
order, the blueprints and `BlendAlgorithm`. `conditional_masks` says what is legal for
the next decision, each head given the choices before it: a blueprint must fit the slot
(width ones need a width point), and a width seed blends linear or sigmoid, never gated
(a gate reads a depth seed's features).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from esper.contracts import SlotReport, TrainingSignals, mean_width_units
from esper.lifecycle import BlendAlgorithm, FactoredAction, LifecycleOp, SeedStage, seed_blends

__all__ = [
    "BLENDS",
    "HIGH",
    "OBSERVATION_VERSION",
    "RUN_FEATURES",
    "ConditionalMasks",
    "conditional_masks",
    "decode_action",
    "encode_action",
    "legal_blends",
    "observation",
    "observation_names",
    "observation_size",
    "per_slot_size",
]

OBSERVATION_VERSION = 2
"""Bumped whenever the layout changes: a policy trained on another layout is refused."""

RUN_FEATURES = (
    "progress",
    "train_loss",
    "val_loss",
    "train_accuracy",
    "val_accuracy",
    "best_val_accuracy",
    "loss_delta",
    "accuracy_delta",
    "plateau",
    "growth_params",
    "growth_flops",
    "live_seeds",
    "fossils",
)
_SLOT_SCALARS = (
    "alpha",
    "epochs_in_stage",
    "contribution",
    "contribution_z",
    "measured",
    "gradient_ratio",
    "seed_params",
    "can_widen",
    "width_units",
)
BLENDS = tuple(BlendAlgorithm)
"""The blend head's choices, in index order."""

ConditionalMasks = dict[str, list[list[bool]] | list[bool]]
"""``op [4]``, ``slot [4][slots]`` (legal slots given each op; WAIT's row is empty),
``blueprint [slots][blueprints]`` (legal blueprints given the slot), ``blend
[blueprints][3]`` (legal blends given the blueprint)."""


def per_slot_size(num_blueprints: int) -> int:
    return len(SeedStage) + len(_SLOT_SCALARS) + num_blueprints + len(LifecycleOp) + 1


def observation_size(num_slots: int, num_blueprints: int) -> int:
    return len(RUN_FEATURES) + num_slots * per_slot_size(num_blueprints)


def observation_names(slot_ids: Sequence[str], blueprints: Sequence[str]) -> list[str]:
    """The name of every index of the observation vector."""
    names = list(RUN_FEATURES)
    for sid in slot_ids:
        names += [f"{sid}.stage={stage.name}" for stage in SeedStage]
        names += [f"{sid}.{name}" for name in _SLOT_SCALARS]
        names += [f"{sid}.blueprint={name}" for name in blueprints]
        names += [f"{sid}.legal={op.name}" for op in LifecycleOp]
        names.append(f"{sid}.depth")
    return names


def _clip(value: float, low: float = -1.0, high: float = 1.0) -> float:
    if not math.isfinite(value):
        return high if value > 0 else low
    return min(high, max(low, value))


HIGH = 4.0
"""Every feature lies in [-1, HIGH]."""


def _log_ratio(part: float, whole: float) -> float:
    """ln(1 + part / whole), at most HIGH (a growth of 50 times the host)."""
    return min(math.log1p(max(part, 0.0) / whole), HIGH)


def observation(
    signals: TrainingSignals,
    slots: Sequence[SlotReport],
    blueprints: Sequence[str],
    random_guess_loss: float,
) -> list[float]:
    """The observation vector (see the module docstring for its layout)."""
    guess = max(random_guess_loss, 1e-6)
    host = max(signals.host_params, 1)
    grown_flops = 0.0
    for r in slots:
        cost = r.costs.get(r.state.blueprint_id or "") if r.state.occupied else None
        grown_flops += cost.train_flops if cost is not None else 0.0
    n = max(len(slots), 1)
    mean_units = mean_width_units(slots) or 1.0
    values = [
        signals.epoch / max(signals.max_epochs, 1),
        _clip(signals.train_loss / guess, 0.0, 3.0),
        _clip(signals.val_loss / guess, 0.0, 3.0),
        signals.train_accuracy / 100.0,
        signals.val_accuracy / 100.0,
        signals.best_val_accuracy / 100.0,
        _clip(signals.loss_delta / guess),
        _clip(signals.accuracy_delta / 10.0),
        min(signals.plateau_epochs / 10.0, 1.0),
        _log_ratio(signals.seed_params, host),
        _log_ratio(grown_flops, max(signals.host_train_flops, 1.0)),
        sum(r.state.live for r in slots) / n,
        sum(r.state.stage is SeedStage.FOSSILIZED for r in slots) / n,
    ]
    for index, report in enumerate(slots):
        depth = index / max(len(slots) - 1, 1)
        values += _slot_features(report, blueprints, host, depth, mean_units)
    return values


def _slot_features(
    report: SlotReport,
    blueprints: Sequence[str],
    host_params: int,
    depth: float,
    mean_units: float,
) -> list[float]:
    state = report.state
    c, z = state.contribution, state.contribution_z
    measured = c is not None and state.contribution_se is not None
    ratio = state.gradient_ratio
    return [
        *(float(state.stage is stage) for stage in SeedStage),
        report.alpha,
        min(state.epochs_in_stage / 10.0, 1.0),
        _clip(c / 10.0) if measured and c is not None else 0.0,
        _clip(z / 5.0) if measured and z is not None else 0.0,
        float(measured),
        min(max(ratio, 0.0) / 2.0, 1.0) if ratio is not None and math.isfinite(ratio) else 0.0,
        _log_ratio(report.seed_params, host_params),
        float(report.width_units is not None),
        _log_ratio(report.width_units or 0, mean_units),
        *(float(state.occupied and state.blueprint_id == name) for name in blueprints),
        *(float(op in report.legal) for op in LifecycleOp),
        depth,
    ]


def conditional_masks(slots: Sequence[SlotReport], blueprints: Sequence[str]) -> ConditionalMasks:
    """What the next decision may choose, each head given the choices before it.

    An op is legal when some slot allows it (WAIT always); a slot, when it allows the
    chosen op; a blueprint, when it fits the chosen slot's host (`SlotReport.costs`
    lists the topology's); a blend, when the chosen blueprint allows it (`legal_blends`).
    """
    slot_given_op = [
        [op is not LifecycleOp.WAIT and op in r.legal for r in slots] for op in LifecycleOp
    ]
    return {
        "op": [
            op is LifecycleOp.WAIT or any(row)
            for op, row in zip(LifecycleOp, slot_given_op, strict=True)
        ],
        "slot": slot_given_op,
        "blueprint": [[not r.costs or name in r.costs for name in blueprints] for r in slots],
        "blend": [[blend in legal_blends(name, slots) for blend in BLENDS] for name in blueprints],
    }


def legal_blends(blueprint: str, slots: Sequence[SlotReport]) -> frozenset[BlendAlgorithm]:
    """The blends ``blueprint`` may use in these slots (`esper.lifecycle.seed_blends`)."""
    return seed_blends(
        any(cost.width for r in slots if (cost := r.costs.get(blueprint)) is not None)
    )


def decode_action(
    action: Sequence[int], slots: Sequence[SlotReport], blueprints: Sequence[str]
) -> tuple[FactoredAction, str | None]:
    """The `FactoredAction` an index tuple (op, slot, blueprint, blend) stands for, or
    WAIT and the reason when the combination is not legal now."""
    op_index, slot_index, blueprint_index, blend_index = (int(a) for a in action)
    if not 0 <= op_index < len(LifecycleOp):
        return FactoredAction.wait(), f"op index {op_index} out of range"
    op = LifecycleOp(op_index)
    if op is LifecycleOp.WAIT:
        return FactoredAction.wait(), None
    if not 0 <= slot_index < len(slots):
        return FactoredAction.wait(), f"slot index {slot_index} out of range"
    report = slots[slot_index]
    if op not in report.legal:
        return FactoredAction.wait(), f"{op.name} is not legal in {report.slot_id}"
    if op is not LifecycleOp.GERMINATE:
        return FactoredAction(op, report.slot_id), None
    if not 0 <= blueprint_index < len(blueprints) or not 0 <= blend_index < len(BLENDS):
        return FactoredAction.wait(), "blueprint or blend index out of range"
    name, blend = blueprints[blueprint_index], BLENDS[blend_index]
    if report.costs and name not in report.costs:
        return FactoredAction.wait(), f"blueprint {name} does not fit {report.slot_id}"
    if blend not in legal_blends(name, slots):
        return FactoredAction.wait(), f"blueprint {name} cannot blend {blend.value}"
    return FactoredAction(op, report.slot_id, name, blend), None


def encode_action(
    action: FactoredAction, slots: Sequence[SlotReport], blueprints: Sequence[str]
) -> tuple[int, int, int, int]:
    """The index tuple (op, slot, blueprint, blend) of ``action``, the inverse of
    `decode_action` for a legal action. Heads that do not apply get the placeholder 0
    (slot on WAIT; blueprint and blend unless GERMINATE), as a policy stores them."""
    op = int(action.op)
    if action.op is LifecycleOp.WAIT:
        return op, 0, 0, 0
    slot = [r.slot_id for r in slots].index(action.slot or "")
    if action.op is not LifecycleOp.GERMINATE:
        return op, slot, 0, 0
    return op, slot, list(blueprints).index(action.blueprint or ""), BLENDS.index(action.blend)
