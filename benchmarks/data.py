"""Test instances for the C-STORE workloads, generated once and cached on disk.

Each `DataSpec` describes one set of instances: one patient, one study, one
series, unique SOP Instance UIDs, uncompressed 16-bit pixels, written as DICOM
files (preamble + file meta) in explicit VR little endian. Files are named
``00000.dcm``, ``00001.dcm``, ... plus ``warmup-0.dcm`` .. ``warmup-2.dcm``:
separate instances of the same size that the SCUs send before the timed span,
so that no SCP ever sees a SOP Instance UID twice in one repetition.

The cache lives under ``benchmarks/results/data/<name>-v<version>/`` (gitignored)
with a ``manifest.json``; `ensure` generates only what is missing, so a quick
run generates only the instances it sends.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Bump when the generated files change in any way, so old caches are not reused.
FORMAT_VERSION = 1
WARMUP_INSTANCES = 3


@dataclass(frozen=True)
class DataSpec:
    name: str
    sop_class_uid: str
    modality: str
    rows: int
    columns: int
    frames: int  # 1 = single-frame, no NumberOfFrames element
    description: str

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * self.frames * 2


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MF_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

SMALL = DataSpec(
    "ct-128x160",
    CT_IMAGE_STORAGE,
    "CT",
    128,
    160,
    1,
    "CT Image Storage, 128 x 160 x 16 bit (40 960 pixel bytes, ~42 KB file)",
)
LARGE = DataSpec(
    "mfsc-100x512x512",
    MF_GRAYSCALE_WORD_SC_STORAGE,
    "OT",
    512,
    512,
    100,
    "Multi-frame Grayscale Word Secondary Capture, 100 frames of 512 x 512 x 16 bit"
    " (52 428 800 pixel bytes, ~52 MB file)",
)


def cache_dir(root: Path, spec: DataSpec) -> Path:
    return root / f"{spec.name}-v{FORMAT_VERSION}"


def instance_paths(directory: Path, n: int) -> list[Path]:
    """The first `n` timed instances of a generated set (sorted by name)."""
    paths = sorted(directory.glob("[0-9]*.dcm"))
    if len(paths) < n:
        raise FileNotFoundError(f"{directory} holds {len(paths)} instances, {n} wanted")
    return paths[:n]


def warmup_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("warmup-*.dcm"))


def _manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def ensure(root: Path, spec: DataSpec, n: int) -> Path:
    """Make sure at least `n` timed instances (and the warm-up ones) exist; return the dir."""
    from pydicom.uid import generate_uid

    directory = cache_dir(root, spec)
    manifest = _manifest(directory)
    if manifest is None or manifest.get("spec") != asdict(spec):
        if directory.exists():
            for old in directory.glob("*.dcm"):
                old.unlink()
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "spec": asdict(spec),
            "study_instance_uid": str(generate_uid()),
            "series_instance_uid": str(generate_uid()),
            "frame_of_reference_uid": str(generate_uid()),
            "count": 0,
        }
    count = int(manifest["count"])
    have_warmups = len(warmup_paths(directory)) == WARMUP_INSTANCES
    if count >= n and have_warmups and len(instance_paths(directory, count)) == count:
        return directory

    rng = random.Random(f"{spec.name}-{FORMAT_VERSION}")
    # One pixel block per set: random content (so nothing compresses by accident),
    # and per instance a different first row, so no two files are identical.
    pixels = bytearray(rng.randbytes(spec.pixel_bytes))
    uids = (
        manifest["study_instance_uid"],
        manifest["series_instance_uid"],
        manifest["frame_of_reference_uid"],
    )
    if not have_warmups:
        for i in range(WARMUP_INSTANCES):
            _write(directory / f"warmup-{i}.dcm", spec, uids, 9000 + i, pixels, rng)
    for i in range(count, n):
        _write(directory / f"{i:05d}.dcm", spec, uids, i + 1, pixels, rng)
    manifest["count"] = max(count, n)
    manifest["bytes_per_file"] = (directory / "00000.dcm").stat().st_size
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def _write(
    path: Path,
    spec: DataSpec,
    uids: tuple[str, str, str],
    number: int,
    pixels: bytearray,
    rng: random.Random,
) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    study_uid, series_uid, frame_of_reference_uid = uids
    sop_instance = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(spec.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"] if spec.frames == 1 else ["DERIVED", "SECONDARY"]
    )
    ds.SOPClassUID = spec.sop_class_uid
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "BENCH0001"
    ds.Modality = spec.modality
    ds.Manufacturer = "adicom benchmarks"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "adicom benchmark study"
    ds.SeriesDescription = spec.description[:64]
    ds.PatientName = "Bench^Patient"
    ds.PatientID = "BENCH-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    if spec.frames == 1:
        ds.KVP = 120
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0.0, 0.0, float(number)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.PixelSpacing = [0.5, 0.5]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    else:
        ds.NumberOfFrames = spec.frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 33.3
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16  # random content uses all 16 bits
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    row = spec.columns * 2
    pixels[:row] = rng.randbytes(row)
    ds.PixelData = bytes(pixels)
    ds["PixelData"].VR = "OW"
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True, little_endian=True, implicit_vr=False)
    tmp.replace(path)


@dataclass(frozen=True)
class SeriesKeys:
    """What a query/retrieve workload asks for: the set's one study and series."""

    study_instance_uid: str
    series_instance_uid: str
    #: The SOP Instance UID of ``00000.dcm``: the single-instance warm-up and
    #: the one-match run of the DCMTK differential.
    first_sop_instance_uid: str


def series_keys(directory: Path) -> SeriesKeys:
    """The study, series and first instance UIDs of a generated set."""
    from pydicom.filereader import read_file_meta_info

    manifest = _manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"{directory} has no manifest.json (run data.ensure first)")
    meta = read_file_meta_info(directory / "00000.dcm")
    return SeriesKeys(
        str(manifest["study_instance_uid"]),
        str(manifest["series_instance_uid"]),
        str(meta.MediaStorageSOPInstanceUID),
    )
