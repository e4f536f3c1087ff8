"""A C-FIND / C-MOVE / C-GET identifier -> one parameterised SQL query over Conquest's tables.

Matching follows Conquest (and DICOM PS3.4 C.2.2.2) on the columns the archive's ``dicom.sql``
defines; every value reaches SQLite as a parameter, never as SQL text:

* universal matching: an empty value (or a lone ``*``) adds no condition, the key is returned;
* ``*`` and ``?`` wildcards (GLOB, case-sensitive; LIKE for person names);
* person names (PN) case-insensitive;
* date, time and date-time ranges ``a-b``, ``a-`` and ``-b``;
* UID lists split on ``\\`` (any of them); a ``\\`` list of other values matches any of them;
* a multi-valued column (``DT_MSTR``: ``CT\\PT``) matches when one of its values does;
  ModalitiesInStudy matches when one of the study's series has that modality.

Only the query level and the levels above it are searched; a requested key that no column of
those levels holds (nor a computed one) comes back empty.  The query level's own table drives
the query, so each patient, study or series is one row (one response).
"""

from __future__ import annotations

__all__ = ["LEVELS", "FindQuery", "QueryError", "find_query", "retrieve_query", "text_of"]

from dataclasses import dataclass
from typing import Any

from ..schema import Schema, Table

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
PATIENT_ROOT, STUDY_ROOT = "patient", "study"
_ALIAS = {"PATIENT": "p", "STUDY": "st", "SERIES": "se", "IMAGE": "im"}
_RANGE_VRS = {"DA", "TM", "DT"}
_LEVEL_TAG = 0x00080052
_CHARSET_TAG = 0x00080005
_RETRIEVE_AE_TAG = 0x00080054
_MODALITIES_IN_STUDY = 0x00080061
_MODALITY = 0x00080060
_SOP_CLASS = 0x00080016
_UNIQUE = {"PATIENT": 0x00100020, "STUDY": 0x0020000D, "SERIES": 0x0020000E,
           "IMAGE": 0x00080018}
# computed keys: tag -> (level, SQL over the level's alias; {p} {st} {se} {im} are tables)
_COUNTS = {
    0x00201200: ("PATIENT", "(SELECT count(*) FROM {st} x WHERE x.{st_link} = p.{p_key})"),
    0x00201202: ("PATIENT", "(SELECT count(*) FROM {se} x JOIN {st} y ON x.{se_link} = y.{st_key}"
                            " WHERE y.{st_link} = p.{p_key})"),
    0x00201204: ("PATIENT", "(SELECT count(*) FROM {im} x JOIN {se} y ON x.{im_link} = y.{se_key}"
                            " JOIN {st} z ON y.{se_link} = z.{st_key} WHERE z.{st_link} = p.{p_key})"),
    0x00201206: ("STUDY", "(SELECT count(*) FROM {se} x WHERE x.{se_link} = st.{st_key})"),
    0x00201208: ("STUDY", "(SELECT count(*) FROM {im} x JOIN {se} y ON x.{im_link} = y.{se_key}"
                          " WHERE y.{se_link} = st.{st_key})"),
    0x00201209: ("SERIES", "(SELECT count(*) FROM {im} x WHERE x.{im_link} = se.{se_key})"),
    _MODALITIES_IN_STUDY: ("STUDY", "(SELECT replace(group_concat(m), ',', '\\') FROM (SELECT "
                                    "DISTINCT x.{modality} AS m FROM {se} x WHERE x.{se_link} = "
                                    "st.{st_key} AND m IS NOT NULL ORDER BY m))"),
}


class QueryError(Exception):
    """The identifier cannot be answered (a bad or missing level, a refused retrieve)."""


@dataclass(frozen=True)
class FindQuery:
    level: str
    sql: str
    params: tuple[Any, ...]
    # each requested key: (tag, VR, index of its value in a result row, or None: empty)
    returns: tuple[tuple[int, str, int | None], ...]


