"""Deterministic synthetic DICOM: CT and MR series and a linked RT set, for samples, tests, bench.

Everything (UIDs, dates, names, pixel values) derives from a seed, so writing twice gives the
same bytes.  UIDs are ``2.25.<decimal of 128 bits of SHA-256(seed, parts)>``.

* ``ct_series`` / ``mr_series``: image datasets (small matrix by default, ``size=512`` for real
  CT size);
* ``rtstruct`` (references the CT series and its frame of reference), ``rtplan`` (references the
  structure set; beams and fractions), ``rtdose`` (references the plan);
* ``write_dataset`` writes one file (explicit VR little endian, fixed file meta);
* ``write_linked_rt_set`` / ``write_patient`` put files in ``data/<safe PatientID>/<SOP UID>.dcm``;
* ``generate_files`` writes N files in a CT/MR/RT mix (the benchmark's tree).
"""

from __future__ import annotations

__all__ = ["make_uid", "ct_series", "mr_series", "rtstruct", "rtplan", "rtdose",
           "write_dataset", "write_linked_rt_set", "write_patient", "generate_files",
           "LinkedRTSet", "PatientSpec"]

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from .store import safe_component, safe_patient_dir

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1389.1"   # fixed so files are reproducible
IMPLEMENTATION_NAME = "CONQUEST_RUN"
STUDY_DATE = "20240102"


