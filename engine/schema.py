"""The database schema derived from a dicom.sql: one object that serves every other stage.

* ``Schema.ddl()``: the SQLite statements, byte for byte those a Conquest server (dgate) issues for
  the same dicom.sql (tables, 10-character columns, keys, Conquest's extra columns and indexes,
  UIDMODS), followed by conquest-run's own table of per-instance extras and the pyconquest views.
* ``Schema.sqlglot_schema()``: table -> {column: type} for checking job SQL.
* ``Schema.level(...)``: the columns and tags the indexer fills.
"""

from __future__ import annotations

__all__ = ["Schema", "Table", "Column", "EXTRAS_TABLE", "EXTRAS_COLUMNS", "load_schema",
           "default_dicom_sql_path"]

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .dicomsql import Level, parse_dicom_sql, read_dicom_sql


@dataclass(frozen=True)
class Column:
    name: str               # 10-character column name
    sql_type: str           # as in the DDL: "varchar(64)", "char(8)", "int"
    tag: int | None = None  # DICOM tag (group << 16 | element), None for extra columns
    dicom_type: str | None = None
    full_name: str | None = None


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: str | None = None      # primary key column
    link: str | None = None     # column linking to the parent level
    parent: str | None = None   # parent table name

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


# conquest-run's own per-instance table, kept apart so Conquest's tables stay pristine.  Column
# names follow pyconquest's where the meaning agrees (ElementCount ... hash), so pyconquest users'
# queries against v_seriesRT keep working.
EXTRAS_TABLE = "RTExtras"
EXTRAS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("SOPInstanc", "varchar(64) PRIMARY KEY not null"),
    ("Modality", "varchar(16)"),
    ("ElementCount", "int"),           # RTSTRUCT: number of ROIs; RTPLAN: number of beams
    ("ElementList", "text"),           # RTSTRUCT: ROI names; RTPLAN: beam names; joined with '\'
    ("Nfractions", "int"),             # RTPLAN: number of fractions planned (sum over groups)
    ("NumBeams", "int"),               # RTPLAN: beams (photon, ion) or brachy channels
    ("UniqueFOR_UID", "varchar(64)"),  # RTSTRUCT: referenced frame of reference
    ("ReferencedSeriesUID", "varchar(64)"),  # RTSTRUCT: the image series it contours
    ("ReferencedSOPUID", "varchar(64)"),     # RTPLAN: structure set; RTDOSE: plan
    ("RefStructSet", "varchar(64)"),   # RTPLAN: referenced structure set SOP instance UID
    ("RefPlan", "varchar(64)"),        # RTDOSE: referenced plan SOP instance UID
    ("hash", "varchar(64)"),           # SHA-256 of the file bytes, hex
    ("FileSize", "int"),               # bytes
    ("FileMtime", "int"),              # st_mtime_ns, for refresh
    ("Flags", "text"),                 # what the file says wrongly of itself; see dicomread
)

_CONQUEST_EXTRAS = ("AccessTime  int", "qTimeStamp   int", "qFlags       int",
                    "qSpare       varchar(64)")
_IMAGE_EXTRAS = ("ObjectFile  varchar(255)", "DeviceName  varchar(32)")
_UIDMODS = (
    "CREATE TABLE UIDMODS (MODTime int, OldUID varchar(64), MODType varchar(32), "
    "NewUID varchar(64), Stage varchar(32), Annotation varchar(64))",
    "CREATE INDEX mods_old ON UIDMODS (OldUID)",
    "CREATE INDEX mods_stage ON UIDMODS (Stage)",
    "CREATE INDEX mods_joint ON UIDMODS (OldUID,Stage)",
    "CREATE INDEX mods_back ON UIDMODS (NewUID,Stage)",
)

PATIENT_ID_TAG = 0x00100020


def default_dicom_sql_path() -> Path:
    """The built-in layout shipped inside the package (Conquest's revision 19)."""
    return Path(str(resources.files("conquest_run").joinpath("dicom.sql")))


