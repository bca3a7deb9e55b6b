"""The learned controller: its Gymnasium environment, masked distributions, policies,
rollouts and PPO.

Import from the submodules: `esper.rl.env`, `.distributions`, `.policy`, `.buffer`,
`.advantages`, `.rollout`, `.ppo`. Importing this package registers the environment
as ``Esper/Morphogenesis-v0``.
"""

import gymnasium

__all__: list[str] = []

if "Esper/Morphogenesis-v0" not in gymnasium.registry:
    gymnasium.register(id="Esper/Morphogenesis-v0", entry_point="esper.rl.env:MorphogenesisEnv")