def text_of(value: Any) -> str:
    """An identifier element's value as DICOM text (multi-values joined with ``\\``)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(text_of(v) for v in value)
    return str(value)


def _tables(schema: Schema) -> dict[str, Table]:
    return {"PATIENT": schema.patients, "STUDY": schema.studies, "SERIES": schema.series,
            "IMAGE": schema.images}


def _level_of(identifier: Any, root: str) -> str:
    raw = identifier.get("QueryRetrieveLevel", None) if _LEVEL_TAG in identifier else None
    level = text_of(raw).strip().upper()
    if level not in LEVELS:
        raise QueryError(f"QueryRetrieveLevel is {level or 'missing'!r}; "
                         f"expected one of {', '.join(LEVELS)}")
    if root == STUDY_ROOT and level == "PATIENT":
        raise QueryError("the Study Root model has no PATIENT level")
    return level


class _Builder:
    """The FROM clause (joined upwards as needed), conditions and parameters of one query."""

    def __init__(self, schema: Schema, level: str) -> None:
        self.schema = schema
        self.level = level
        self.tables = _tables(schema)
        self.levels = LEVELS[:LEVELS.index(level) + 1]       # the query level and above
        self.joined = {level}
        self.where: list[str] = []
        self.params: list[Any] = []
        self.columns: list[str] = []
        self.select_params: list[Any] = []     # values of ``?`` in the selected columns

    def column_for(self, tag: int) -> tuple[str, Any] | None:
        """The first column holding ``tag``, from the query level upwards: (alias.col, Column)."""
        for lv in reversed(self.levels):
            for col in self.tables[lv].columns:
                if col.tag == tag:
                    self._join_up_to(lv)
                    return f"{_ALIAS[lv]}.{col.name}", col
        return None

    def _join_up_to(self, target: str) -> None:
        for n in range(LEVELS.index(self.level), LEVELS.index(target), -1):
            self.joined.add(LEVELS[n - 1])

    def from_clause(self) -> str:
        lv = self.level
        parts = [f"{self.tables[lv].name} {_ALIAS[lv]}"]
        n = LEVELS.index(lv)
        while n > 0 and LEVELS[n - 1] in self.joined:
            child, parent = self.tables[LEVELS[n]], self.tables[LEVELS[n - 1]]
            parts.append(f"LEFT JOIN {parent.name} {_ALIAS[LEVELS[n - 1]]} ON "
                         f"{_ALIAS[LEVELS[n - 1]]}.{parent.key} = {_ALIAS[LEVELS[n]]}.{child.link}")
            n -= 1
        return " ".join(parts)

    def select(self, expr: str, *params: Any) -> int:
        self.columns.append(expr)
        self.select_params.extend(params)
        return len(self.columns) - 1

    def all_params(self) -> tuple[Any, ...]:
        return tuple(self.select_params) + tuple(self.params)

    def computed(self, tag: int) -> str:
        t = self.tables
        names = {"p": t["PATIENT"].name, "st": t["STUDY"].name, "se": t["SERIES"].name,
                 "im": t["IMAGE"].name}
        fill = {"p": names["p"], "st": names["st"], "se": names["se"], "im": names["im"],
                "p_key": t["PATIENT"].key, "st_key": t["STUDY"].key, "se_key": t["SERIES"].key,
                "st_link": t["STUDY"].link, "se_link": t["SERIES"].link,
                "im_link": t["IMAGE"].link, "modality": _column_name(t["SERIES"], _MODALITY)}
        return _COUNTS[tag][1].format(**fill)

    def sql(self) -> str:
        where = f" WHERE {' AND '.join(self.where)}" if self.where else ""
        return f"SELECT {', '.join(self.columns) or '1'} FROM {self.from_clause()}{where}"

    # -- matching -------------------------------------------------------------------------
    def match(self, expr: str, vr: str, multi: bool, value: str) -> None:
        if value in ("", "*"):
            return                                           # universal matching
        if vr == "UI":
            uids = [u.strip() for u in value.split("\\") if u.strip()]
            if uids:
                self.where.append(f"{expr} IN ({', '.join('?' * len(uids))})")
                self.params.extend(uids)
            return
        if vr in _RANGE_VRS and "-" in value and "\\" not in value:
            low, _, high = (v.strip() for v in value.partition("-"))
            if low:
                self.where.append(f"{expr} >= ?")
                self.params.append(low)
            if high:
                self.where.append(f"{expr} <= ?")
                self.params.append(high + ("\uffff" if vr != "DA" else ""))
            return
        values = value.split("\\") if vr != "PN" else [value]
        alternatives = [self._one(expr, vr, multi, v) for v in values if v not in ("",)]
        if len(alternatives) == 1:
            self.where.append(alternatives[0])
        elif alternatives:
            self.where.append("(" + " OR ".join(alternatives) + ")")

    def _one(self, expr: str, vr: str, multi: bool, value: str) -> str:
        wild = "*" in value or "?" in value
        if vr == "PN":
            if wild:
                self.params.append(_like(value))
                return f"{expr} LIKE ? ESCAPE '!'"
            self.params.append(value)
            return f"{expr} = ? COLLATE NOCASE"
        if multi:                   # any of the column's own backslash-separated values
            self.params.append("*\\" + (_glob(value) if wild else _glob_literal(value)) + "\\*")
            return f"('\\' || {expr} || '\\') GLOB ?"
        if wild:
            self.params.append(_glob(value))
            return f"{expr} GLOB ?"
        self.params.append(value)
        return f"{expr} = ?"

    def match_modalities(self, value: str) -> None:
        """ModalitiesInStudy: one of the study's series has (one of) the modality(ies)."""
        if value in ("", "*"):
            return
        series = self.tables["SERIES"]
        modality = _column_name(series, _MODALITY)
        if modality is None:
            return
        inner = _Builder(self.schema, "SERIES")
        inner.match(f"x.{modality}", "CS", False, value)
        if inner.where:
            self.where.append(f"EXISTS (SELECT 1 FROM {series.name} x WHERE x.{series.link} = "
                              f"st.{self.tables['STUDY'].key} AND {inner.where[0]})")
            self.params.extend(inner.params)


