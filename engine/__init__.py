"""conquest-run: declarative, audited jobs for Conquest-style DICOM archives."""

from .archive import Archive, SeriesInfo
from .errors import ConquestRunError
from .indexer import BadFile, IndexResult
from .store import StoredFile, StoreResult

__version__ = "0.1.0"

__all__ = ["Archive", "BadFile", "ConquestRunError", "IndexResult", "SeriesInfo", "StoredFile",
           "StoreResult", "__version__"]
