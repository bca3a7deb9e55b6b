"""MorphogenesisEnv: Gymnasium's checker, the spaces and masks, illegal actions applied as
WAIT, the same episode as the runner's, and sb3-contrib's MaskablePPO as a client."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import esper.rl
from esper.config import to_dict
from esper.controller import HeuristicController
from esper.controller.features import BLENDS, observation_names, observation_size
from esper.lifecycle import BlendAlgorithm, LifecycleOp
from esper.rl.env import ENV_ID, MorphogenesisEnv
from esper.training.episode import run_episode

SHORT: dict[str, Any] = {"task": "digits", "epochs": 6, "max_batches": 3}
WAIT, GERMINATE, FOSSILIZE, CULL = (int(op) for op in LifecycleOp)


@pytest.fixture(scope="module")
def env() -> MorphogenesisEnv:
    return MorphogenesisEnv(**SHORT)


def test_gymnasium_checker_passes(env: MorphogenesisEnv) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from the checker either
        check_env(env, skip_render_check=True)


def test_registered_under_its_id_with_the_task_as_a_keyword() -> None:
    assert esper.rl is not None and ENV_ID == "Esper/Morphogenesis-v0"
    made = gym.make(ENV_ID, **SHORT)
    assert isinstance(made.unwrapped, MorphogenesisEnv)
    assert made.unwrapped.config.task == "digits"
    assert made.unwrapped.config.episode.epochs == 6


def test_spaces_and_the_documented_layout(env: MorphogenesisEnv) -> None:
    slots, blueprints = len(env.slot_ids), len(env.blueprints)
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    assert env.action_space.nvec.tolist() == [4, slots, blueprints, 3]
    assert env.observation_space.shape == (observation_size(slots, blueprints),)
    assert len(observation_names(env.slot_ids, env.blueprints)) == env.observation_space.shape[0]
    obs, info = env.reset(seed=5)
    assert env.observation_space.contains(obs)
    masks = info["masks"]
    assert masks["op"].tolist() == [True, True, False, False]  # only WAIT or GERMINATE
    assert masks["slot"].shape == (4, slots) and not masks["slot"][WAIT].any()
    assert masks["slot"][GERMINATE].all() and not masks["slot"][CULL].any()
    assert masks["blueprint"].shape == (slots, blueprints) and masks["blueprint"].all()
    # Layout v2: depth blueprints, then width ones (every digits block can widen), and a
    # width seed never blends gated.
    assert env.blueprints[-3:] == ("width_25", "width_50", "width_100")
    gated = [blend.value for blend in BLENDS].index("gated")
    assert masks["blend"].shape == (blueprints, 3)
    assert masks["blend"][:-3].all() and not masks["blend"][-3:, gated].any()
    names = observation_names(env.slot_ids, env.blueprints)
    can_widen = [obs[names.index(f"{sid}.can_widen")] for sid in env.slot_ids]
    units = [obs[names.index(f"{sid}.width_units")] for sid in env.slot_ids]
    assert can_widen == [1.0] * slots
    assert units == sorted(units) and units[0] < np.log(2) < units[-1]  # 2, 4, 8 channels
    assert env.action_masks().tolist() == [True, True, False, False] + [True] * (
        slots + blueprints + 3
    )


def _run(
    env: MorphogenesisEnv, actions: dict[int, list[int]], seed: int = 1
) -> list[dict[str, Any]]:
    env.reset(seed=seed)
    infos, done = [], False
    while not done:
        epoch = env.runner.epoch if env.runner else 0
        action = actions.get(epoch, [WAIT, 0, 0, 0])
        _, reward, terminated, truncated, info = env.step(np.array(action))
        info["reward"] = reward
        infos.append(info)
        done = terminated or truncated
    return infos


def test_an_illegal_action_is_applied_as_wait_and_info_says_so(env: MorphogenesisEnv) -> None:
    gated, width = BLENDS.index(BlendAlgorithm.GATED), env.blueprints.index("width_50")
    infos = _run(
        env,
        {
            1: [CULL, 0, 0, 0],
            2: [GERMINATE, 2, 1, 0],
            3: [GERMINATE, 2, 0, 0],
            4: [GERMINATE, 0, width, gated],
        },
    )
    assert infos[0]["action"] == "WAIT" and "CULL is not legal in r0c0" in infos[0]["illegal"]
    assert infos[1]["action"] == "GERMINATE r0c2 conv_heavy linear" and not infos[1]["illegal"]
    assert infos[2]["action"] == "WAIT" and "GERMINATE is not legal in r0c2" in infos[2]["illegal"]
    assert infos[3]["action"] == "WAIT" and "width_50 cannot blend gated" in infos[3]["illegal"]
    record = infos[1]["record"]
    assert record["epoch"] == 2 and record["outcome"] == "applied"
    assert record["decision"]["action"]["op"] == GERMINATE


def test_the_episode_is_the_runners_and_terminates_on_the_last_epoch(
    env: MorphogenesisEnv,
) -> None:
    infos = _run(env, {2: [GERMINATE, 1, 0, 0]})
    assert len(infos) == 5  # epochs 2..6 are reached by an action
    assert [i["epoch"] for i in infos] == [2, 3, 4, 5, 6]
    records = [i["record"] for i in infos] + [infos[-1]["final"]]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    # Every reward is the run's own: the reward recorded for the epoch it reached.
    rewards = [i["reward"] for i in infos]
    recorded = [sum(r["reward"].values()) for r in records[1:]]
    assert rewards == pytest.approx(recorded)
    assert infos[-1]["final_accuracy"] == records[-1]["val"]["accuracy"]
    # The same seed and actions give the same episode.
    again = _run(env, {2: [GERMINATE, 1, 0, 0]})
    assert [i["reward"] for i in again] == rewards


def test_the_paired_baseline_only_moves_the_terminal_reward() -> None:
    plain = _run(MorphogenesisEnv(**SHORT), {})
    paired_env = MorphogenesisEnv(paired_baseline=True, **SHORT)
    paired = _run(paired_env, {})
    assert [i["reward"] for i in paired[:-1]] == pytest.approx([i["reward"] for i in plain[:-1]])
    # A static episode, paired with the static run on its own seed: it bought nothing.
    static = paired_env.static_accuracy(1)
    assert static == plain[-1]["final_accuracy"]
    assert paired[-1]["reward"] == pytest.approx(plain[-1]["reward"] - 0.1 * static)


def test_maskable_ppo_from_sb3_contrib_trains_on_it() -> None:
    sb3 = pytest.importorskip("sb3_contrib")
    from sb3_contrib.common.wrappers import ActionMasker

    inner = MorphogenesisEnv(**SHORT)
    env = ActionMasker(inner, lambda e: inner.action_masks())
    model = sb3.MaskablePPO("MlpPolicy", env, n_steps=10, batch_size=10, seed=0, verbose=0)
    model.learn(total_timesteps=20)
    obs, _ = env.reset(seed=2)
    action, _ = model.predict(obs, action_masks=inner.action_masks())
    assert env.action_space.contains(action)


def test_following_the_demonstrations_replays_the_heuristics_run() -> None:
    # Digits widens from epoch 8, too late for 12 epochs; "both" also deepens.
    early = {"heuristic": {"start_epoch": 1, "growth": "both"}}
    env = MorphogenesisEnv(early, demonstrator=True, task="digits", epochs=12, max_batches=3)
    _, info = env.reset(seed=3)
    taken, done = [], False
    while not done:
        _, _, done, _, info = env.step(info["demonstration"])
        assert not info["illegal"]  # the heuristic only does what is legal
        taken.append(info["record"]["decision"]["action"])
    grown = {a["blueprint"] for a in taken if a["op"] == GERMINATE}
    assert grown & set(env.width_blueprints) and grown & set(env.depth_blueprints), grown
    heuristic = HeuristicController(
        env.depth_blueprints,
        env.config.heuristic,
        env.config.episode.lifecycle,
        env.width_blueprints,
    )
    run = run_episode(env._runner(3), heuristic)
    # The same decisions (the env closes the last epoch with WAIT), the same accuracy.
    assert taken == [to_dict(r.action) for r in run.history[:-1]]
    assert info["final_accuracy"] == run.final_accuracy


def test_a_run_the_governor_stops_ends_the_episode_and_pays_like_an_end() -> None:
    # Every epoch fails the governor's check (a loss limit no model meets), so the third
    # rollback in a row stops the run. The step into the stop is terminal and pays the
    # shaping back: over the episode it sums to -Phi(first state), as in any episode,
    # and the final accuracy at the stop is paid for (a stop is never a shortcut).
    failing = {"episode": {"governor": {"loss_multiplier": 1e-6}}}
    env = MorphogenesisEnv(config=failing, **SHORT)
    env.reset(seed=2)
    wait = np.zeros(4, dtype=np.int64)
    steps = [env.step(wait) for _ in range(2)]
    (_, _, ended, _, first), (_, reward, stopped, truncated, last) = steps
    assert not ended and stopped and not truncated
    assert "rolled back 3 epochs in a row" in last["stopped"]
    terms = [info["reward_terms"] for _, _, _, _, info in steps]
    start = first["record"]["val"]["accuracy"]  # the state the first action was taken in
    weights = env.config.episode.reward
    assert sum(t["shaping"] for t in terms) == pytest.approx(-weights.shaping_weight * start)
    assert terms[-1]["terminal"] == pytest.approx(weights.accuracy_weight * last["final_accuracy"])
    assert reward == pytest.approx(sum(terms[-1].values()))
    assert last["summary"]["final_accuracy"] == last["final_accuracy"]
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(wait)
