"""``--validate`` of a copy layout template: each field a column of the index, a typo located
in the template (``file:line:col``) with a did-you-mean, as SQL columns are."""

from __future__ import annotations

__all__ = ["layout_errors"]

import re

from .errors import ConquestRunError, JobError


def layout_errors(job, step, schema) -> list[ConquestRunError]:
    """A copy layout template's fields against the index columns, located in the template."""
    from .actions.copy import check_layout
    from .jobs import _dotted, _get
    path = step.path + ("action", "copy", "layout")
    try:
        check_layout(step.options["layout"], schema)
    except JobError as exc:
        message = exc.message.removeprefix("copy: ")
        pos = job.locate(path)
        written = _get(job.source.data, path) if job.source is not None else None
        field_name = re.search(r"\{(\w+)\}", message)
        if isinstance(written, str) and field_name and \
                (at := written.find("{" + field_name.group(1))) >= 0:
            pos = job.source.locate_in_scalar(path, written, at + 1)
        return [JobError(f"{_dotted(path)}: {message}", file=job.path, line=pos.line,
                         column=pos.column)]
    return []