def _column_name(table: Table, tag: int) -> str | None:
    return next((c.name for c in table.columns if c.tag == tag), None)


def _glob_literal(value: str) -> str:
    return value.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]")


def _glob(value: str) -> str:
    """DICOM wildcards to a GLOB pattern: ``*`` and ``?`` kept, ``[`` made literal."""
    return value.replace("[", "[[]")


def _like(value: str) -> str:
    """DICOM wildcards to a LIKE pattern (escape ``!``): ``*`` -> ``%``, ``?`` -> ``_``."""
    out = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return out.replace("*", "%").replace("?", "_")


def find_query(identifier: Any, schema: Schema, root: str = STUDY_ROOT,
               retrieve_ae: str = "") -> FindQuery:
    """The query answering a C-FIND ``identifier`` (a pydicom Dataset)."""
    level = _level_of(identifier, root)
    b = _Builder(schema, level)
    levels = set(b.levels)
    returns: list[tuple[int, str, int | None]] = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag in (_LEVEL_TAG, _CHARSET_TAG) or elem.tag.group == 0x0002 or \
                elem.tag.element == 0:                  # group lengths
            continue
        vr = str(elem.VR)
        if vr == "SQ":
            returns.append((tag, vr, None))
            continue
        value = text_of(elem.value).strip()
        if tag in _COUNTS and _COUNTS[tag][0] == level:
            if tag == _MODALITIES_IN_STUDY:
                b.match_modalities(value)
            returns.append((tag, vr, b.select(b.computed(tag))))
            continue
        if tag == _RETRIEVE_AE_TAG and retrieve_ae:
            returns.append((tag, vr, b.select("?", retrieve_ae)))
            continue
        found = b.column_for(tag) if tag not in _COUNTS else None
        if found is None:
            returns.append((tag, vr, None))             # not in dicom.sql at these levels
            continue
        expr, col = found
        if _is_level_key_below(tag, levels):
            returns.append((tag, vr, None))
            continue
        b.match(expr, vr, col.dicom_type == "DT_MSTR", value)
        returns.append((tag, vr, b.select(expr)))
    return FindQuery(level, b.sql(), b.all_params(), tuple(returns))


def _is_level_key_below(tag: int, levels: set[str]) -> bool:
    return any(t == tag and lv not in levels for lv, t in _UNIQUE.items())


def retrieve_query(identifier: Any, schema: Schema, root: str = STUDY_ROOT) -> tuple[str, tuple]:
    """The instances a C-MOVE / C-GET ``identifier`` names: rows of (SOP instance, series,
    SOP class, ObjectFile, patient).  Only the unique keys of the level and those above it are
    matched; an identifier without any is refused (it would retrieve the whole archive)."""
    level = _level_of(identifier, root)
    b = _Builder(schema, "IMAGE")
    allowed = LEVELS[:LEVELS.index(level) + 1]
    any_key = False
    for lv in allowed:
        tag = _UNIQUE[lv]
        if tag not in identifier:
            continue
        value = text_of(identifier[tag].value).strip()
        found = b.column_for(tag)
        if found is None or value in ("", "*"):
            continue
        expr, col = found
        b.match(expr, "UI" if lv != "PATIENT" else "LO", False, value)
        any_key = True
    if not any_key:
        raise QueryError(f"a {level}-level retrieve needs a unique key "
                         f"({', '.join(_KEY_NAMES[lv] for lv in allowed)})")
    images = b.tables["IMAGE"]
    patient = b.schema.patient_column(images.name)
    for expr in (images.key, images.link, _column_name(images, _SOP_CLASS), "ObjectFile",
                 patient):
        b.select(f"im.{expr}" if expr else "NULL")
    return b.sql(), b.all_params()


_KEY_NAMES = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
              "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
