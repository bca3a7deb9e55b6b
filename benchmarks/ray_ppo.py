"""PPO rollouts with the environments in Ray actors: episodes per minute with 1 and 2
actors, against 1 and 2 local worker processes, and what a step costs in transport.

Run by hand on a quiet machine, e.g.::

    .venv/bin/python -m benchmarks.ray_ppo --task digits --envs 4 --rounds 3

Four pools of the same ``--envs`` environments: 1 and 2 local worker processes
(`EnvPool`) and 1 and 2 Ray actors (`RayEnvPool`, on a Ray this process starts, loopback
only). Round by round each collects ``--envs`` whole episodes (`RolloutCollector`, the
policy acting in this process), so all four see the same machine; pool start-up and a
first warm-up round are excluded. Then transport alone: steps of environments that do
no work but answer with a real step's observation, masks and info, through 2 workers and
2 actors; the bytes one environment's step sends back, and the policy's size (what
acting in the actors would have to ship each update).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import pickle
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from benchmarks.common import write_result
from esper.config import to_dict
from esper.rl.agent import PolicyMeta
from esper.rl.env import MorphogenesisEnv, env_config
from esper.rl.ray_envs import RayEnvPool
from esper.rl.rollout import RolloutCollector
from esper.rl.workers import EnvPool


class EchoEnv(gym.Env[np.ndarray, np.ndarray]):
    """Does no work: every reset and step answers with a recorded real one."""

    def __init__(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        self.obs, self.info = obs, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return self.obs.copy(), dict(self.info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self.obs.copy(), 0.0, False, False, dict(self.info)


def _rates(pools: dict[str, Any], policy: Any, envs: int, steps: int, rounds: int) -> Any:
    """Episodes per minute of each pool, round by round; a first round, not counted,
    warms every process up (imports, first calls)."""
    rates: dict[str, list[float]] = {name: [] for name in pools}
    for r in range(rounds + 1):
        for name, pool in pools.items():  # interleaved: all see the same machine
            seeds = itertools.count(700 + r * envs)  # a stopped run: the next seed
            collector = RolloutCollector(pool, policy, torch.Generator().manual_seed(r))
            start = time.perf_counter()
            collector.collect(steps, seeds, restart=True)
            if r:
                rates[name].append(envs / (time.perf_counter() - start) * 60)
    return rates


def _step_ms(pool: Any, envs: int, action_size: int, steps: int = 50) -> float:
    pool.reset(list(range(envs)))
    actions = np.zeros((envs, action_size), dtype=np.int64)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        pool.step(actions)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--envs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides: dict[str, Any] = {"epochs": args.epochs} if args.epochs else {}
    overrides |= {"data_dir": args.data_dir} if args.data_dir else {}
    config = env_config(None, task=args.task, **overrides)
    probe = MorphogenesisEnv(config=config)
    meta = PolicyMeta(config.task, tuple(probe.slot_ids), tuple(probe.blueprints), 128)
    torch.manual_seed(0)
    policy = meta.build().eval()
    steps = config.episode.epochs - 1
    obs, _ = probe.reset(seed=0)
    action = np.zeros(4, dtype=np.int64)  # (op, slot, blueprint, blend): WAIT
    reply = probe.step(action)
    reply_bytes = len(pickle.dumps(reply))
    policy_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on the loopback interface
    import ray  # after the setting above, which ray reads when imported

    # Three actors live at once (the 1-actor pool and the 2-actor one) but only one pool
    # works at a time: three logical CPUs on a 2-core machine oversubscribe nothing.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    factory = functools.partial(MorphogenesisEnv, config=to_dict(config))
    echo = functools.partial(EchoEnv, obs=reply[0], info=reply[4])
    pools: dict[str, Any] = {}
    try:
        for name, make, workers in (
            ("local, 1 worker", EnvPool, 1),
            ("Ray, 1 actor", RayEnvPool, 1),
            ("local, 2 workers", EnvPool, 2),
            ("Ray, 2 actors", RayEnvPool, 2),
        ):
            pools[name] = make(factory, args.envs, workers)
        rates = _rates(pools, policy, args.envs, steps, args.rounds)
        for pool in pools.values():
            pool.close()
        pools = {}
        transport = {}
        for name, make in (("local, 2 workers", EnvPool), ("Ray, 2 actors", RayEnvPool)):
            with make(echo, args.envs, 2) as pool:
                transport[name] = _step_ms(pool, args.envs, len(action))
    finally:
        for pool in pools.values():
            pool.close()
        ray.shutdown()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    rows = [f"| {name} | {medians[name]:.1f} |" for name in rates]
    table = "\n".join(
        [
            f"### PPO rollouts on {args.task}: {args.envs} episodes of {config.episode.epochs} "
            f"epochs per rollout, median of {args.rounds} rounds",
            "",
            "| environments in | episodes / minute |",
            "|---|---|",
            *rows,
            "",
            f"Ray, 2 actors against 1: {medians['Ray, 2 actors'] / medians['Ray, 1 actor']:.2f}x;"
            f" Ray against local, 2 each: "
            f"{medians['Ray, 2 actors'] / medians['local, 2 workers']:.3f}.",
            "",
            f"Transport alone (environments that do no work), one step of {args.envs} "
            f"environments: {transport['local, 2 workers']:.2f} ms through 2 local workers, "
            f"{transport['Ray, 2 actors']:.2f} ms through 2 Ray actors. One environment's "
            f"step answer: {reply_bytes:,} bytes (observation of {obs.size} floats, masks, "
            f"info); the policy: {policy_bytes:,} bytes of weights.",
        ]
    )
    payload = {
        "episodes_per_minute": rates,
        "medians": medians,
        "transport_ms": transport,
        "step_reply_bytes": reply_bytes,
        "policy_bytes": policy_bytes,
        "envs": args.envs,
        "epochs": config.episode.epochs,
    }
    path = write_result(f"ray-ppo-{args.task}", payload, table)
    print(path.read_text())


if __name__ == "__main__":
    main()
