"""What the learned controller's rollouts cost beyond the training they drive.

Run by hand on a quiet machine, e.g.::

    .venv/bin/python -m benchmarks.ppo_rollout --task digits --rounds 5

Two measurements, each a ratio taken in one run so machine noise cancels:

* **plumbing overhead**: the same episodes (same seeds, same actions) driven directly
  through `EpisodeRunner` by a scripted controller, and through `MorphogenesisEnv` in an
  `EnvPool` with the policy choosing (observation, masks, policy inference, IPC);
  interleaved, one worker, one thread. Target: <= 1.05.
* **parallel speed-up**: episodes per minute of `RolloutCollector.collect` with ``--envs``
  environments (4) in 1 worker process and in 2, each environment stepped as soon as its
  action is chosen. Target (2 cores): >= 1.85 (1.61 when they stepped in lockstep).

and, for scale, the machine's own ceiling for two processes (`ceiling`).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import multiprocessing
import statistics
import time

import numpy as np
import torch

from benchmarks.common import write_result
from esper.config import to_dict
from esper.controller.features import decode_action
from esper.lifecycle import FactoredAction
from esper.rl.agent import PolicyMeta
from esper.rl.env import MorphogenesisEnv, env_config
from esper.rl.policy import RecurrentFactoredPolicy
from esper.rl.rollout import RolloutCollector
from esper.rl.workers import EnvPool
from esper.training.episode import ScriptedController, run_episode


def _play(pool: EnvPool, policy: RecurrentFactoredPolicy, seed: int, steps: int) -> np.ndarray:
    """One episode of the policy through the pool, its sampling seeded by ``seed``: the
    same actions every time. Returns the actions, one row per step."""
    collector = RolloutCollector(pool, policy, torch.Generator().manual_seed(seed))
    buffer = collector.collect(steps, iter([seed]), restart=True).buffer
    return buffer.actions[:, 0].numpy().copy()


def _schedule(env: MorphogenesisEnv, actions: np.ndarray, seed: int) -> dict[int, FactoredAction]:
    """The decoded actions of an episode, replayed once through ``env`` in this process."""
    chosen: dict[int, FactoredAction] = {}
    env.reset(seed=seed)
    for t, action in enumerate(actions.tolist()):
        decoded, _ = decode_action(action, env._slots, env.blueprints)
        chosen[t + 1] = decoded
        env.step(np.array(action))
    return chosen


def plumbing(task: str, rounds: int, epochs: int | None) -> dict[str, float]:
    config = env_config(None, task=task, **({"epochs": epochs} if epochs else {}))
    env = MorphogenesisEnv(config=config)
    meta = PolicyMeta(config.task, tuple(env.slot_ids), tuple(env.blueprints), 128)
    torch.manual_seed(0)
    policy = meta.build().eval()
    steps = config.episode.epochs - 1
    direct, wrapped = [], []
    # One worker for every round. Before each timed pair, the episode is played once in
    # the worker and once in this process, untimed: both sides have then loaded the data
    # and counted the FLOPs of every architecture the episode reaches (a per-process
    # cache), so the ratio is the plumbing, not a first episode's set-up.
    with EnvPool(functools.partial(MorphogenesisEnv, config=to_dict(config)), 1) as pool:
        for r in range(rounds):
            seed = 500 + r
            actions = _play(pool, policy, seed, steps)
            schedule = _schedule(env, actions, seed)
            start = time.perf_counter()
            run_episode(env._runner(seed), ScriptedController(schedule))
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            again = _play(pool, policy, seed, steps)
            wrapped.append(time.perf_counter() - start)
            assert np.array_equal(again, actions), "the timed episode must be the same one"
    ratios = [w / d for w, d in zip(wrapped, direct, strict=True)]
    return {
        "direct_seconds": statistics.median(direct),
        "wrapped_seconds": statistics.median(wrapped),
        "overhead_ratio": statistics.median(ratios),
    }


def speedup(task: str, rounds: int, epochs: int | None, envs: int = 4) -> dict[str, float]:
    config = env_config(None, task=task, **({"epochs": epochs} if epochs else {}))
    probe = MorphogenesisEnv(config=config)
    meta = PolicyMeta(config.task, tuple(probe.slot_ids), tuple(probe.blueprints), 128)
    torch.manual_seed(0)
    policy = meta.build().eval()
    steps = config.episode.epochs - 1
    factory = functools.partial(MorphogenesisEnv, config=to_dict(config))
    rates: dict[int, list[float]] = {1: [], 2: []}
    pools = {w: EnvPool(factory, envs, w) for w in (1, 2)}
    try:
        for r in range(rounds):
            for workers, pool in pools.items():  # interleaved: both see the same machine
                seeds = itertools.count(700 + r * envs)  # a stopped run: the next seed
                start = time.perf_counter()
                RolloutCollector(pool, policy).collect(steps, seeds, restart=True)
                rates[workers].append(envs / (time.perf_counter() - start) * 60)
    finally:
        for pool in pools.values():
            pool.close()
    return {
        "episodes_per_minute_1": statistics.median(rates[1]),
        "episodes_per_minute_2": statistics.median(rates[2]),
        "speedup": statistics.median(b / a for a, b in zip(rates[1], rates[2], strict=True)),
    }


def _static_episode(task: str, epochs: int | None) -> float:
    """Seconds of one static episode of ``task`` in this process, one thread."""
    torch.set_num_threads(1)
    env = MorphogenesisEnv(
        config=env_config(None, task=task, **({"epochs": epochs} if epochs else {}))
    )
    run_episode(env._runner(0), ScriptedController({}))  # warm: data, FLOP counts
    start = time.perf_counter()
    run_episode(env._runner(1), ScriptedController({}))
    return time.perf_counter() - start


def ceiling(task: str, rounds: int, epochs: int | None) -> dict[str, float]:
    """What two processes can get from this machine: the same static episode run in one
    process alone, then in two processes at once; 2 x alone / together (2.0 on two
    free cores). The parallel speed-up above cannot exceed it."""
    context = multiprocessing.get_context("spawn")
    job = functools.partial(_static_episode, task, epochs)
    alone, together = [], []
    with context.Pool(2) as pool:
        for _ in range(rounds):
            alone.append(pool.apply(job))
            pair = [pool.apply_async(job) for _ in range(2)]
            together.append(statistics.mean(p.get() for p in pair))
    return {
        "alone_seconds": statistics.median(alone),
        "together_seconds": statistics.median(together),
        "ceiling": statistics.median(2 * a / t for a, t in zip(alone, together, strict=True)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--envs", type=int, default=4, help="environments of the speed-up")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    over = plumbing(args.task, args.rounds, args.epochs)
    fast = speedup(args.task, args.rounds, args.epochs, args.envs)
    machine = ceiling(args.task, args.rounds, args.epochs)
    table = "\n".join(
        [
            f"### Rollouts on {args.task} ({args.rounds} rounds, medians)",
            "",
            "| measurement | value | target |",
            "|---|---|---|",
            f"| episode through runner + scripted controller | {over['direct_seconds']:.2f} s | |",
            f"| same episode through env + pool + policy | {over['wrapped_seconds']:.2f} s | |",
            f"| plumbing overhead (ratio) | {over['overhead_ratio']:.3f} | <= 1.05 |",
            f"| episodes/min, {args.envs} envs in 1 worker "
            f"| {fast['episodes_per_minute_1']:.1f} | |",
            f"| episodes/min, {args.envs} envs in 2 workers "
            f"| {fast['episodes_per_minute_2']:.1f} | |",
            f"| speed-up of 2 workers (ratio) | {fast['speedup']:.2f} | >= 1.85 |",
            f"| the machine's ceiling: 2 x one episode alone / two at once "
            f"| {machine['ceiling']:.2f} | |",
        ]
    )
    payload = {**over, **fast, **machine, "rounds": args.rounds, "envs": args.envs}
    name = f"ppo-rollout-{args.task}" + ("" if args.envs == 4 else f"-envs{args.envs}")
    path = write_result(name, payload, table)
    print(path.read_text())


if __name__ == "__main__":
    main()
