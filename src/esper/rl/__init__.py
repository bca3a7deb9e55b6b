"""The learned controller's agent: masked distributions, policies, rollouts and PPO.

Import from the submodules: `esper.rl.distributions`, `.policy`, `.buffer`,
`.advantages`, `.rollout`, `.ppo`.
"""

__all__: list[str] = []
