"""MorphogenesisEnv: a morphogenetic training run as a Gymnasium environment.

One episode is one run of a task: ``reset(seed=...)`` builds a fresh host (initial
weights and data order from the seed) and trains its first epoch; each ``step(action)``
applies the action to the epoch just measured, then trains and measures the next
(`EpisodeRunner`, the same per-epoch transaction every controller drives). After the last
epoch is measured the episode is ``terminated`` (an action after it would change
nothing: there is no epoch left to train).

* Observation: ``Box(float32)``, layout version `OBSERVATION_VERSION` of
  `esper.controller.features` (``observation_names`` names every index).
* Action: ``MultiDiscrete([4, slots, blueprints, 3])`` = (op, slot, blueprint, blend).
  The blueprints are the topology's depth blueprints, then its width blueprints (a width
  seed at a slot widens the block before it). A combination that is not legal now is
  applied as WAIT; ``info["illegal"]`` says why.
* Masks: ``info["masks"]`` holds the conditional masks of the next decision (numpy
  booleans: op ``[4]``, slot ``[4, slots]``, blueprint ``[slots, blueprints]``, blend
  ``[blueprints, 3]``); `action_masks` gives sb3-contrib's MaskablePPO its flat, independent-heads
  form.
* Reward: the run's own (`esper.training.reward`): final accuracy net of compute, with
  potential-based shaping; ``info["reward_terms"]`` holds its terms. With
  ``paired_baseline`` the terminal reward is paid relative to the static host's final
  accuracy on the same seed (computed once per seed): the same optimal policy, far less
  variance between seeds.
* A run the governor has to stop (a fault that rolling back does not fix) ends the
  episode early (``terminated``, ``info["stopped"]`` says why) and pays what an end
  pays: the shaping back and the final accuracy at the stop, net of compute.
* ``info["record"]`` is the applied epoch's `EpochRecord` as plain data.
* With ``demonstrator``, ``info["demonstration"]`` holds the action the rule-based
  heuristic (`HeuristicController`, the run config's settings) takes on the next
  decision, as an index array: demonstrations to clone a policy from. The heuristic
  sees every observation once, whatever the agent then does.

Registered as ``Esper/Morphogenesis-v0`` (``gymnasium.make("Esper/Morphogenesis-v0",
task="digits")`` after ``import esper.rl``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from esper.config import ConfigError, RunConfig, observing_every_seed, shortcuts, to_dict
from esper.contracts import Decision, SlotReport
from esper.controller import HeuristicController, StaticController
from esper.controller.features import (
    BLENDS,
    HIGH,
    OBSERVATION_VERSION,
    conditional_masks,
    decode_action,
    encode_action,
    observation,
    observation_size,
)
from esper.data import SplitData
from esper.lifecycle import FactoredAction, LifecycleOp
from esper.model.blueprints import GrowthKind, blueprint_names
from esper.rl.policy import flat_action_mask
from esper.training.builders import build_episode, build_model, load_data, task_options
from esper.training.episode import EpisodeRunner, Observation, run_episode
from esper.training.governor import GovernorStopError
from esper.training.ledger import describe_action
from esper.training.reward import RewardTerms
from esper.training.tasks import get_task, run_config

__all__ = ["ENV_ID", "MorphogenesisEnv", "env_config"]

ENV_ID = "Esper/Morphogenesis-v0"


def env_config(config: RunConfig | Mapping[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """A `RunConfig` for the environment: the one resolution every command uses
    (`esper.training.tasks.run_config`: the task's defaults, then ``config``, a RunConfig
    or its plain data, then ``overrides``, flat settings such as ``task``, ``epochs``,
    ``max_batches``, ``data_dir`` or any top-level field, `esper.config.shortcuts`). The
    learned controller observes every blended seed's contribution, so ``counterfactuals``
    is always 'live' (`observing_every_seed`)."""
    data = to_dict(config) if isinstance(config, RunConfig) else (config or {})
    if not isinstance(data, Mapping):
        raise ConfigError(f"run: expected a JSON object (a section), got {data!r}")
    return observing_every_seed(run_config(data, shortcuts(overrides)))


class MorphogenesisEnv(gym.Env[np.ndarray, np.ndarray]):
    """A run of ``task`` as an episode (see the module docstring).

    Args:
        config: a `RunConfig` (or its plain data) for everything but the seed, which
            ``reset`` sets.
        paired_baseline: pay the terminal reward relative to the static host's final
            accuracy on the same seed.
        demonstrator: put the heuristic's action for every decision in
            ``info["demonstration"]``.
        **overrides: shortcuts for fields of ``config`` (see `env_config`).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's contract)

    def __init__(
        self,
        config: RunConfig | dict[str, Any] | None = None,
        paired_baseline: bool = False,
        demonstrator: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.config = env_config(config, **overrides)
        self.task = get_task(self.config.task)
        self.split: SplitData = load_data(self.task, task_options(self.config))
        probe = build_model(self.task, self.split, self.config.slots, None, 1.0)
        self.slot_ids = probe.slot_ids
        self.depth_blueprints = tuple(blueprint_names(self.task.topology, GrowthKind.DEPTH))
        self.width_blueprints = tuple(blueprint_names(self.task.topology, GrowthKind.WIDTH))
        self.blueprints = self.depth_blueprints + self.width_blueprints
        """The blueprint head's choices: depth blueprints, then width ones."""
        self.paired_baseline = paired_baseline
        self.demonstrator = demonstrator
        self._heuristic: HeuristicController | None = None
        self._baselines: dict[int, float] = {}
        size = observation_size(len(self.slot_ids), len(self.blueprints))
        self.observation_space = gym.spaces.Box(-1.0, HIGH, (size,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(
            [len(LifecycleOp), len(self.slot_ids), len(self.blueprints), len(BLENDS)]
        )
        self.observation_version = OBSERVATION_VERSION
        self.runner: EpisodeRunner | None = None
        self.episode_seed = 0
        self._steps = self._illegal = 0
        self._rng = torch.get_rng_state()
        self._slots: tuple[SlotReport, ...] = ()
        self._masks: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.episode_seed = int(seed if seed is not None else self.np_random.integers(2**31))
        if self.paired_baseline:
            self.static_accuracy(self.episode_seed)  # before the episode: its own timing
        with torch.random.fork_rng(devices=[]):
            self.runner = self._runner(self.episode_seed)  # seeds torch's generator
            if self.demonstrator:
                self._heuristic = HeuristicController(
                    self.depth_blueprints,
                    self.config.heuristic,
                    self.config.episode.lifecycle,
                    self.width_blueprints,
                )
            self._steps = self._illegal = 0
            first = self.runner.observe()
            self._rng = torch.get_rng_state()
        info: dict[str, Any] = {"epoch": 1, "seed": self.episode_seed}
        return self._observe(first, info), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        runner = self.runner
        if runner is None or runner.done:
            raise RuntimeError("step() before reset(), or after the episode ended")
        with torch.random.fork_rng(devices=[]):
            # The episode draws from its own random stream (new seeds' initial weights),
            # so environments sharing a process do not shift each other's episodes.
            torch.set_rng_state(self._rng)
            result = self._step(runner, action)
            self._rng = torch.get_rng_state()
        return result

    def _step(
        self, runner: EpisodeRunner, action: Any
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        chosen, illegal = decode_action(np.asarray(action).tolist(), self._slots, self.blueprints)
        self._steps += 1
        self._illegal += illegal is not None
        reason = "agent" + (f"; {illegal}" if illegal else "")
        record = runner.apply(Decision(chosen, reason))
        info: dict[str, Any] = {
            "record": _plain(record),
            "illegal": illegal or "",
            "action": _describe(chosen),
        }
        try:
            following = runner.observe()
        except GovernorStopError:  # a persistent fault: the episode ends here
            return self._stopped(runner, info)
        reward = self._reward(following.reward)
        info["reward_terms"] = to_dict(following.reward)
        terminated = runner.epoch >= runner.config.epochs
        if terminated:
            last = runner.apply(Decision(FactoredAction.wait(), "the episode is over"))
            info["final"] = _plain(last)  # closes the final epoch's record
            info["final_accuracy"] = last.val.accuracy
            info["summary"] = self._summary()
        info["epoch"] = runner.epoch
        return self._observe(following, info), reward, terminated, False, info

    def _stopped(
        self, runner: EpisodeRunner, info: dict[str, Any]
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """The step into a governor stop: terminal, paying what any end pays (the shaping
        back, the final accuracy at the stop, the failed epoch's compute)."""
        stop = runner.stop
        assert stop is not None
        summary = {**self._summary(), "final_accuracy": stop.accuracy}
        info.update(
            stopped=stop.reason,
            masks=self._masks,
            epoch=runner.epoch,
            reward_terms=to_dict(stop.reward),
            final_accuracy=stop.accuracy,
            summary=summary,
        )
        return self._last_obs, self._reward(stop.reward), True, False, info

    def action_masks(self) -> np.ndarray:
        """sb3-contrib's MaskablePPO mask: the heads' masks concatenated (independent)."""
        return flat_action_mask(self._masks)

    # ------------------------------------------------------------ internals

    def _runner(self, seed: int) -> EpisodeRunner:
        return build_episode(self.config, self.split, seed=seed)

    def _observe(self, seen: Observation, info: dict[str, Any]) -> np.ndarray:
        """The observation of ``seen``; puts the next decision's masks (and, with a
        demonstrator, the heuristic's action) in ``info``."""
        assert self.runner is not None
        self._slots = seen.slots
        if self._heuristic is not None:
            chosen = self._heuristic.decide(seen.signals, seen.slots).action
            info["demonstration"] = np.asarray(
                encode_action(chosen, seen.slots, self.blueprints), dtype=np.int64
            )
        masks = conditional_masks(seen.slots, self.blueprints)
        self._masks = {key: np.asarray(value, dtype=bool) for key, value in masks.items()}
        info["masks"] = self._masks
        values = observation(
            seen.signals, seen.slots, self.blueprints, self.runner.data.random_guess_loss
        )
        self._last_obs = np.asarray(values, dtype=np.float32)
        return self._last_obs

    def _summary(self) -> dict[str, Any]:
        """The episode's result as plain data (no wall time), with how many of the
        agent's actions were illegal."""
        assert self.runner is not None
        summary = self.runner.result().to_json()
        summary.pop("wall_seconds")
        summary["illegal_fraction"] = self._illegal / max(self._steps, 1)
        return summary

    def _reward(self, terms: RewardTerms) -> float:
        reward = terms.total
        if self.paired_baseline and terms.terminal != 0.0:
            static = self.static_accuracy(self.episode_seed)
            reward -= self.config.episode.reward.accuracy_weight * static
        return float(reward)

    def static_accuracy(self, seed: int) -> float:
        """Final accuracy of the static host on ``seed`` (trained once, then remembered)."""
        if seed not in self._baselines:
            with torch.random.fork_rng(devices=[]):
                result = run_episode(self._runner(seed), StaticController())
            self._baselines[seed] = result.final_accuracy
        return self._baselines[seed]


def _describe(action: FactoredAction) -> str:
    """The history's words for the action, with a germination's blend."""
    text = describe_action(action)
    return f"{text} {action.blend.value}" if action.op is LifecycleOp.GERMINATE else text


def _plain(record: Any) -> dict[str, Any]:
    """An `EpochRecord` as plain data, without its wall times (so that the same seed and
    actions give the same info, as Gymnasium's determinism check demands)."""
    plain: dict[str, Any] = to_dict(record)
    for wall_time in ("seconds", "wall_seconds"):
        plain.pop(wall_time, None)
    return plain