def make_uid(seed: object, *parts: object) -> str:
    """A stable UID from a seed and any parts (``2.25.`` + 128-bit decimal, <= 44 chars)."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _base(sop_class: str, sop_uid: str, patient: "PatientSpec", study_uid: str,
          series_uid: str, modality: str, series_number: int, description: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = STUDY_DATE
    ds.SeriesDate = STUDY_DATE
    ds.StudyTime = "090000"
    ds.SeriesTime = f"09{series_number:02d}00"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "conquest-run synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = patient.study_description
    ds.SeriesDescription = description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    return ds


@dataclass(frozen=True)
class PatientSpec:
    patient_id: str
    name: str = "SYNTHETIC^PATIENT"
    birth_date: str = "19700101"
    sex: str = "O"
    study_description: str = "Synthetic RT study"


def _pixels(rows: int, cols: int, index: int) -> bytes:
    """Deterministic 16-bit pixels: a gradient shifted by the slice index."""
    row = struct.pack(f"<{cols}H", *(((c * 7 + index * 13) % 1024) for c in range(cols)))
    return b"".join(row[(r % cols) * 2:] + row[:(r % cols) * 2] for r in range(rows))


def _image_series(patient: PatientSpec, seed: object, study_uid: str, series_uid: str,
                  for_uid: str, count: int, size: int, modality: str, sop_class: str,
                  series_number: int, description: str) -> list[Dataset]:
    out = []
    spacing = 3.0
    for i in range(count):
        sop = make_uid(seed, series_uid, "image", i)
        ds = _base(sop_class, sop, patient, study_uid, series_uid, modality, series_number,
                   description)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ContentDate = STUDY_DATE
        ds.ContentTime = f"0900{i % 60:02d}"
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = i + 1
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        z = -spacing * (count - 1) / 2 + i * spacing
        ds.ImagePositionPatient = [-size / 2, -size / 2, round(z, 3)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = round(z, 3)
        ds.SliceThickness = spacing
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.PixelSpacing = [1, 1]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        if modality == "CT":
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.KVP = 120
        else:
            ds.EchoNumbers = 1
            ds.MagneticFieldStrength = 1.5
            ds.ReceiveCoilName = "HEAD"
        ds.PixelData = _pixels(size, size, i)
        out.append(ds)
    return out


def ct_series(patient: PatientSpec, seed: object, study_uid: str, *, slices: int = 3,
              size: int = 16, series_number: int = 1) -> list[Dataset]:
    series_uid = make_uid(seed, study_uid, "CT", series_number)
    for_uid = make_uid(seed, study_uid, "FOR")
    return _image_series(patient, seed, study_uid, series_uid, for_uid, slices, size, "CT",
                         CT_STORAGE, series_number, "Planning CT")


def mr_series(patient: PatientSpec, seed: object, study_uid: str, *, slices: int = 3,
              size: int = 16, series_number: int = 5) -> list[Dataset]:
    series_uid = make_uid(seed, study_uid, "MR", series_number)
    for_uid = make_uid(seed, study_uid, "FOR-MR")
    return _image_series(patient, seed, study_uid, series_uid, for_uid, slices, size, "MR",
                         MR_STORAGE, series_number, "T1 MR")


ROI_NAMES = ("BODY", "PTV", "CTV", "SpinalCord", "Lung_L", "Lung_R")


def rtstruct(images: list[Dataset], seed: object, *, rois: tuple[str, ...] = ROI_NAMES[:4],
             series_number: int = 2) -> Dataset:
    ref = images[0]
    patient = PatientSpec(str(ref.PatientID), str(ref.PatientName), ref.PatientBirthDate,
                          ref.PatientSex, ref.StudyDescription)
    series_uid = make_uid(seed, ref.StudyInstanceUID, "RTSTRUCT", series_number)
    ds = _base(RTSTRUCT_STORAGE, make_uid(seed, series_uid, "rtstruct"), patient,
               ref.StudyInstanceUID, series_uid, "RTSTRUCT", series_number, "Structures")
    ds.StructureSetLabel = "RTSTRUCT"
    ds.StructureSetDate = STUDY_DATE
    ds.StructureSetTime = "093000"
    ds.InstanceNumber = 1
    contour_images = Sequence()
    for img in images:
        item = Dataset()
        item.ReferencedSOPClassUID = img.SOPClassUID
        item.ReferencedSOPInstanceUID = img.SOPInstanceUID
        contour_images.append(item)
    series_item = Dataset()
    series_item.SeriesInstanceUID = ref.SeriesInstanceUID
    series_item.ContourImageSequence = contour_images
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_item.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame = Dataset()
    frame.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi_seq, contour_seq, obs_seq = Sequence(), Sequence(), Sequence()
    for n, name in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber = n
        roi.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_seq.append(roi)
        contours = Sequence()
        for img in images:
            z = float(img.ImagePositionPatient[2])
            r = 2.0 + n
            c = Dataset()
            ci = Dataset()
            ci.ReferencedSOPClassUID = img.SOPClassUID
            ci.ReferencedSOPInstanceUID = img.SOPInstanceUID
            c.ContourImageSequence = Sequence([ci])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = 4
            c.ContourData = [-r, -r, z, r, -r, z, r, r, z, -r, r, z]
            contours.append(c)
        rc = Dataset()
        rc.ROIDisplayColor = [255, (40 * n) % 256, 0]
        rc.ReferencedROINumber = n
        rc.ContourSequence = contours
        contour_seq.append(rc)
        obs = Dataset()
        obs.ObservationNumber = n
        obs.ReferencedROINumber = n
        obs.RTROIInterpretedType = "PTV" if name == "PTV" else "ORGAN"
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    return ds


def rtplan(structure_set: Dataset, seed: object, *, beams: int = 3, fractions: int = 25,
           series_number: int = 3, label: str = "PLAN1") -> Dataset:
    ref = structure_set
    patient = PatientSpec(str(ref.PatientID), str(ref.PatientName), ref.PatientBirthDate,
                          ref.PatientSex, ref.StudyDescription)
    series_uid = make_uid(seed, ref.StudyInstanceUID, "RTPLAN", series_number, label)
    ds = _base(RTPLAN_STORAGE, make_uid(seed, series_uid, "rtplan"), patient,
               ref.StudyInstanceUID, series_uid, "RTPLAN", series_number, f"Plan {label}")
    ds.RTPlanLabel = label
    ds.RTPlanDate = STUDY_DATE
    ds.RTPlanTime = "100000"
    ds.RTPlanGeometry = "PATIENT"
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = ref.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    rs = Dataset()
    rs.ReferencedSOPClassUID = RTSTRUCT_STORAGE
    rs.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    ds.ReferencedStructureSetSequence = Sequence([rs])
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = fractions
    group.NumberOfBeams = beams
    group.NumberOfBrachyApplicationSetups = 0
    refs = Sequence()
    beam_seq = Sequence()
    for b in range(1, beams + 1):
        rb = Dataset()
        rb.ReferencedBeamNumber = b
        rb.BeamMeterset = round(100.0 + 10 * b, 1)
        refs.append(rb)
        beam = Dataset()
        beam.BeamNumber = b
        beam.BeamName = f"Field {b}"
        beam.BeamType = "STATIC"
        beam.RadiationType = "PHOTON"
        beam.TreatmentMachineName = "LINAC1"
        beam.PrimaryDosimeterUnit = "MU"
        beam.SourceAxisDistance = 1000
        beam.TreatmentDeliveryType = "TREATMENT"
        beam.NumberOfWedges = 0
        beam.NumberOfCompensators = 0
        beam.NumberOfBoli = 0
        beam.NumberOfBlocks = 0
        beam.FinalCumulativeMetersetWeight = 1
        beam.NumberOfControlPoints = 2
        cps = Sequence()
        for k in range(2):
            cp = Dataset()
            cp.ControlPointIndex = k
            cp.CumulativeMetersetWeight = k
            if k == 0:
                cp.NominalBeamEnergy = 6
                cp.GantryAngle = (360 // beams * (b - 1)) % 360
                cp.BeamLimitingDeviceAngle = 0
                cp.PatientSupportAngle = 0
                cp.IsocenterPosition = [0, 0, 0]
            cps.append(cp)
        beam.ControlPointSequence = cps
        beam_seq.append(beam)
    group.ReferencedBeamSequence = refs
    ds.FractionGroupSequence = Sequence([group])
    ds.BeamSequence = beam_seq
    ds.ApprovalStatus = "APPROVED"
    return ds


def rtdose(plan: Dataset, images: list[Dataset], seed: object, *, series_number: int = 4,
           grid: int = 8) -> Dataset:
    ref = plan
    patient = PatientSpec(str(ref.PatientID), str(ref.PatientName), ref.PatientBirthDate,
                          ref.PatientSex, ref.StudyDescription)
    series_uid = make_uid(seed, ref.StudyInstanceUID, "RTDOSE", series_number,
                          ref.SOPInstanceUID)
    ds = _base(RTDOSE_STORAGE, make_uid(seed, series_uid, "rtdose"), patient,
               ref.StudyInstanceUID, series_uid, "RTDOSE", series_number, "Dose")
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = ref.FrameOfReferenceUID
    rp = Dataset()
    rp.ReferencedSOPClassUID = RTPLAN_STORAGE
    rp.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    ds.ReferencedRTPlanSequence = Sequence([rp])
    frames = max(1, len(images))
    z0 = float(images[0].ImagePositionPatient[2]) if images else 0.0
    ds.ImagePositionPatient = [-grid / 2, -grid / 2, z0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.GridFrameOffsetVector = [3.0 * k for k in range(frames)]
    ds.FrameIncrementPointer = 0x3004000C
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid
    ds.Columns = grid
    ds.PixelSpacing = [2, 2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = 0.001
    ds.PixelData = b"".join(_pixels(grid, grid, k) for k in range(frames))
    return ds


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write a dataset as a DICOM file (explicit VR little endian, fixed file meta)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_NAME
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _file_for(data_dir: Path, ds: Dataset) -> Path:
    return (data_dir / safe_patient_dir(str(ds.PatientID))
            / (safe_component(str(ds.SOPInstanceUID)) + ".dcm"))


@dataclass
class LinkedRTSet:
    """What ``write_linked_rt_set`` wrote (UIDs and the files, relative to the data dir)."""

    patient_id: str
    study_uid: str
    ct_series_uid: str
    frame_of_reference_uid: str
    ct_sop_uids: list[str]
    rtstruct_uid: str
    rtstruct_series_uid: str
    roi_names: list[str]
    rtplan_uid: str
    rtplan_series_uid: str
    beams: int
    fractions: int
    rtdose_uid: str
    rtdose_series_uid: str
    files: list[str] = field(default_factory=list)


def write_linked_rt_set(data_dir: str | Path, *, seed: object = 1, patient_id: str = "RT001",
                        patient_name: str = "SYNTHETIC^RT", ct_slices: int = 3, size: int = 16,
                        beams: int = 3, fractions: int = 25,
                        rois: tuple[str, ...] = ROI_NAMES[:4]) -> LinkedRTSet:
    """CT series + RTSTRUCT (on that CT) + RTPLAN (on the RTSTRUCT) + RTDOSE (on the plan)."""
    data_dir = Path(data_dir)
    patient = PatientSpec(patient_id, patient_name)
    study_uid = make_uid(seed, patient_id, "study")
    cts = ct_series(patient, seed, study_uid, slices=ct_slices, size=size)
    ss = rtstruct(cts, seed, rois=rois)
    plan = rtplan(ss, seed, beams=beams, fractions=fractions)
    dose = rtdose(plan, cts, seed)
    files = []
    for ds in cts + [ss, plan, dose]:
        path = write_dataset(ds, _file_for(data_dir, ds))
        files.append(path.relative_to(data_dir).as_posix())
    return LinkedRTSet(
        patient_id, study_uid, cts[0].SeriesInstanceUID, cts[0].FrameOfReferenceUID,
        [c.SOPInstanceUID for c in cts], ss.SOPInstanceUID, ss.SeriesInstanceUID, list(rois),
        plan.SOPInstanceUID, plan.SeriesInstanceUID, beams, fractions, dose.SOPInstanceUID,
        dose.SeriesInstanceUID, files)


def write_patient(data_dir: str | Path, *, seed: object, patient_id: str,
                  patient_name: str = "SYNTHETIC^PATIENT", ct_slices: int = 3, size: int = 16,
                  mr_slices: int = 0, rt: bool = True, beams: int = 3,
                  fractions: int = 25) -> list[str]:
    """One patient with a CT series, optionally an MR series, and (rt=True) a linked RT set.
    Returns the files written, relative to data_dir."""
    data_dir = Path(data_dir)
    if rt:
        files = write_linked_rt_set(data_dir, seed=seed, patient_id=patient_id,
                                    patient_name=patient_name, ct_slices=ct_slices, size=size,
                                    beams=beams, fractions=fractions).files
    else:
        patient = PatientSpec(patient_id, patient_name)
        study_uid = make_uid(seed, patient_id, "study")
        files = [write_dataset(ds, _file_for(data_dir, ds)).relative_to(data_dir).as_posix()
                 for ds in ct_series(patient, seed, study_uid, slices=ct_slices, size=size)]
    if mr_slices:
        patient = PatientSpec(patient_id, patient_name)
        study_uid = make_uid(seed, patient_id, "study")
        files += [write_dataset(ds, _file_for(data_dir, ds)).relative_to(data_dir).as_posix()
                  for ds in mr_series(patient, seed, study_uid, slices=mr_slices, size=size)]
    return files


def generate_files(data_dir: str | Path, count: int, *, seed: object = 0, size: int = 16,
                   per_patient: int = 50) -> list[str]:
    """About ``count`` files in a CT/MR/RT mix: per patient a CT series, an MR series and a
    linked RTSTRUCT/RTPLAN/RTDOSE; the series grow to ``per_patient`` files per patient."""
    data_dir = Path(data_dir)
    files: list[str] = []
    n = 0
    while len(files) < count:
        left = count - len(files)
        per = min(per_patient, left)
        if per >= 8:
            ct = max(1, (per - 3) * 2 // 3)
            mr = per - 3 - ct
            files += write_patient(data_dir, seed=seed, patient_id=f"BENCH{n:05d}",
                                   ct_slices=ct, mr_slices=mr, size=size)
        else:
            files += write_patient(data_dir, seed=seed, patient_id=f"BENCH{n:05d}",
                                   ct_slices=per, size=size, rt=False)
        n += 1
    return files
