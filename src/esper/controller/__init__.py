"""Controllers: who decides, epoch by epoch, when, where and what to grow."""

from esper.controller.heuristic import HeuristicController

__all__ = ["HeuristicController"]
