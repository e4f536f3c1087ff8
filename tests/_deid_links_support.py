"""Two more linked RT objects for the de-identification tests, built from synthetic files:

* an RT Beams Treatment Record that references its plan (ReferencedRTPlanSequence) and beams;
* a Spatial Registration that registers an MR series of another study onto the planning CT:
  RegistrationSequence items with FrameOfReferenceUID and ReferencedImageSequence, and the
  Common Instance Reference module (ReferencedSeriesSequence for the CT of its own study,
  StudiesContainingOtherReferencedInstancesSequence for the MR).

Both are deterministic (UIDs from ``synthetic.make_uid``)."""

from __future__ import annotations

__all__ = ["beams_treatment_record", "spatial_registration", "RTRECORD_STORAGE",
           "REGISTRATION_STORAGE"]

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conquest_run.synthetic import make_uid

RTRECORD_STORAGE = "1.2.840.10008.5.1.4.1.1.481.4"       # RT Beams Treatment Record
REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.1"    # Spatial Registration
_PATIENT_STUDY = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate",
                  "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                  "AccessionNumber", "ReferringPhysicianName", "StudyDescription")


def _common(ref: Dataset, sop_class: str, modality: str, seed: object, series_number: int,
            description: str) -> Dataset:
    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in ref:
            setattr(ds, keyword, ref.data_element(keyword).value)
    ds.SOPClassUID = sop_class
    ds.SeriesInstanceUID = make_uid(seed, ref.StudyInstanceUID, modality, series_number)
    ds.SOPInstanceUID = make_uid(seed, ds.SeriesInstanceUID, modality.lower())
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate = ref.StudyDate
    ds.SeriesTime = "120000"
    ds.Manufacturer = "conquest-run synthetic"
    ds.InstanceNumber = 1
    ds.InstanceCreationDate = ref.StudyDate
    ds.InstanceCreationTime = "120000"
    return ds


def _ref(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def beams_treatment_record(plan: Dataset, seed: object, *, fraction: int = 1) -> Dataset:
    """The record of one delivered fraction of ``plan`` (every beam, full meterset)."""
    ds = _common(plan, RTRECORD_STORAGE, "RTRECORD", seed, 6, "Treatment record")
    ds.OperatorsName = "TECH^ONE"
    ds.TreatmentDate = plan.StudyDate
    ds.TreatmentTime = "130000"
    ds.ReferencedRTPlanSequence = Sequence([_ref(plan.SOPClassUID, plan.SOPInstanceUID)])
    ds.ReferencedFractionGroupNumber = 1
    machine = Dataset()
    machine.TreatmentMachineName = "LINAC1"
    machine.Manufacturer = "conquest-run synthetic"
    machine.InstitutionName = "ST ELSEWHERE HOSPITAL"
    machine.ManufacturerModelName = "SYNTH-LINAC"
    machine.DeviceSerialNumber = "LINAC-SN-1"
    ds.TreatmentMachineSequence = Sequence([machine])
    ds.NumberOfFractionsPlanned = plan.FractionGroupSequence[0].NumberOfFractionsPlanned
    ds.PrimaryDosimeterUnit = "MU"
    session = Sequence()
    metersets = {rb.ReferencedBeamNumber: rb.BeamMeterset
                 for rb in plan.FractionGroupSequence[0].ReferencedBeamSequence}
    for beam in plan.BeamSequence:
        item = Dataset()
        item.ReferencedBeamNumber = beam.BeamNumber
        item.BeamName = beam.BeamName
        item.BeamType = beam.BeamType
        item.RadiationType = beam.RadiationType
        item.TreatmentDeliveryType = "TREATMENT"
        item.NumberOfWedges = 0
        item.NumberOfCompensators = 0
        item.NumberOfBoli = 0
        item.NumberOfBlocks = 0
        item.CurrentFractionNumber = fraction
        item.TreatmentTerminationStatus = "NORMAL"
        item.TreatmentVerificationStatus = "VERIFIED_OVR"
        jaws = Dataset()
        jaws.RTBeamLimitingDeviceType = "ASYMX"
        jaws.NumberOfLeafJawPairs = 1
        item.BeamLimitingDeviceLeafPairsSequence = Sequence([jaws])
        item.SpecifiedPrimaryMeterset = metersets[beam.BeamNumber]
        item.DeliveredPrimaryMeterset = metersets[beam.BeamNumber]
        item.NumberOfControlPoints = 2
        points = Sequence()
        for k in range(2):
            cp = Dataset()
            cp.ReferencedControlPointIndex = k
            cp.TreatmentControlPointDate = plan.StudyDate
            cp.TreatmentControlPointTime = f"1300{k:02d}"
            cp.SpecifiedMeterset = metersets[beam.BeamNumber] * k
            cp.DeliveredMeterset = metersets[beam.BeamNumber] * k
            cp.DoseRateSet = 600
            cp.DoseRateDelivered = 600
            if k == 0:
                cp.NominalBeamEnergy = 6
                cp.NominalBeamEnergyUnit = "MV"
                cp.GantryAngle = beam.ControlPointSequence[0].GantryAngle
                cp.BeamLimitingDeviceAngle = 0
                cp.PatientSupportAngle = 0
            points.append(cp)
        item.ControlPointDeliverySequence = points
        session.append(item)
    ds.TreatmentSessionBeamSequence = session
    return ds


def _registration_item(images: list[Dataset], matrix: list[float]) -> Dataset:
    item = Dataset()
    item.FrameOfReferenceUID = images[0].FrameOfReferenceUID
    item.ReferencedImageSequence = Sequence([_ref(i.SOPClassUID, i.SOPInstanceUID)
                                             for i in images])
    transform = Dataset()
    transform.FrameOfReferenceTransformationMatrixType = "RIGID"
    transform.FrameOfReferenceTransformationMatrix = matrix
    matrices = Dataset()
    matrices.MatrixSequence = Sequence([transform])
    matrices.RegistrationTypeCodeSequence = Sequence()
    item.MatrixRegistrationSequence = Sequence([matrices])
    return item


def _series_refs(images: list[Dataset]) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = images[0].SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([_ref(i.SOPClassUID, i.SOPInstanceUID)
                                                  for i in images])
    return series


def spatial_registration(ct: list[Dataset], mr: list[Dataset], seed: object) -> Dataset:
    """MR (another study, its own frame of reference) registered onto the planning CT."""
    ds = _common(ct[0], REGISTRATION_STORAGE, "REG", seed, 7, "MR to CT")
    ds.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.Laterality = ""
    ds.ContentDate = ct[0].StudyDate
    ds.ContentTime = "120000"
    ds.ContentLabel = "MR_TO_CT"
    ds.ContentDescription = "rigid registration"
    ds.ContentCreatorName = "PHYSICIST^ONE"
    identity = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    shifted = [1, 0, 0, 2.5, 0, 1, 0, -1.0, 0, 0, 1, 4.0, 0, 0, 0, 1]
    ds.RegistrationSequence = Sequence([_registration_item(ct, identity),
                                        _registration_item(mr, shifted)])
    ds.ReferencedSeriesSequence = Sequence([_series_refs(ct)])
    other = Dataset()
    other.StudyInstanceUID = mr[0].StudyInstanceUID
    other.ReferencedSeriesSequence = Sequence([_series_refs(mr)])
    ds.StudiesContainingOtherReferencedInstancesSequence = Sequence([other])
    return ds
