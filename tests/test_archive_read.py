"""Header reading: Conquest's own rows for two real CT files, and pydicom's test files."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.multival import MultiValue

from conquest_run import Archive
from conquest_run.dicomread import ReadSpec, read_header
from conquest_run.errors import DicomFileError
from conquest_run.schema import load_schema

from conftest import PYDICOM_FILES, pydicom_file

REPO = Path(__file__).resolve().parents[1]
TABLES = ("DICOMPatients", "DICOMStudies", "DICOMSeries", "DICOMImages")


def conquest_reference_db(reference_dir: Path) -> sqlite3.Connection:
    """The rows a real Conquest server stored, loaded from its sqlite3 .dump."""
    conn = sqlite3.connect(":memory:")
    conn.executescript((reference_dir / "conquest" / "sample_rows.sqlite.sql").read_text())
    return conn


def test_reference_ct_rows_cell_for_cell(reference_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(reference_dir / "conquest" / "data", data)
    before = int(time.time())
    archive = Archive(data, tmp_path / "conquest.db")
    result = archive.rebuild()
    assert result.indexed == 2 and not result.bad
    expected = conquest_reference_db(reference_dir)
    with archive.connect_readonly() as ours:
        for table in TABLES:
            cols = [r[1] for r in expected.execute(f"PRAGMA table_info({table})")]
            assert [r[1] for r in ours.execute(f"PRAGMA table_info({table})")] == cols
            at = cols.index("AccessTime")
            want = sorted(expected.execute(f"SELECT * FROM {table}").fetchall())
            got = sorted(ours.execute(f"SELECT * FROM {table}").fetchall())
            assert len(got) == len(want) > 0
            for g, w in zip(got, want):
                # AccessTime is the time of indexing: an int epoch, the rest identical
                assert isinstance(g[at], int) and before <= g[at] <= int(time.time()) + 1
                assert g[:at] + g[at + 1:] == w[:at] + w[at + 1:], table
                assert type(g[at]) is type(w[at])


def _expected_text(elem) -> str | None:
    """What Conquest stores for an element, computed from pydicom's converted value."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_pydicom_test_files_values(name):
    schema = load_schema(None)
    spec = ReadSpec.from_schema(schema)
    path = pydicom_file(name)
    record = read_header(path, name, spec)
    ds = pydicom.dcmread(path, force=True)
    for (table, cols), row in zip(spec.levels, record.rows):
        names = [c.name for c in schema.tables[table].columns if c.tag is not None]
        for (tag, dtype, length), col, got in zip(cols, names, row):
            elem = ds.get(tag)
            if elem is None or elem.VR == "SQ":
                assert got is None, (table, col)
                continue
            want = _expected_text(elem)
            if want is None:
                assert got is None, (table, col)
            elif elem.VR in ("IS", "DS"):
                assert [float(v) for v in got.split("\\")] == [
                    float(v) for v in want.split("\\")], (table, col)
            elif elem.VR in ("US", "UL", "SS", "SL"):
                assert got == want, (table, col)
            else:
                assert got == want[:length].rstrip(" "), (table, col)
    assert record.sop_uid == ds.SOPInstanceUID
    assert record.modality == ds.Modality
    assert record.extras["FileSize"] == path.stat().st_size
    import hashlib
    assert record.extras["hash"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_rt_extras_of_pydicom_files():
    spec = ReadSpec.from_schema(load_schema(None))
    plan_ds = pydicom.dcmread(pydicom_file("rtplan.dcm"))
    plan = read_header(pydicom_file("rtplan.dcm"), "p", spec).extras
    assert plan["Nfractions"] == sum(int(g.NumberOfFractionsPlanned)
                                     for g in plan_ds.FractionGroupSequence)
    assert plan["NumBeams"] == len(plan_ds.BeamSequence)
    assert plan["ElementList"] == "\\".join(b.BeamName for b in plan_ds.BeamSequence)
    ref = plan_ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    assert plan["RefStructSet"] == plan["ReferencedSOPUID"] == ref

    dose_ds = pydicom.dcmread(pydicom_file("rtdose.dcm"))
    dose = read_header(pydicom_file("rtdose.dcm"), "d", spec).extras
    want = dose_ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID
    assert dose["RefPlan"] == dose["ReferencedSOPUID"] == want

    ss_ds = pydicom.dcmread(pydicom_file("rtstruct.dcm"), force=True)
    ss = read_header(pydicom_file("rtstruct.dcm"), "s", spec).extras
    names = [r.ROIName for r in ss_ds.StructureSetROISequence]
    assert ss["ElementCount"] == len(names)
    assert ss["ElementList"] == "\\".join(names)
    frame = ss_ds.ReferencedFrameOfReferenceSequence[0]
    assert ss["UniqueFOR_UID"] == frame.FrameOfReferenceUID
    assert ss["ReferencedSeriesUID"] == (
        frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)


def test_ion_and_brachy_plans_count_beams_and_channels(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from conquest_run.rtextras import rt_extras

    ion = Dataset()
    ion.IonBeamSequence = Sequence([Dataset(), Dataset()])
    for n, b in enumerate(ion.IonBeamSequence, 1):
        b.BeamNumber = n
        b.BeamName = f"P{n}"
    assert rt_extras(ion, "RTPLAN")["NumBeams"] == 2
    brachy = Dataset()
    setups = [Dataset(), Dataset()]
    setups[0].ChannelSequence = Sequence([Dataset(), Dataset(), Dataset()])
    setups[1].ChannelSequence = Sequence([Dataset()])
    brachy.ApplicationSetupSequence = Sequence(setups)
    g = Dataset()
    g.NumberOfFractionsPlanned = 4
    g2 = Dataset()
    g2.NumberOfFractionsPlanned = 2
    brachy.FractionGroupSequence = Sequence([g, g2])
    extras = rt_extras(brachy, "RTPLAN")
    assert extras["NumBeams"] == 4 and extras["Nfractions"] == 6
    assert rt_extras(Dataset(), "CT") == {}


@pytest.mark.filterwarnings("ignore:The value length")
def test_value_rules_on_a_crafted_file(tmp_path):
    """zero length -> NULL, only spaces -> '', trailing cut, leading kept, multi-values, long."""
    from conquest_run import synthetic
    patient = synthetic.PatientSpec("  P1  ", "NAME^ONLY")
    ds = synthetic.ct_series(patient, 1, "1.2.3", slices=1)[0]
    ds.StudyDescription = "   "
    ds.AccessionNumber = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.StationName = "X" * 14 + "  YYYY"       # StationNam is varchar(16): cut, then stripped
    ds.InstitutionName = "ABCD" + " " * 20 + "EFGH"   # Institutio is varchar(64): kept whole
    ds.ProtocolName = "AB" + " " * 70          # cut to 64, then the spaces go
    del ds.PatientBirthDate
    path = synthetic.write_dataset(ds, tmp_path / "f.dcm")
    spec = ReadSpec.from_schema(load_schema(None))
    rec = read_header(path, "f.dcm", spec)
    schema = load_schema(None)

    def value(table, column):
        names = [c.name for c in schema.tables[table].columns if c.tag is not None]
        level = [t for t, _ in spec.levels].index(table)
        return rec.rows[level][names.index(column)]
    assert value("DICOMPatients", "PatientID") == "  P1"
    assert value("DICOMPatients", "PatientBir") is None
    assert value("DICOMStudies", "StudyDescr") == ""
    assert value("DICOMStudies", "AccessionN") is None
    assert value("DICOMImages", "ImageType") == "DERIVED\\SECONDARY"
    assert value("DICOMSeries", "StationNam") == "X" * 14
    assert value("DICOMSeries", "Institutio") == "ABCD" + " " * 20 + "EFGH"
    assert value("DICOMSeries", "ProtocolNa") == "AB"
    assert value("DICOMImages", "QRows") == "16"


def test_binary_column_types(tmp_path):
    """DT_UINT16/UINT32/FL/FD columns hold the first value as Conquest prints it."""
    from conquest_run import synthetic
    from conquest_run.dicomsql import parse_dicom_sql
    from conquest_run.schema import Schema
    text = (REPO / "dicom.sql").read_text(encoding="latin-1").replace(
        '{ 0x0054, 0x0400, "ImageID", 16, SQL_C_CHAR, DT_STR },',
        '{ 0x0054, 0x0400, "ImageID", 16, SQL_C_CHAR, DT_STR },\n'
        '{ 0x0028, 0x0106, "SmallestPixel", 8, SQL_C_CHAR, DT_UINT16 },\n'
        '{ 0x0018, 0x9087, "BValue", 24, SQL_C_CHAR, DT_FD },\n'
        '{ 0x0018, 0x0088, "SpacingBetween", 24, SQL_C_CHAR, DT_STR },\n'
        '{ 0x0028, 0x0009, "FrameIncrement", 24, SQL_C_CHAR, DT_UINT32 },\n'
        '{ 0x0018, 0x1318, "dBdt", 24, SQL_C_CHAR, DT_FL },')
    schema = Schema(parse_dicom_sql(text))
    ds = synthetic.ct_series(synthetic.PatientSpec("B"), 1, "1.2.3", slices=1)[0]
    ds.SmallestImagePixelValue = 7
    ds.DiffusionBValue = 0.1
    ds.SpacingBetweenSlices = "2.5"
    ds.FrameIncrementPointer = [0x00181063, 0x00181065]   # AT: not a UINT32 in Conquest terms
    ds.add_new(0x00181318, "DS", "0.1")                   # a text VR stays text
    path = synthetic.write_dataset(ds, tmp_path / "b.dcm")
    spec = ReadSpec.from_schema(schema)
    rec = read_header(path, "b.dcm", spec)
    names = [c.name for c in schema.images.columns if c.tag is not None]
    row = dict(zip(names, rec.rows[3]))
    assert row["SmallestPi"] == "7"
    assert row["BValue"] == format(0.1, ".16g") == "0.1"
    assert row["SpacingBet"] == "2.5"
    assert row["FrameIncre"] == str(0x00181063 >> 16 | (0x00181063 & 0xFFFF) << 16)
    assert row["dBdt"] == "0.1"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"hello, this is a text file\n" * 20, "not DICOM"),
    (bytes(range(256)) * 4, "not DICOM"),
])
def test_bad_inputs_raise_with_reason(tmp_path, content, reason):
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomFileError, match=reason):
        read_header(path, "bad.dcm", ReadSpec.from_schema(load_schema(None)))


