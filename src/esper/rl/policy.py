"""Actor-critic policies for PPO: Esper's recurrent factored policy and a plain MLP.

Esper's action has four heads, decided in order op -> slot -> blueprint -> blend:

- ``op``: WAIT=0, GERMINATE=1, FOSSILIZE=2, CULL=3 (the values of `LifecycleOp`);
- ``slot``: which slot the op acts on; applies unless op == WAIT;
- ``blueprint`` and ``blend``: what to grow and how to blend it in; apply only when
  op == GERMINATE.

Each head is masked by what is legal *given the choices before it* (`ActionMasks`). A head
that does not apply stores the placeholder action 0, and contributes exactly 0 to the
log-probability and the entropy: its terms are multiplied by a 0/1 applies-flag, so it
also receives exactly zero gradient. The log-probability of the joint action is

    log pi(a) = log pi(op) + [op != WAIT] log pi(slot | op)
                + [op == GERMINATE] (log pi(blueprint | slot) + log pi(blend | blueprint))

and the entropy is the same sum of the heads' masked entropies along the sampled path.

Every policy implements `ActorCritic`: ``act`` for one rollout step, ``value`` for
bootstrapping, ``evaluate`` for re-scoring stored sequences in the PPO update. Recurrent
state is a tuple of tensors whose dimension 1 is the environment (``[layers, B, H]`` for
the LSTM; the empty tuple for the MLP), so a buffer can select environments generically.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.lifecycle import LifecycleOp
from esper.rl.distributions import MaskedCategorical

__all__ = [
    "HEADS",
    "N_OP",
    "ActOutput",
    "ActionMasks",
    "ActorCritic",
    "EvalOutput",
    "FactoredActionSpec",
    "MLPPolicy",
    "PolicyState",
    "RecurrentFactoredPolicy",
    "flat_action_mask",
    "head_applies",
]

N_OP = len(LifecycleOp)
"""Number of ops: WAIT, GERMINATE, FOSSILIZE, CULL."""
HEADS = ("op", "slot", "blueprint", "blend")
"""The action heads, in decision order; column k of a factored action is head HEADS[k]."""

PolicyState = tuple[Tensor, ...]
"""Recurrent state; every tensor has the environment at dimension 1. Empty for an MLP."""


@dataclass(frozen=True)
class FactoredActionSpec:
    """Sizes of the four heads; the op head always has `N_OP` entries."""

    n_slot: int
    """Number of slots (injection points) of the host."""
    n_blueprint: int
    """Number of blueprints a seed can be built from."""
    n_blend: int
    """Number of blend algorithms."""

    def __post_init__(self) -> None:
        for name in ("n_slot", "n_blueprint", "n_blend"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def n_op(self) -> int:
        """Number of ops (4)."""
        return N_OP

    @property
    def nvec(self) -> tuple[int, int, int, int]:
        """Head sizes in HEADS order: the ``nvec`` of a ``MultiDiscrete`` action space."""
        return (N_OP, self.n_slot, self.n_blueprint, self.n_blend)


@dataclass(frozen=True)
class ActionMasks:
    """Conditional action masks: boolean tensors, True where a choice is legal.

    ``*`` is the batch: ``[B]`` for one rollout step, ``[T, B]`` for stored sequences.

    - ``op``: ``[*, n_op]``, the legal ops. WAIT should always be legal.
    - ``slot``: ``[*, n_op, n_slot]``; ``slot[..., o, s]`` says slot s is legal *given*
      op o. Only the chosen op's row is read, and never WAIT's (WAIT takes no slot);
      rows of illegal ops and of WAIT should be all False. A legal op other than WAIT
      must have at least one legal slot.
    - ``blueprint``: ``[*, n_slot, n_blueprint]``; ``blueprint[..., s, b]`` says blueprint
      b may be germinated into slot s. Only read on GERMINATE, at the chosen slot.
    - ``blend``: ``[*, n_blueprint, n_blend]``; ``blend[..., b, k]`` says blueprint b may
      blend in with algorithm k. Only read on GERMINATE, at the chosen blueprint.

    An environment hands them over as ``info["masks"]``, a dict of numpy arrays with
    these keys and shapes without the batch dimension (`from_numpy`), describing the
    decision to be taken on the observation returned with that info.
    """

    op: Tensor
    slot: Tensor
    blueprint: Tensor
    blend: Tensor

    @classmethod
    def all_legal(cls, spec: FactoredActionSpec, batch_shape: Sequence[int]) -> ActionMasks:
        """Masks that allow everything (every op, every slot for every op, ...)."""
        shape = tuple(batch_shape)

        def ones(*tail: int) -> Tensor:
            return torch.ones(*shape, *tail, dtype=torch.bool)

        return cls(
            ones(N_OP),
            ones(N_OP, spec.n_slot),
            ones(spec.n_slot, spec.n_blueprint),
            ones(spec.n_blueprint, spec.n_blend),
        )

    @classmethod
    def from_numpy(
        cls, masks: Mapping[str, np.ndarray], device: torch.device | str = "cpu"
    ) -> ActionMasks:
        """From an ``info["masks"]`` dict (any leading batch dimensions), as bool tensors."""
        missing = sorted(set(HEADS) - set(masks))
        if missing:
            raise ValueError(f"info['masks'] lacks {', '.join(missing)}; it needs {HEADS}")
        tensors = [torch.as_tensor(np.asarray(masks[k], dtype=bool), device=device) for k in HEADS]
        return cls(*tensors)

    @staticmethod
    def stack(steps: Sequence[ActionMasks], dim: int = 0) -> ActionMasks:
        """Stack per-step masks along a new dimension (e.g. T steps of ``[B]`` into [T, B])."""
        return ActionMasks(*(torch.stack([getattr(m, k) for m in steps], dim=dim) for k in HEADS))

    def index(self, index: Any) -> ActionMasks:
        """Apply the same indexing to the leading (batch) dimensions of every mask."""
        return ActionMasks(*(getattr(self, k)[index] for k in HEADS))

    def to(self, device: torch.device | str) -> ActionMasks:
        """The masks on ``device``."""
        return ActionMasks(*(getattr(self, k).to(device) for k in HEADS))

    def check(self, spec: FactoredActionSpec) -> None:
        """Raise ValueError unless the trailing shapes match ``spec``."""
        batch = self.op.shape[:-1]
        expected = {
            "op": (N_OP,),
            "slot": (N_OP, spec.n_slot),
            "blueprint": (spec.n_slot, spec.n_blueprint),
            "blend": (spec.n_blueprint, spec.n_blend),
        }
        for name, tail in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != (*batch, *tail):
                raise ValueError(f"mask {name} has shape {got}, expected {(*batch, *tail)}")


def flat_action_mask(masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """The independent-heads mask of sb3-contrib's MaskablePPO for a MultiDiscrete action.

    One boolean vector ``[*, n_op + n_slot + n_blueprint + n_blend]``: the op mask, the
    union over ops of the slot masks, the union over slots of the blueprint masks, and
    the union over blueprints of the blend masks. A head whose part would be all False
    (e.g. no slot is legal because only WAIT is) becomes all True: its choice is then
    irrelevant, and an independent categorical needs at least one legal entry. The heads
    being independent, such a mask allows combinations the conditional masks forbid; an
    environment serving it applies an illegal combination as WAIT.

    Args:
        masks: ``info["masks"]``-style arrays (see `ActionMasks`), any leading dimensions.
    """
    parts = [
        np.asarray(masks["op"], dtype=bool),
        np.asarray(masks["slot"], dtype=bool).any(axis=-2),
        np.asarray(masks["blueprint"], dtype=bool).any(axis=-2),
        np.asarray(masks["blend"], dtype=bool).any(axis=-2),
    ]
    parts = [np.where(p.any(axis=-1, keepdims=True), p, True) for p in parts]
    return np.concatenate(parts, axis=-1)


def head_applies(op: Tensor) -> Tensor:
    """Which heads apply to each action, as float 0/1 ``[*, 4]`` in HEADS order.

    The op head always applies; slot unless op == WAIT; blueprint and blend only when
    op == GERMINATE.
    """
    ones = torch.ones_like(op, dtype=torch.float32)
    takes_slot = (op != LifecycleOp.WAIT).float()
    germinates = (op == LifecycleOp.GERMINATE).float()
    return torch.stack([ones, takes_slot, germinates, germinates], dim=-1)


class ActOutput(NamedTuple):
    """One rollout step of a policy."""

    action: Tensor
    """int64 ``[B, *action_shape]`` (``[B, 4]`` factored, ``[B]`` discrete)."""
    log_prob: Tensor
    """``[B]``, log-probability of the action under the policy that chose it."""
    value: Tensor
    """``[B]``, the critic's value of the observation."""
    state: PolicyState
    """Recurrent state after the step."""


