"""Training: the one batch loop, optimizer ownership, signals, governor and episodes.

Import from the submodules: `esper.training.loop`, `.optim`, `.episode`, `.heuristic`,
`.tasks`, `.batches`, `.signals`, `.governor`, `.reward`.
"""

__all__: list[str] = []
