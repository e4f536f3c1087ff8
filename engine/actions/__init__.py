"""Actions: one module per action, ``actions/<name>.py`` each exposing ``run(step, ctx) -> StepReport``.

A dry run calls the very same ``run`` with ``ctx.dry_run`` set: the action walks the plan and
reports what it would do, with every side effect (file write, database change, network traffic)
switched off at the one place it happens.
"""

from __future__ import annotations

__all__ = ["ActionContext", "get_action", "ACTION_NAMES"]

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..archive import Archive
    from ..audit import AuditLog
    from ..plan import Plan, PlanStep
    from ..report import StepReport

ACTION_NAMES = ("copy", "dump", "delete", "rebuild", "send", "retrieve")


@dataclass
class ActionContext:
    archive: "Archive"
    plan: "Plan"
    dry_run: bool = False
    force: bool = False                 # send: resend what the journal says was confirmed
    echo: bool = False                  # send in dry-run: do the C-ECHO (the only traffic)
    audit: "AuditLog | None" = None     # None in a dry run
    run_id: str = ""
    progress: bool = False              # show a progress bar (a terminal is attached)
    extra: dict[str, Any] = field(default_factory=dict)


def get_action(name: str) -> Callable[["PlanStep", ActionContext], "StepReport"]:
    """The ``run`` function of the named action (modules load lazily, keeping start-up lean)."""
    if name not in ACTION_NAMES:
        raise KeyError(name)
    module = importlib.import_module(f"{__name__}.{name}")
    return module.run
