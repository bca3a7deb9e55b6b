"""SeedSlot: one injection point of the host, holding at most one seed and its lifecycle.

Forward, per stage, with ``h`` the host's features at the slot and ``s = seed(.)``:

* no seed / GERMINATED / CULLED / EMBARGOED / RESETTING: ``h``.
* TRAINING (incubator): `incubate` with ``s = seed(h.detach())``. The value is exactly
  ``h``; the seed receives the task-loss gradient as if fully blended (straight-through)
  through a change capped at ``incubation_radius`` times the features' norm; and
  nothing flows back into the host through the seed, so the host's gradients are
  exactly those of a model without the seed.
* BLENDING: ``h + alpha * (s - h)`` with ``s = seed(h)``: the host's identity path
  always carries gradient, and since every blueprint is residual this is
  ``h + alpha * gamma * f(h)``.
* PROBATIONARY / FOSSILIZED: alpha = 1, i.e. ``s`` itself (still residual, so the host
  upstream keeps learning through ``h``).

A counterfactual forward (`alpha_override`) forces alpha for one slot, e.g. to 0 to
measure what the seed contributes.

A slot whose host layer can widen (`esper.model.width.WidthPoint`) also takes width
seeds: they have the same lifecycle, but act on the layer before the slot (through
forward hooks; the slot itself passes ``h`` through) and, once fossilized, are merged
into the host, leaving the slot with no module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from esper.contracts import Topology
from esper.lifecycle import (
    ACTIVE_STAGES,
    BlendAlgorithm,
    GateResult,
    LifecycleConfig,
    LifecycleError,
    SeedStage,
    SeedState,
    StepOutcome,
    alpha_for_step,
    gate_fossilize,
    gate_germinate,
    seed_blends,
    step_epoch,
    transition,
)
from esper.model.blending import GatedBlend
from esper.model.blueprints import BlueprintSpec, GrowthKind, get_blueprint
from esper.model.incubation import incubate
from esper.model.width import (
    ParameterSwap,
    WidthPoint,
    WidthSeed,
    adapt_neighbours,
    merge,
    point_units,
)

__all__ = ["Fossilization", "SeedSlot"]

_ACTIVE = frozenset(int(s) for s in ACTIVE_STAGES)
_TRAINING, _BLENDING = int(SeedStage.TRAINING), int(SeedStage.BLENDING)


@dataclass(frozen=True)
class Fossilization:
    """What asking to keep a seed did: gate G5's verdict, and the host parameters a width
    seed's merge replaced (none for a depth seed), for the optimizers to follow."""

    gate: GateResult
    swaps: tuple[ParameterSwap, ...] = ()

    @property
    def passed(self) -> bool:
        return self.gate.passed