class Schema:
    """Tables and columns of one dicom.sql, plus Conquest's and conquest-run's additions."""

    def __init__(self, levels: list[Level], source: str = "dicom.sql") -> None:
        self.source = source
        self.levels = {lv.section: lv for lv in levels}
        self.tables: dict[str, Table] = {}
        parents = {"Study": "Patient", "Series": "Study", "Image": "Series"}
        for lv in levels:
            cols = [Column(e.column, "char(8)" if e.sql_type == "SQL_C_DATE"
                           else f"varchar({e.length})", e.tag, e.dicom_type, e.name)
                    for e in lv.columns]
            cols += [Column(x.split()[0], x.split()[1]) for x in _CONQUEST_EXTRAS]
            if lv.section == "Image":
                cols += [Column(x.split()[0], x.split()[1]) for x in _IMAGE_EXTRAS]
            key = lv.columns[0].column if lv.section != "WorkList" else None
            link = lv.columns[-1].column if lv.section in parents else None
            parent = self.levels[parents[lv.section]].table if lv.section in parents else None
            self.tables[lv.table] = Table(lv.table, tuple(cols), key, link, parent)

    # -- levels ----------------------------------------------------------------------------
    @property
    def patients(self) -> Table:
        return self.tables["DICOMPatients"]

    @property
    def studies(self) -> Table:
        return self.tables["DICOMStudies"]

    @property
    def series(self) -> Table:
        return self.tables["DICOMSeries"]

    @property
    def images(self) -> Table:
        return self.tables["DICOMImages"]

    def patient_column(self, table: str) -> str | None:
        """The column of ``table`` holding the PatientID (SeriesPat, ImagePat, ...), if any."""
        for c in self.tables[table].columns:
            if c.tag == PATIENT_ID_TAG:
                return c.name
        return None

    # -- DDL -------------------------------------------------------------------------------
    def _create_table(self, level: Level) -> str:
        parts = []
        for i, e in enumerate(level.columns):
            if e.sql_type == "SQL_C_DATE":
                text = f"{e.column} char(8) "
            else:
                text = f"{e.column}  varchar({e.length})"
            if i == 0 and level.section != "WorkList":
                text += " PRIMARY KEY not null"
            parts.append(text)
        parts += _CONQUEST_EXTRAS
        if level.section == "Image":
            parts += _IMAGE_EXTRAS
        return f"CREATE TABLE {level.table} ({', '.join(parts)})"

    def conquest_ddl(self) -> list[str]:
        """The statements Conquest's dgate issues for this layout, in its order."""
        out: list[str] = []
        order = ["WorkList", "Patient", "Study", "Series", "Image"]
        for section in order:
            lv = self.levels.get(section)
            if lv is None:
                continue
            out.append(self._create_table(lv))
            table = self.tables[lv.table]
            if table.link is None:
                continue
            key, link = table.key, table.link
            lname = {"Study": "study", "Series": "series", "Image": "images"}[section]
            out.append(f"CREATE INDEX {lname}_lnk ON {lv.table} ({link})")
            if section == "Study":
                # Conquest names this index after PatientID but puts it on the column before the
                # link (PatientSex in the default layout); reproduced as it does it.
                cols = lv.columns
                before = cols[-2].column if len(cols) > 1 else link
                out.append(f"CREATE INDEX idx_patientid ON {lv.table} ({before})")
            else:
                pat = self.patient_column(lv.table)
                if pat is not None:
                    out.append(f"CREATE INDEX {lname}_pat ON {lv.table} ({pat})")
            out.append(f"CREATE INDEX idx_{link.lower()}_{key.lower()} ON {lv.table} ({link}, {key})")
        out += _UIDMODS
        return out

    def extras_ddl(self) -> list[str]:
        cols = ", ".join(f"{n} {t}" for n, t in EXTRAS_COLUMNS)
        return [f"CREATE TABLE IF NOT EXISTS {EXTRAS_TABLE} ({cols})"]

    def views_ddl(self) -> list[str]:
        """pyconquest's views: v_series (series + study), v_seriesRT (+ images + RT extras)."""
        se, st, im = self.series, self.studies, self.images
        extras = ", ".join(f"{EXTRAS_TABLE}.{n}" for n, _ in EXTRAS_COLUMNS[2:])
        return [
            f"CREATE VIEW IF NOT EXISTS v_series AS SELECT {se.name}.*, {st.name}.* "
            f"FROM {se.name} INNER JOIN {st.name} ON {se.name}.{se.link} = {st.name}.{st.key}",
            f"CREATE VIEW IF NOT EXISTS v_seriesRT AS SELECT {se.name}.*, {st.name}.*, "
            f"{im.name}.*, {extras} "
            f"FROM {se.name} INNER JOIN {st.name} ON {se.name}.{se.link} = {st.name}.{st.key} "
            f"INNER JOIN {im.name} ON {im.name}.{im.link} = {se.name}.{se.key} "
            f"LEFT JOIN {EXTRAS_TABLE} ON {EXTRAS_TABLE}.SOPInstanc = {im.name}.{im.key} "
            f"WHERE {se.name}.Modality IN ('RTSTRUCT', 'RTDOSE', 'RTPLAN')",
        ]

    def ddl(self) -> list[str]:
        return self.conquest_ddl() + self.extras_ddl() + self.views_ddl()

    # -- names for the SQL checker ---------------------------------------------------------
    def view_columns(self) -> dict[str, list[str]]:
        """Output column names of the views, as SQLite names them (duplicates get ':1')."""
        def dedupe(names: list[str]) -> list[str]:
            seen: dict[str, int] = {}
            out = []
            for n in names:
                k = n.lower()
                if k in seen:
                    out.append(f"{n}:{seen[k]}")
                    seen[k] += 1
                else:
                    seen[k] = 1
                    out.append(n)
            return out
        se, st, im = self.series, self.studies, self.images
        v1 = se.column_names() + st.column_names()
        v2 = v1 + im.column_names() + [n for n, _ in EXTRAS_COLUMNS[2:]]
        return {"v_series": dedupe(v1), "v_seriesRT": dedupe(v2)}

    def sqlglot_schema(self) -> dict[str, dict[str, str]]:
        """{table: {column: type}} for every table and view a job query may read."""
        out: dict[str, dict[str, str]] = {}
        for t in self.tables.values():
            out[t.name] = {c.name: ("INT" if c.sql_type == "int" else "TEXT") for c in t.columns}
        out["UIDMODS"] = {c: "TEXT" for c in
                          ("MODTime", "OldUID", "MODType", "NewUID", "Stage", "Annotation")}
        out[EXTRAS_TABLE] = {n: ("INT" if t == "int" else "TEXT") for n, t in EXTRAS_COLUMNS}
        for view, cols in self.view_columns().items():
            out[view] = {c: "TEXT" for c in cols if ":" not in c}
        return out


def load_schema(dicom_sql: str | Path | None = None) -> Schema:
    """Schema from a dicom.sql path, or the built-in layout when ``dicom_sql`` is None."""
    if dicom_sql is None:
        text = default_dicom_sql_path().read_text(encoding="latin-1")
        return Schema(parse_dicom_sql(text, "dicom.sql (built-in)"), "dicom.sql (built-in)")
    return Schema(read_dicom_sql(dicom_sql), str(dicom_sql))
