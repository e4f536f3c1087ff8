"""conquest-run: declarative, audited jobs for Conquest-style DICOM archives."""

from .errors import ConquestRunError

__version__ = "0.1.0"

__all__ = ["ConquestRunError", "__version__"]