class SeedSlot(nn.Module):
    """Holds one seed module, its optional gate, and its `SeedState`."""

    def __init__(
        self,
        slot_id: str,
        channels: int,
        topology: Topology,
        lifecycle: LifecycleConfig,
        width: tuple[nn.Module, WidthPoint] | None = None,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.channels = channels
        self.topology = topology
        self.lifecycle = lifecycle
        # The host and its layer before this slot, for width seeds; in a list, so that
        # the host is not made a child of its own slot.
        self._width = [width] if width is not None else []
        self.seed: nn.Module | None = None
        self.gate: GatedBlend | None = None
        self.alpha_override: float | None = None
        # Moves with .to()/.half(): tells germinate which device and dtype to build on.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        # The blending alpha as a tensor, so a compiled forward reads each new ramp step
        # as an input instead of recompiling for it. Derived from the state: not saved.
        self.register_buffer("_ramp", torch.zeros(()), persistent=False)
        self.state = SeedState()

    # ------------------------------------------------------------ queries

    @property
    def state(self) -> SeedState:
        return self._state

    @state.setter
    def state(self, state: SeedState) -> None:
        self._state = state
        # forward() reads these, not the dataclass: torch.compile (2.13) guards a frozen
        # dataclass only by type, so a compiled forward would keep using the stage it was
        # traced at. An int on a module is guarded by value; the ramp is a graph input.
        self._forward_stage = int(state.stage)
        with torch.no_grad():
            self._tensor("_ramp").fill_(self.alpha)

    @property
    def stage(self) -> SeedStage:
        return self.state.stage

    @property
    def alpha(self) -> float:
        """Lifecycle alpha: 0 until BLENDING, the ramp during it, 1 after."""
        stage = self.state.stage
        if stage is SeedStage.BLENDING:
            return alpha_for_step(
                self.state.blend, self.state.blend_step, self.lifecycle.blending_steps
            )
        return 1.0 if stage in (SeedStage.PROBATIONARY, SeedStage.FOSSILIZED) else 0.0

    @property
    def forward_mode(self) -> str:
        """How the seed takes part in the forward pass: "none" (no seed runs),
        "incubating" (TRAINING: computed, value discarded), "blending" or "full"."""
        stage = self._forward_stage
        if self.seed is None or stage not in _ACTIVE:
            return "none"
        if stage == _TRAINING:
            return "incubating"
        return "blending" if stage == _BLENDING else "full"

    @property
    def width_point(self) -> WidthPoint | None:
        """The host layer a width seed here would widen, if it can."""
        return self._width[0][1] if self._width else None

    @property
    def holds_width_seed(self) -> bool:
        return isinstance(self.seed, WidthSeed)

    def seed_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the seed and its gate (empty when no seed)."""
        modules = [m for m in (self.seed, self.gate) if m is not None]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def seed_param_count(self) -> int:
        return sum(p.numel() for p in self.seed_parameters())

    # ------------------------------------------------------------ operations

    def germinate(
        self, blueprint_id: str, seed_id: str, blend: BlendAlgorithm = BlendAlgorithm.LINEAR
    ) -> None:
        """Build the blueprint here and enter GERMINATED; raises if G0 refuses."""
        spec = get_blueprint(self.topology, blueprint_id)  # unknown names raise first
        result = gate_germinate(self.state, seed_id, blueprint_id)
        if not result.passed:
            raise LifecycleError(f"cannot germinate in slot {self.slot_id}: {result.reason}")
        self._check_growth(spec, blend)
        self._build(spec, blend)
        if spec.kind is GrowthKind.DEPTH:
            self._check_shape(blueprint_id)
        state = SeedState(
            seed_id=seed_id, blueprint_id=blueprint_id, blend=blend, history=self.state.history
        )
        self.state = transition(state, SeedStage.GERMINATED)

    def fossilize(self, neighbours: Sequence[WidthSeed] = ()) -> Fossilization:
        """Keep the seed for good if G5 passes. A width seed is merged into the host, and
        the other live width seeds (``neighbours``) are fitted to the layers it widened."""
        result = gate_fossilize(self.state, self.lifecycle)
        swaps: list[ParameterSwap] = []
        if result.passed:
            self.state = transition(self.state, SeedStage.FOSSILIZED)
            if isinstance(self.seed, WidthSeed):
                seed, host = self.seed, self._width[0][0]
                swaps = merge(host, seed)
                swaps += adapt_neighbours(host, seed.point, seed.units, neighbours)
                self._drop_modules()  # its units are the host's now
        return Fossilization(result, tuple(swaps))

    def cull(self) -> None:
        """Remove a live seed at once; the slot then goes through embargo."""
        if not self.state.live:
            raise LifecycleError(
                f"cannot cull slot {self.slot_id}: it holds no live seed (stage {self.stage.name})"
            )
        self.state = transition(self.state, SeedStage.CULLED)
        self._drop_modules()

    def record(
        self,
        *,
        gradient_ratio: float | None = None,
        contribution: float | None = None,
        contribution_se: float | None = None,
    ) -> None:
        """Store this epoch's measurements for the gates."""
        self.state = self.state.with_measurements(
            gradient_ratio=gradient_ratio,
            contribution=contribution,
            contribution_se=contribution_se,
        )

    def step_epoch(self) -> StepOutcome:
        """Tick the lifecycle clock once; drops the modules if the tick culled the seed."""
        outcome = step_epoch(self.state, self.lifecycle)
        self.state = outcome.state
        if outcome.cull_reason is not None:
            self._drop_modules()
        return outcome

    # ------------------------------------------------------------ forward

    def forward(self, h: Tensor) -> Tensor:
        stage = self._forward_stage
        if self.seed is None or stage not in _ACTIVE or isinstance(self.seed, WidthSeed):
            return h  # a width seed works inside the host's layers (its hooks)
        if self.alpha_override is not None and stage != _TRAINING:
            return self._blend(h, self.alpha_override)
        if stage == _TRAINING:
            # .contiguous(): PyTorch's CPU GroupNorm backward segfaults on a channels_last
            # input that does not require grad (seen with torch 2.13); conv outputs are
            # channels_last whenever their input's strides are ambiguous (1 channel).
            s: Tensor = self.seed(h.detach().contiguous())
            return incubate(h, s, self.lifecycle.incubation_radius)
        if stage == _BLENDING:
            return self._mix(h, self._tensor("_ramp"))
        seeded: Tensor = self.seed(h)  # PROBATIONARY, FOSSILIZED: alpha = 1
        return seeded

    def _blend(self, h: Tensor, alpha: float) -> Tensor:
        """Forward at a forced alpha (0 = without the seed, as in the counterfactual)."""
        if alpha == 0.0:
            return h
        if alpha == 1.0:
            seeded: Tensor = self.seed(h) if self.seed is not None else h
            return seeded
        return self._mix(h, alpha)

    def _mix(self, h: Tensor, alpha: float | Tensor) -> Tensor:
        s: Tensor = self.seed(h) if self.seed is not None else h
        if self.gate is not None and self._forward_stage == _BLENDING:
            alpha = self.gate.alpha(h, alpha)
        return h + alpha * (s - h)

    # ------------------------------------------------------------ internals

    def _tensor(self, name: str) -> Tensor:
        buffer = getattr(self, name)
        assert isinstance(buffer, Tensor)
        return buffer

    def _check_growth(self, spec: BlueprintSpec, blend: BlendAlgorithm) -> None:
        if spec.kind is GrowthKind.DEPTH:
            return
        if not self._width:
            raise ValueError(f"slot {self.slot_id} has no layer that can widen")
        if blend not in seed_blends(width=True):
            raise ValueError(
                "a width seed blends linear or sigmoid (a gate reads a depth seed's features)"
            )

    def _build(self, spec: BlueprintSpec, blend: BlendAlgorithm) -> None:
        anchor = self._tensor("_anchor")
        if spec.kind is GrowthKind.WIDTH:
            self._build_width(spec)
            return
        self.seed = spec.build(self.channels).to(device=anchor.device, dtype=anchor.dtype)
        self.gate = None
        if blend is BlendAlgorithm.GATED:
            self.gate = GatedBlend(self.channels, self.topology).to(
                device=anchor.device, dtype=anchor.dtype
            )

    def _build_width(self, spec: BlueprintSpec) -> None:
        host, point = self._width[0]
        assert spec.units is not None
        seed = WidthSeed(host, point, spec.units(point_units(host, point)), control=self)
        anchor = self._tensor("_anchor")
        self.seed = seed.to(device=anchor.device, dtype=anchor.dtype)
        self.gate = None
        seed.attach(host)

    def _drop_modules(self) -> None:
        if isinstance(self.seed, WidthSeed):
            self.seed.detach()
        self.seed = None
        self.gate = None

    def _check_shape(self, blueprint_id: str) -> None:
        assert self.seed is not None
        shape = (1, self.channels, 4, 4) if self.topology is Topology.CNN else (1, 4, self.channels)
        anchor = self._tensor("_anchor")
        probe = torch.zeros(shape, device=anchor.device, dtype=anchor.dtype)
        with torch.no_grad():
            out = self.seed(probe)
        if out.shape != probe.shape:
            self._drop_modules()
            raise ValueError(
                f"blueprint {blueprint_id!r} maps {tuple(probe.shape)} to {tuple(out.shape)}; "
                "a seed must preserve the shape of the features at its slot"
            )

    # ------------------------------------------------------------ checkpointing

    def get_extra_state(self) -> dict[str, Any]:
        return {"state": self.state.to_dict()}

    def set_extra_state(self, extra: dict[str, Any]) -> None:
        # PyTorch calls this before loading this module's children, so rebuilding the
        # seed here lets a freshly built model load a checkpoint that holds seeds.
        state = SeedState.from_dict(extra["state"])
        spec = None
        if state.occupied:
            assert state.blueprint_id is not None
            spec = get_blueprint(self.topology, state.blueprint_id)
        merged = spec is not None and spec.kind is GrowthKind.WIDTH and not state.live
        self._drop_modules()
        if spec is not None and not merged:  # a kept width seed is part of the host
            self._build(spec, state.blend)
        self.state = state