@pytest.mark.parametrize("cut", [200, 1000, 3000, 20000, -1])
def test_truncated_files_are_refused(tmp_path, cut):
    src = pydicom_file("CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(src[:cut])
    with pytest.raises(DicomFileError, match="truncated|unreadable|no SOP|not DICOM"):
        read_header(path, "cut.dcm", ReadSpec.from_schema(load_schema(None)))



def _read(path):
    return read_header(path, path.name, ReadSpec.from_schema(load_schema(None)))


def test_a_cut_between_elements_is_a_header_only_image(tmp_path):
    # CT_small cut at byte 2994 ends exactly after a complete element (3000 is 6 bytes into the
    # next element's header, refused above): nothing is cut inside an element, so it reads as a
    # complete header without pixel data (flagged, not refused)
    path = tmp_path / "cut.dcm"
    path.write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:2994])
    assert _read(path).extras["Flags"] == "no-pixel-data"


@pytest.mark.parametrize("name, flags", [
    ("CT_small.dcm", None),
    ("rtplan.dcm", "meta-mismatch"),                # meta's SOP instance UID is not the data set's
    ("SC_rgb_jpeg.dcm", "syntax-mismatch"),         # meta says explicit VR, the data is implicit
    ("ExplVR_LitEndNoMeta.dcm", "no-meta"),
    ("rtstruct.dcm", "no-meta"),
])
def test_files_that_lie_about_themselves_are_flagged(name, flags):
    record = _read(pydicom_file(name))
    assert record.extras["Flags"] == flags
    if name == "rtplan.dcm":      # the index keeps the data set's UID, not the meta's
        import pydicom
        ds = pydicom.dcmread(pydicom_file(name), stop_before_pixels=True)
        assert record.sop_uid == ds.SOPInstanceUID != ds.file_meta.MediaStorageSOPInstanceUID


def _encapsulated(tmp_path, fragments: list[bytes]):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\0" * 6 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "enc.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    good = b"".join(b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f for f in fragments)
    pixel = b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff"
    start = data.rindex(pixel) + len(pixel)          # the basic offset table item follows
    path.write_bytes(data[:start] + b"\xfe\xff\x00\xe0\0\0\0\0" + good
                     + b"\xfe\xff\xdd\xe0\0\0\0\0")
    return path


def test_odd_or_damaged_fragments_are_flagged(tmp_path):
    assert _read(_encapsulated(tmp_path, [b"\xff\xd8\xff\xd9"])).extras["Flags"] is None
    assert _read(_encapsulated(tmp_path, [b"\xff\xd8\x00\xff\xd9"])).extras["Flags"] == \
        "bad-fragments"
