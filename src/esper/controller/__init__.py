"""Controllers: who decides, epoch by epoch, when, where and what to grow."""

from esper.controller.heuristic import HeuristicController
from esper.controller.static import StaticController

__all__ = ["HeuristicController", "StaticController"]
