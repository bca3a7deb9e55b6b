"""A trained policy: its checkpoint file, and the policy as a `Controller` of any run.

``policy.pt`` holds the weights and plain metadata only (task, observation layout and
version, slots, blueprints, hidden size), so it loads with ``torch.load(weights_only=True)``
and a policy never drives a run it was not built for.

`PolicyController` computes the same observation and masks as `MorphogenesisEnv`
(`esper.controller.features`) from what every controller receives, so ``esper ppo run``
and ``esper ppo eval`` drive ordinary runs with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esper.contracts import Decision, SlotReport, TrainingSignals
from esper.controller.features import (
    BLENDS,
    OBSERVATION_VERSION,
    conditional_masks,
    decode_action,
    observation,
    observation_size,
)
from esper.controller.registry import (
    POLICY_FILE,
    ControllerContext,
    policy_digest,
    policy_file,
    shipped_policies,
)
from esper.rl.policy import ActionMasks, RecurrentFactoredPolicy
from esper.rundir import save_atomic

__all__ = [
    "POLICY_FILE",
    "PolicyController",
    "PolicyError",
    "PolicyMeta",
    "build",
    "load_policy",
    "save_policy",
]

FORMAT = 1


class PolicyError(ValueError):
    """A policy file that cannot drive this run; the message says what to do."""


@dataclass(frozen=True)
class PolicyMeta:
    """What a policy was built for."""

    task: str
    slot_ids: tuple[str, ...]
    blueprints: tuple[str, ...]
    hidden: int
    observation_version: int = OBSERVATION_VERSION

    @property
    def obs_dim(self) -> int:
        return observation_size(len(self.slot_ids), len(self.blueprints))

    def build(self) -> RecurrentFactoredPolicy:
        """A fresh policy of this shape."""
        return RecurrentFactoredPolicy(
            self.obs_dim, len(self.slot_ids), len(self.blueprints), len(BLENDS), self.hidden
        )


def save_policy(path: Path, policy: RecurrentFactoredPolicy, meta: PolicyMeta) -> None:
    """Write ``policy`` and ``meta`` to ``path`` atomically (temp file, then rename)."""
    payload = {
        "format": FORMAT,
        "meta": {
            **asdict(meta),
            "slot_ids": list(meta.slot_ids),
            "blueprints": list(meta.blueprints),
        },
        "weights": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
    }
    save_atomic(path, payload)


def load_policy(
    source: Path, task: str | None = None, slot_ids: Sequence[str] | None = None
) -> tuple[RecurrentFactoredPolicy, PolicyMeta]:
    """The policy in ``source`` (a ``policy.pt`` or a run directory holding one).

    Refuses, with a `PolicyError` naming the fix, a missing or corrupt file, another
    observation layout, or (when given) another task or slots than the run's.
    """
    path = policy_file(source)
    if not path.is_file():
        names = ", ".join(shipped_policies()) or "none"
        raise PolicyError(
            f"no policy at {path}: pass the directory of an 'esper ppo train' run, or the "
            f"name of a policy that comes with Esper ({names})"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta_data = dict(payload["meta"])
        meta = PolicyMeta(
            task=str(meta_data["task"]),
            slot_ids=tuple(meta_data["slot_ids"]),
            blueprints=tuple(meta_data["blueprints"]),
            hidden=int(meta_data["hidden"]),
            observation_version=int(meta_data["observation_version"]),
        )
        fmt = payload["format"]
    except Exception as error:  # unpickling refused, truncated zip, missing keys...
        raise PolicyError(
            f"{path} is not a readable policy file ({type(error).__name__}): pass the "
            "policy.pt (or the directory) an 'esper ppo train' run wrote"
        ) from None
    if fmt != FORMAT or meta.observation_version != OBSERVATION_VERSION:
        raise PolicyError(
            f"{path} was built for observation layout v{meta.observation_version} (format "
            f"{fmt}); this Esper uses v{OBSERVATION_VERSION}: train a new policy"
        )
    if task is not None and task != meta.task:
        raise PolicyError(
            f"{path} was trained on task {meta.task!r}, not {task!r}: use --task {meta.task} "
            "or train a policy on this task"
        )
    if slot_ids is not None and tuple(slot_ids) != meta.slot_ids:
        raise PolicyError(
            f"{path} drives slots {' '.join(meta.slot_ids)}, this run has "
            f"{' '.join(slot_ids)}: use the policy's slots"
        )
    policy = meta.build()
    try:
        policy.load_state_dict(payload["weights"])
    except (RuntimeError, KeyError, TypeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PolicyError(f"{path}: weights do not fit the policy ({first})") from None
    return policy.eval(), meta


class PolicyController:
    """A trained policy deciding one action per epoch, as any `Controller`.

    Deterministic by default (the most likely action of each head); with a ``generator``
    it samples each action with it instead. Its LSTM state (and the generator's) carries
    over epochs and goes into run checkpoints.
    """

    def __init__(
        self,
        policy: RecurrentFactoredPolicy,
        meta: PolicyMeta,
        random_guess_loss: float,
        generator: torch.Generator | None = None,
    ) -> None:
        self.policy, self.meta = policy, meta
        self.random_guess_loss = random_guess_loss
        self.generator = generator
        self.state = policy.initial_state(1)
        self.started = False

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        obs = observation(signals, slots, self.meta.blueprints, self.random_guess_loss)
        masks = conditional_masks(slots, self.meta.blueprints)
        arrays = {key: np.asarray([value], dtype=bool) for key, value in masks.items()}
        with torch.no_grad():
            out = self.policy.act(
                torch.tensor([obs], dtype=torch.float32),
                self.state,
                ActionMasks.from_numpy(arrays, torch.device("cpu")),
                torch.tensor([0.0 if self.started else 1.0]),
                deterministic=self.generator is None,
                generator=self.generator,
            )
        self.state, self.started = out.state, True
        action, illegal = decode_action(out.action[0].tolist(), slots, self.meta.blueprints)
        value = float(out.value[0])
        return Decision(
            action, f"policy (value {value:+.2f})" + (f"; {illegal}" if illegal else "")
        )

    def state_dict(self) -> dict[str, Any]:
        state = {"state": [s.clone() for s in self.state], "started": self.started}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = tuple(state["state"])
        self.started = bool(state["started"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])


def build(context: ControllerContext) -> PolicyController:
    """The learned controller of a run: the policy ``config.policy`` names, checked to fit
    the run's task, slots and blueprints, and to be the file the run started with (its SHA-256,
    ``config.policy_sha256``); `PolicyError`, a ValueError naming the fix, if not."""
    config = context.config
    if config.policy is None:
        raise PolicyError("controller ppo needs a policy: pass --policy DIR")
    source = Path(config.policy)
    policy, meta = load_policy(source, config.task, context.slot_ids)
    blueprints = context.blueprints + context.width_blueprints
    if meta.blueprints != blueprints:
        raise PolicyError(
            f"{policy_file(source)} chooses among blueprints {' '.join(meta.blueprints)}, "
            f"this run's host has {' '.join(blueprints)}: train a policy for this host"
        )
    now = policy_digest(source)
    if config.policy_sha256 is not None and now != config.policy_sha256:
        raise PolicyError(
            f"{policy_file(source)} has changed since this run started (SHA-256 "
            f"{config.policy_sha256[:12]}..., now {(now or 'unreadable')[:12]}...): a run "
            "continues only with its own policy; put that file back, or start a new run "
            "with --out"
        )
    generator = None
    if config.policy_sampling:
        generator = torch.Generator().manual_seed(config.episode.seed)
    return PolicyController(policy, meta, context.random_guess_loss, generator)
