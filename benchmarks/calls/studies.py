"""The studies the find-calls archives are seeded with, generated once and cached.

``COUNT`` studies of one patient each, one series, one small CT instance
(64 x 64, 16 bit): files ``00000.dcm``, ``00001.dcm``, ... (so that
``benchmarks.sides.seed`` stores them) and a ``manifest.json`` with their
Study Instance UIDs, which the SCUs ask for in turn. Cached under
``<data-dir>/calls-studies-<COUNT>-v<VERSION>/`` (gitignored).
"""

from __future__ import annotations

import json
from pathlib import Path

#: At most 10: dcmqrscp's archive (benchmarks/archives.py) keeps 10 studies, then
#: deletes the oldest.
COUNT = 8
VERSION = 1
MANIFEST = "manifest.json"


def cache_dir(root: Path, count: int = COUNT) -> Path:
    return root / f"calls-studies-{count}-v{VERSION}"


def study_uids(directory: Path) -> list[str]:
    """The seeded studies' UIDs, in file order (no DICOM library needed)."""
    manifest = json.loads((directory / MANIFEST).read_text())
    return [str(uid) for uid in manifest["study_instance_uids"]]


def ensure(root: Path, count: int = COUNT) -> Path:
    """Make sure the studies exist (generate them once); return their folder."""
    directory = cache_dir(root, count)
    try:
        if len(study_uids(directory)) == count and all(
            (directory / f"{i:05d}.dcm").is_file() for i in range(count)
        ):
            return directory
    except (OSError, ValueError, KeyError):
        pass
    directory.mkdir(parents=True, exist_ok=True)
    uids = [_write(directory / f"{i:05d}.dcm", i) for i in range(count)]
    (directory / MANIFEST).write_text(
        json.dumps({"version": VERSION, "count": count, "study_instance_uids": uids}, indent=2)
        + "\n"
    )
    return directory


def _write(path: Path, index: int) -> str:
    """One study of one instance; returns its Study Instance UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    ct_image_storage = "1.2.840.10008.5.1.4.1.1.2"
    sop_instance = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ct_image_storage)
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = ct_image_storage
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"202401{index + 1:02d}"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"CALLS{index:04d}"
    ds.Modality = "CT"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"adicom calls benchmark study {index}"
    ds.PatientName = f"Calls^Patient{index}"
    ds.PatientID = f"CALLS-{index:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = str(index + 1)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(64 * 64 * 2)
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return str(study)
