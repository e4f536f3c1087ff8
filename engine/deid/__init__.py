"""De-identified exports: DICOM PS3.15 Annex E (Table E.1-1 as data) on copy and send.

``profile.py`` (the table's actions and the options), ``uids.py`` (keyed pseudonyms),
``apply.py`` (one dataset), ``private.py`` (Table E.3.10-1: the safe private attributes),
``report.py`` (per-file actions, the mapping), ``export.py`` (one
step's export session).
"""

from .export import DeidExport, Refused, check_plan_secrets, open_export, write_file
from .profile import OPTIONS, DeidSettings, Profile, SecretError, check_settings

__all__ = ["DeidExport", "Refused", "check_plan_secrets", "open_export", "write_file",
           "OPTIONS", "DeidSettings", "Profile", "SecretError", "check_settings"]
