"""PPO on Gymnasium's CartPole-v1 with CleanRL's settings: is Esper's PPO correct?

Run by hand: ``.venv/bin/python -m benchmarks.ppo_cartpole [--seeds 1 2 3] [--steps 500000]``.

The same `esper.rl.ppo.ppo_iteration` that trains Esper's recurrent controller (the one
collector, `RolloutCollector`, over an `EnvPool`), here with `MLPPolicy` and no masks:
4 environments x 128 steps per rollout, episodes continuing across rollouts, CleanRL's
`PPOConfig` defaults and discount 0.99, 500k environment steps. The score per seed is the
mean return of the last 100 training episodes (CleanRL's ``ppo.py`` reports 490 +- 6 on
CartPole-v1 after 500k steps; the target is >= 475). Seeds run one after the other on
one torch thread.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time
from typing import Any

import gymnasium as gym
import torch

from benchmarks.common import mean_ci, write_result
from esper.config import to_dict
from esper.rl.policy import MLPPolicy
from esper.rl.ppo import PPOConfig, UpdateRecord, adam, ppo_iteration
from esper.rl.rollout import RolloutCollector
from esper.rl.workers import EnvPool

TARGET = 475.0
ENVS = 4
GAMMA = 0.99


def run_seed(seed: int, steps: int, config: PPOConfig) -> dict[str, Any]:
    """Train one seed; its last-100-episode return, wall time and throughput."""
    torch.manual_seed(seed)
    policy = MLPPolicy(4, 2)
    updates = max(1, steps // (config.num_steps * ENVS))
    # Episode seeds of their own per training seed; sampling and shuffles seeded by it.
    episode_seeds = itertools.count(seed * 1_000_000)
    records: list[UpdateRecord] = []
    start = time.perf_counter()
    with EnvPool(functools.partial(gym.make, "CartPole-v1"), ENVS) as pool:
        collector = RolloutCollector(pool, policy, torch.Generator().manual_seed(seed))
        optimizer = adam(policy, config)
        for update in range(updates):
            record = ppo_iteration(
                collector,
                optimizer,
                config,
                GAMMA,
                update=update,
                updates=updates,
                steps=config.num_steps,
                seeds=episode_seeds,
                restart=False,
            )
            records.append(record)
            if (update + 1) % 100 == 0:
                _progress(seed, collector.global_step, record)
    wall = time.perf_counter() - start
    episodes = [e for r in records for e in r.episodes]
    last = [e.episode_return for e in episodes[-100:]]
    env_steps = collector.global_step
    return {
        "seed": seed,
        "last100_mean_return": statistics.fmean(last) if last else float("nan"),
        "episodes": len(episodes),
        "env_steps": env_steps,
        "wall_seconds": wall,
        "steps_per_second": env_steps / wall,
        "rollout_seconds": sum(r.rollout_seconds for r in records),
        "update_seconds": sum(r.update_seconds for r in records),
        "final_approx_kl": records[-1].stats.approx_kl,
        "final_approx_kl_last": records[-1].stats.approx_kl_last,
    }


def _progress(seed: int, global_step: int, record: UpdateRecord) -> None:
    returns = [e.episode_return for e in record.episodes] or [float("nan")]
    print(
        f"seed {seed}  step {global_step:>7}  return {statistics.fmean(returns):6.1f}"
        f"  approx_kl {record.stats.approx_kl:.4f} (last {record.stats.approx_kl_last:.4f})"
        f"  clip {record.stats.clip_fraction:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=500_000, help="environment steps per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = PPOConfig()
    runs = [run_seed(seed, args.steps, config) for seed in args.seeds]

    scores = [r["last100_mean_return"] for r in runs]
    mean, half = mean_ci(scores)
    lines = [
        "| seed | mean return, last 100 episodes | episodes | env steps | wall (s) | steps/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['seed']} | {r['last100_mean_return']:.1f} | {r['episodes']} | {r['env_steps']:,}"
            f" | {r['wall_seconds']:.0f} | {r['steps_per_second']:,.0f} |"
        )
    verdict = "met" if min(scores) >= TARGET else "missed"
    lines += [
        "",
        f"Mean over {len(runs)} seed(s): {mean:.1f} +- {half:.1f} (95% t-interval); "
        f"target >= {TARGET:.0f} for every seed: {verdict}. CleanRL's ppo.py: 490 +- 6.",
        "",
        f"{ENVS} x CartPole-v1 (EnvPool, one process, every episode seeded), "
        f"{config.num_steps} steps per rollout, MLPPolicy (2 x 64 tanh), PPOConfig defaults: "
        f"lr {config.learning_rate} annealed to 0, {config.update_epochs} epochs x "
        f"{config.num_minibatches} minibatches, clip {config.clip_coef}, entropy "
        f"{config.ent_coef}, gamma {GAMMA}, "
        f"lambda {config.gae_lambda}. Returns are of the training (sampled) policy.",
    ]
    payload = {
        "config": to_dict(config),
        "gamma": GAMMA,
        "steps": args.steps,
        "envs": ENVS,
        "runs": runs,
    }
    payload["mean_return"], payload["ci95"] = mean, half
    path = write_result("ppo-cartpole", payload, "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
