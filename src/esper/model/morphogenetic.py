"""MorphogeneticModel: a host with a `SeedSlot` at each enabled injection point.

A slot whose host layer can widen (`Host.width_points`) takes width seeds as well as
depth seeds; a kept width seed is merged into the host, which then has wider layers
(`host_params` stays the host as built; `active_seed_params` counts the merged units).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from esper.lifecycle import (
    BlendAlgorithm,
    LifecycleConfig,
    SeedStage,
    StepOutcome,
)
from esper.model.hosts import Host
from esper.model.slot import Fossilization, SeedSlot
from esper.model.width import WidthSeed, resize_to
from esper.registry import UnknownNameError

__all__ = ["MorphogeneticModel"]


class MorphogeneticModel(nn.Module):
    """A host network that can grow seeds in its enabled slots.

    ``slots`` picks which of the host's injection points get a slot (default: all), in
    the host's depth order whatever order they are given in. Forward threads the
    features through each segment of the host and the slot after it.
    """

    def __init__(
        self,
        host: Host,
        slots: Sequence[str] | None = None,
        lifecycle: LifecycleConfig | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.lifecycle = lifecycle or LifecycleConfig()
        points = host.injection_points()
        valid = [p.slot_id for p in points]
        wanted = list(valid if slots is None else slots)
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"duplicate slot ids in {wanted}")
        for sid in wanted:
            if sid not in valid:
                raise UnknownNameError("slot", sid, valid)
        self._segment_slots = [p.slot_id if p.slot_id in wanted else None for p in points]
        widths = {w.slot_id: w for w in host.width_points()}
        self.seed_slots = nn.ModuleDict(
            {
                p.slot_id: SeedSlot(
                    p.slot_id,
                    p.channels,
                    host.topology,
                    self.lifecycle,
                    (host, widths[p.slot_id]) if p.slot_id in widths else None,
                )
                for p in points
                if p.slot_id in wanted
            }
        )
        self._built_host_params = self.host_params_now

    # ------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        return self._run_from(0, x)

    def _run_from(self, segment: int, h: Tensor) -> Tensor:
        """Segments ``segment`` onwards (each followed by its slot), then the head."""
        for index in range(segment, len(self._segment_slots)):
            h = self.host.forward_segment(index, h)
            sid = self._segment_slots[index]
            if sid is not None:
                h = self.seed_slots[sid](h)
        return self.host.forward_head(h)

    def forward_counterfactual(
        self, x: Tensor, without: Sequence[str]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The output, and for each slot in ``without`` the output with that seed removed.

        Removing a seed (alpha forced to 0) changes nothing upstream of its slot, so each
        counterfactual starts from the features the real pass computed at that slot and
        runs only the rest of the network: removing the deepest seed costs little more
        than the head. The results equal full forwards under `forced_alpha` ({sid: 0}).
        """
        wanted = set(without)
        unknown = wanted - set(self.seed_slots)
        if unknown:
            raise UnknownNameError("slot", sorted(unknown)[0], list(self.seed_slots))
        branch_at: dict[str, tuple[int, Tensor]] = {}
        inputs, h = [], x  # each segment's input, then the head's
        for index, sid in enumerate(self._segment_slots):
            inputs.append(h)
            h = self.host.forward_segment(index, h)
            if sid is not None:
                if sid in wanted:
                    branch_at[sid] = (index + 1, h)  # a slot at alpha 0 passes h through
                h = self.seed_slots[sid](h)
        inputs.append(h)
        output = self.host.forward_head(h)
        for sid in wanted:
            point = self.slot(sid).width_point
            if self.slot(sid).holds_width_seed and point is not None:
                # A width seed acts in the layer its consumer is in: start again there.
                branch_at[sid] = (point.segment, inputs[point.segment])
        branches = {}
        for sid, (segment, at) in branch_at.items():
            with self.forced_alpha({sid: 0.0}):
                branches[sid] = self._run_from(segment, at)
        return output, branches

    @contextmanager
    def forced_alpha(self, overrides: Mapping[str, float]) -> Iterator[None]:
        """Within the block, the named slots blend at the given alpha (0 = seed removed).

        Used for counterfactual evaluation: accuracy with a seed minus accuracy with its
        alpha forced to 0 is the seed's measured contribution.
        """
        slots = [self.slot(sid) for sid in overrides]
        previous: list[float | None] = [s.alpha_override for s in slots]
        try:
            for s, forced in zip(slots, overrides.values(), strict=True):
                s.alpha_override = forced
            yield
        finally:
            for s, old in zip(slots, previous, strict=True):
                s.alpha_override = old

    # ------------------------------------------------------------ slots

    def slot(self, slot_id: str) -> SeedSlot:
        """The slot ``slot_id``; unknown ids raise an error listing the enabled slots."""
        if slot_id not in self.seed_slots:
            raise UnknownNameError("slot", slot_id, list(self.seed_slots))
        return self.seed_slots[slot_id]  # type: ignore[return-value]

    def slots(self) -> list[SeedSlot]:
        """Enabled slots in depth order."""
        return [self.seed_slots[sid] for sid in self.seed_slots]  # type: ignore[misc]

    @property
    def slot_ids(self) -> list[str]:
        return list(self.seed_slots)

    def germinate_seed(
        self,
        blueprint_id: str,
        seed_id: str,
        slot: str,
        blend: BlendAlgorithm = BlendAlgorithm.LINEAR,
    ) -> None:
        """Grow ``blueprint_id`` in ``slot``; it starts in GERMINATED."""
        self.slot(slot).germinate(blueprint_id, seed_id, blend)

    def cull_seed(self, slot: str) -> None:
        """Remove the live seed in ``slot``; its parameters leave the model at once."""
        self.slot(slot).cull()

    def fossilize_seed(self, slot: str) -> Fossilization:
        """Keep the seed in ``slot`` for good if G5 passes (a width seed is merged in, and
        the other live width seeds fitted to the layers it widened)."""
        others = [
            s.seed for s in self.slots() if s.slot_id != slot and isinstance(s.seed, WidthSeed)
        ]
        return self.slot(slot).fossilize(others)

    def step_epoch(self) -> dict[str, StepOutcome]:
        """Tick every slot's lifecycle clock once (after this epoch's measurements)."""
        return {s.slot_id: s.step_epoch() for s in self.slots()}

    @property
    def has_active_seed(self) -> bool:
        """Some slot holds a live (not yet fossilized) seed."""
        return any(s.state.live for s in self.slots())

    def has_active_seed_in_slot(self, slot_id: str) -> bool:
        return self.slot(slot_id).state.live

    def stages(self) -> dict[str, SeedStage]:
        return {s.slot_id: s.stage for s in self.slots()}

    # ------------------------------------------------------------ parameters

    def get_host_parameters(self) -> list[nn.Parameter]:
        """The host's trainable parameters (shared weights once), without any seed."""
        return [p for p in self.host.parameters() if p.requires_grad]

    def get_seed_parameters(self, slot: str | None = None) -> list[nn.Parameter]:
        """Trainable parameters of the seed (and gate) in ``slot``, or of every seed,
        live and fossilized, when ``slot`` is None."""
        if slot is not None:
            return self.slot(slot).seed_parameters()
        return [p for s in self.slots() for p in s.seed_parameters()]

    @property
    def active_seed_params(self) -> int:
        """Parameters added by seeds: live and fossilized, and the units of kept width
        seeds, now part of the host's layers."""
        merged = self.host_params_now - self._built_host_params
        return sum(p.numel() for p in self.get_seed_parameters()) + merged

    @property
    def host_params(self) -> int:
        """Parameters of the host as it was built (merged width units are the seeds')."""
        return self._built_host_params

    @property
    def host_params_now(self) -> int:
        """Parameters of the host's layers as they are, merged width units included."""
        return sum(p.numel() for p in self.get_host_parameters())

    # ------------------------------------------------------------ checkpoints

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """`nn.Module.load_state_dict`, after giving the host's layers the widths the state
        holds (wider after a merge, narrower when a rollback goes back before one)."""
        resize_to(self.host, state_dict, "host.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def total_params(self) -> int:
        return self.host_params + self.active_seed_params
