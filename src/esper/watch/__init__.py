"""``esper watch``: a live terminal view of a run or a PPO training, read from its files.

`esper.watch.files` reads (torch-free, read-only); `esper.watch.app` shows (Textual,
the optional extra ``esper[watch]``).
"""

__all__: list[str] = []