class EvalOutput(NamedTuple):
    """Stored actions re-scored over sequences: every tensor is ``[T, B]``."""

    log_prob: Tensor
    entropy: Tensor
    value: Tensor
    head_entropy: Tensor | None = None
    """``[T, B, 4]``, a factored policy's: each head's entropy where it applies to the
    stored action (`head_applies`), 0 where it does not; `entropy` is their sum."""


class ActorCritic(nn.Module, ABC):
    """What PPO needs of a policy: rollout steps, bootstrap values, sequence re-scoring.

    ``starts`` are episode-start flags (float 0/1): where a start is 1 the recurrent state
    is reset to zero *before* the step (multiplied by ``1 - start``). ``act`` and
    ``evaluate`` handle state identically, so re-running ``evaluate`` over a rollout from
    its initial state reproduces the log-probabilities ``act`` produced.
    """

    is_recurrent: bool = False
    """True when the policy carries state between steps (the update then keeps sequences)."""

    @abstractmethod
    def initial_state(self, batch: int) -> PolicyState:
        """The state at the start of a run, for ``batch`` environments."""

    @abstractmethod
    def act(
        self,
        obs: Tensor,
        state: PolicyState,
        masks: ActionMasks | None = None,
        starts: Tensor | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        """Choose actions for one step (no gradient).

        Args:
            obs: ``[B, obs_dim]``.
            state: the state before this step.
            masks: legal actions, leading dimension ``[B]`` (None: everything legal).
            starts: ``[B]`` episode-start flags (None: no starts).
            deterministic: take each head's most probable legal entry instead of sampling.
            generator: random generator for sampling (None: torch's global one).
        """

    @abstractmethod
    def value(self, obs: Tensor, state: PolicyState, starts: Tensor | None = None) -> Tensor:
        """Value ``[B]`` of ``obs [B, obs_dim]`` from ``state``, without advancing anything."""

    @abstractmethod
    def evaluate(
        self,
        obs: Tensor,
        actions: Tensor,
        masks: ActionMasks | None,
        initial_state: PolicyState,
        starts: Tensor,
    ) -> EvalOutput:
        """Re-score stored actions over whole sequences, with gradient.

        Args:
            obs: ``[T, B, obs_dim]``.
            actions: int64 ``[T, B, *action_shape]``.
            masks: the masks the actions were chosen under, leading ``[T, B]``.
            initial_state: the state before step 0 of the sequences.
            starts: ``[T, B]`` episode-start flags.
        """


def _linear(n_in: int, n_out: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights of ``gain`` and zero bias (PPO's usual init)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


HIDDEN_GAIN = math.sqrt(2)
POLICY_GAIN = 0.01  # near-uniform initial policy
VALUE_GAIN = 1.0


def _conditional_head(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        _linear(n_in, hidden, HIDDEN_GAIN), nn.ReLU(), _linear(hidden, n_out, POLICY_GAIN)
    )


def _select_row(table: Tensor, index: Tensor) -> Tensor:
    """``table[..., index, :]`` per batch element: ``[*, R, K]`` and ``[*]`` to ``[*, K]``."""
    gathered = index[..., None, None].expand(*index.shape, 1, table.shape[-1])
    return table.gather(-2, gathered).squeeze(-2)


class _Head(NamedTuple):
    action: Tensor
    log_prob: Tensor
    entropy: Tensor


def _decide(
    logits: Tensor,
    mask: Tensor,
    applies: Tensor,
    name: str,
    given: Tensor | None,
    deterministic: bool,
    generator: torch.Generator | None,
) -> _Head:
    """One head: its masked distribution, its action, and its applies-weighted terms.

    Where the head does not apply the mask row is irrelevant (and may be all False), so
    it is replaced by all-legal to keep the distribution finite; the action there is the
    placeholder 0 and the log-probability and entropy are multiplied by 0, which also
    sends exactly zero gradient into the head.
    """
    applies_bool = applies.bool()
    if bool((applies_bool & ~mask.any(dim=-1)).any()):
        raise ValueError(f"no legal {name} for a chosen action: the env's masks disagree")
    dist = MaskedCategorical(logits, mask | ~applies_bool[..., None], validate=False)
    if given is None:
        chosen = dist.mode() if deterministic else dist.sample(generator)
        given = torch.where(applies_bool, chosen, torch.zeros_like(chosen))
    elif not bool(dist.mask.gather(-1, given.unsqueeze(-1)).all()):
        # Its log-probability would be about -1e8: a ratio of exp(1e8) in the update.
        raise ValueError(f"a stored {name} action is illegal under its mask")
    return _Head(given, applies * dist.log_prob(given), applies * dist.entropy())


class RecurrentFactoredPolicy(ActorCritic):
    """Esper's controller: encoder, LSTM, autoregressive op/slot/blueprint/blend heads.

    ``obs -> Linear -> LayerNorm -> ReLU -> LSTM (one layer) -> h``, then

    - op logits from ``h`` (one linear layer);
    - slot logits from ``[h, onehot(op)]``, blueprint logits from ``[h, onehot(slot)]``,
      blend logits from ``[h, onehot(blueprint)]`` (each Linear -> ReLU -> Linear), so
      every head sees the choices before it;
    - value from ``h`` (one linear layer).

    The LSTM is sequence-first: its input is ``[T, B, hidden]`` and the state is
    ``(h, c)``, each ``[1, B, hidden]``. Init: orthogonal, gain sqrt(2) for hidden
    layers, 0.01 for the policy outputs, 1 for the value output, zero biases; LSTM
    weights orthogonal, biases zero except the forget gate's, which is 1.

    Args:
        obs_dim: length of an observation vector.
        n_slot: slot head size.
        n_blueprint: blueprint head size.
        n_blend: blend head size.
        hidden: width of the encoder, the LSTM and the heads' hidden layers.
    """

    is_recurrent = True

    def __init__(
        self, obs_dim: int, n_slot: int, n_blueprint: int, n_blend: int, hidden: int = 128
    ) -> None:
        super().__init__()
        self.spec = FactoredActionSpec(n_slot, n_blueprint, n_blend)
        self.obs_dim, self.hidden = obs_dim, hidden
        self.encoder = nn.Sequential(
            _linear(obs_dim, hidden, HIDDEN_GAIN), nn.LayerNorm(hidden), nn.ReLU()
        )
        self.lstm = nn.LSTM(hidden, hidden)
        for name, param in self.lstm.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)
            if name.startswith("bias_ih"):
                # Gates are ordered (input, forget, cell, output); the two biases add up.
                with torch.no_grad():
                    param[hidden : 2 * hidden].fill_(1.0)
        self.op_head = _linear(hidden, N_OP, POLICY_GAIN)
        self.slot_head = _conditional_head(hidden + N_OP, hidden, n_slot)
        self.blueprint_head = _conditional_head(hidden + n_slot, hidden, n_blueprint)
        self.blend_head = _conditional_head(hidden + n_blueprint, hidden, n_blend)
        self.value_head = _linear(hidden, 1, VALUE_GAIN)

    def initial_state(self, batch: int) -> PolicyState:
        zeros = torch.zeros(1, batch, self.hidden, device=self.op_head.weight.device)
        return (zeros, zeros.clone())

    def _features(
        self, obs: Tensor, state: PolicyState, starts: Tensor
    ) -> tuple[Tensor, PolicyState]:
        """LSTM outputs ``[T, B, hidden]`` for ``obs [T, B, obs_dim]``, and the final state."""
        x = self.encoder(obs)
        h, c = state
        outputs = []
        for t in range(x.shape[0]):
            keep = (1.0 - starts[t]).view(1, -1, 1)
            out, (h, c) = self.lstm(x[t : t + 1], (h * keep, c * keep))
            outputs.append(out)
        return torch.cat(outputs), (h, c)

    def _heads(
        self,
        h: Tensor,
        masks: ActionMasks,
        actions: Tensor | None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Actions ``[*, 4]``, log-probabilities ``[*]`` and each head's entropy ``[*, 4]``
        (0 where it does not apply) from ``h [*, H]``.

        With ``actions`` given they are scored; otherwise each head is sampled in turn.
        """
        spec = self.spec
        given = [None] * 4 if actions is None else list(actions.unbind(-1))
        args = (deterministic, generator)
        op = _decide(self.op_head(h), masks.op, h.new_ones(h.shape[:-1]), "op", given[0], *args)
        applies = head_applies(op.action)
        slot = _decide(
            self.slot_head(torch.cat([h, F.one_hot(op.action, N_OP).float()], -1)),
            _select_row(masks.slot, op.action),
            applies[..., 1],
            "slot",
            given[1],
            *args,
        )
        blueprint = _decide(
            self.blueprint_head(torch.cat([h, F.one_hot(slot.action, spec.n_slot).float()], -1)),
            _select_row(masks.blueprint, slot.action),
            applies[..., 2],
            "blueprint",
            given[2],
            *args,
        )
        blend = _decide(
            self.blend_head(
                torch.cat([h, F.one_hot(blueprint.action, spec.n_blueprint).float()], -1)
            ),
            _select_row(masks.blend, blueprint.action),
            applies[..., 3],
            "blend",
            given[3],
            *args,
        )
        heads = (op, slot, blueprint, blend)
        chosen = torch.stack([head.action for head in heads], dim=-1)
        log_prob = torch.stack([head.log_prob for head in heads]).sum(0)
        entropy = torch.stack([head.entropy for head in heads], dim=-1)
        return chosen, log_prob, entropy

    def _starts(self, starts: Tensor | None, batch: int) -> Tensor:
        if starts is None:
            return torch.zeros(batch, device=self.op_head.weight.device)
        return starts.float()

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        state: PolicyState,
        masks: ActionMasks | None = None,
        starts: Tensor | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        batch = obs.shape[0]
        if masks is None:
            masks = ActionMasks.all_legal(self.spec, [batch]).to(obs.device)
        starts_t = self._starts(starts, batch)[None]
        h, new_state = self._features(obs[None], state, starts_t)
        action, log_prob, _ = self._heads(h[0], masks, None, deterministic, generator)
        return ActOutput(action, log_prob, self.value_head(h[0]).squeeze(-1), new_state)

    @torch.no_grad()
    def value(self, obs: Tensor, state: PolicyState, starts: Tensor | None = None) -> Tensor:
        h, _ = self._features(obs[None], state, self._starts(starts, obs.shape[0])[None])
        value: Tensor = self.value_head(h[0]).squeeze(-1)
        return value

    def evaluate(
        self,
        obs: Tensor,
        actions: Tensor,
        masks: ActionMasks | None,
        initial_state: PolicyState,
        starts: Tensor,
    ) -> EvalOutput:
        if masks is None:
            masks = ActionMasks.all_legal(self.spec, obs.shape[:2]).to(obs.device)
        h, _ = self._features(obs, initial_state, starts.float())
        _, log_prob, entropy = self._heads(h, masks, actions)
        return EvalOutput(log_prob, entropy.sum(-1), self.value_head(h).squeeze(-1), entropy)


class MLPPolicy(ActorCritic):
    """CleanRL's discrete-action actor-critic: separate actor and critic MLPs.

    Each is two tanh hidden layers of ``hidden`` units; orthogonal init with gain sqrt(2),
    0.01 on the actor's output and 1 on the critic's. Stateless (the state is ``()``) and
    unmasked: ``masks`` must be None. Actions are int64 ``[B]``.

    Args:
        obs_dim: length of an observation vector.
        n_actions: size of the ``Discrete`` action space.
        hidden: width of the hidden layers.
    """

    is_recurrent = False

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.actor = self._mlp(obs_dim, hidden, n_actions, POLICY_GAIN)
        self.critic = self._mlp(obs_dim, hidden, 1, VALUE_GAIN)

    @staticmethod
    def _mlp(n_in: int, hidden: int, n_out: int, out_gain: float) -> nn.Sequential:
        return nn.Sequential(
            _linear(n_in, hidden, HIDDEN_GAIN),
            nn.Tanh(),
            _linear(hidden, hidden, HIDDEN_GAIN),
            nn.Tanh(),
            _linear(hidden, n_out, out_gain),
        )

    def initial_state(self, batch: int) -> PolicyState:
        return ()

    @staticmethod
    def _no_masks(masks: ActionMasks | None) -> None:
        if masks is not None:
            raise ValueError("MLPPolicy takes no action masks")

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        state: PolicyState,
        masks: ActionMasks | None = None,
        starts: Tensor | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        self._no_masks(masks)
        dist = MaskedCategorical(self.actor(obs), validate=False)
        action = dist.mode() if deterministic else dist.sample(generator)
        return ActOutput(action, dist.log_prob(action), self.critic(obs).squeeze(-1), ())

    @torch.no_grad()
    def value(self, obs: Tensor, state: PolicyState, starts: Tensor | None = None) -> Tensor:
        value: Tensor = self.critic(obs).squeeze(-1)
        return value

    def evaluate(
        self,
        obs: Tensor,
        actions: Tensor,
        masks: ActionMasks | None,
        initial_state: PolicyState,
        starts: Tensor,
    ) -> EvalOutput:
        self._no_masks(masks)
        dist = MaskedCategorical(self.actor(obs), validate=False)
        return EvalOutput(dist.log_prob(actions), dist.entropy(), self.critic(obs).squeeze(-1))
