"""What running job files takes besides the jobs: variable values (``--var``, ``--vars-file``),
and where relative paths are from (said in the plan header)."""

from __future__ import annotations

__all__ = ["given_vars", "unknown_vars", "paths_note"]

import os
import sys

from ..errors import ConquestRunError
from .shown import shown as _shown


def given_vars(args) -> dict:
    """The variable values of --vars-file then --var (the later wins)."""
    from ..jobvars import load_vars_file, parse_var_args
    given = load_vars_file(args.vars_file) if getattr(args, "vars_file", None) else {}
    given.update(parse_var_args(getattr(args, "var", None)))
    return given


def unknown_vars(given: dict, declared: set[str]) -> int:
    """0, or 2 after saying which ``--var`` no job declares (a typo, most likely)."""
    from ..jobvars import check_given
    try:
        check_given(given, declared)
    except ConquestRunError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    return 0


def paths_note(job) -> str:
    """Where the job's relative archive paths are from (the plan header says it)."""
    if job.project is not None:
        return (f"project file {_shown(job.project.path)}: relative paths are from "
                f"{_shown(job.project.root) if _shown(job.project.root) != '.' else os.curdir}")
    return "relative paths are from the working directory (no conquest-run.yml found)"
