"""Controllers: who decides, epoch by epoch, when, where and what to grow.

`CONTROLLERS` holds every controller a run can name (`esper.controller.registry`).
"""

from esper.controller.heuristic import HeuristicController
from esper.controller.registry import (
    CONTROLLERS,
    ControllerContext,
    ControllerSpec,
    build_controller,
    get_controller,
)
from esper.controller.schedule import ScheduleController
from esper.controller.static import StaticController

__all__ = [
    "CONTROLLERS",
    "ControllerContext",
    "ControllerSpec",
    "HeuristicController",
    "ScheduleController",
    "StaticController",
    "build_controller",
    "get_controller",
]
