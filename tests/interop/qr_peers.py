"""Query/retrieve SCPs for the interop tests, seeded with a known archive.

Two real Q/R SCPs, each a subprocess on 127.0.0.1 and a free port, killed
(with its process group) when its context manager exits:

- DCMTK ``dcmqrscp`` (fork mode: 3.6.7's ``--single-process`` crashes after
  one association). Its presentation contexts come from an association
  profile file (``-xf``): without one it accepts only uncompressed storage
  and refuses the SCP role that C-GET needs. The profile accepts the
  archive's storage classes (SCP role included, for C-GET), and names what
  it proposes when it sends sub-operations of a C-MOVE. Seeded with DCMTK
  ``storescu``.
- pynetdicom's ``qrscp`` app (``python -m pynetdicom qrscp``; needs
  SQLAlchemy), configured by an INI file: AE title, port, database, storage
  folder, and the known move destinations. Seeded with pynetdicom's storage
  SCU (scripts/pynetdicom_store_scu.py), which sends each file in its own
  transfer syntax.

Both know one move destination, :data:`MOVE_AE` on 127.0.0.1 at a port
chosen before they start (:class:`MoveDestination`); a test serves it with an
in-process ``adicom.Server`` while it moves.

The archive (:func:`build_archive`) is made from pydicom's bundled files,
rewritten with fresh UIDs and patient/study attributes: two patients, each
with two studies of two series of three instances, plus one patient with a
single study of one 40-instance series (for cancelling a retrieve midway).
Each SOP class appears in one transfer syntax only, since a C-GET requestor
offers one presentation context per storage class and the SCP can send an
instance only in the syntax it holds (neither SCP here decompresses).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from tests.interop import data, peers

HOST = peers.HOST
MOVE_AE = "ADICOM-DEST"
SEED_TIMEOUT = 60.0

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


# --------------------------------------------------------------------------
# The archive


@dataclasses.dataclass(frozen=True)
class SeriesKind:
    """A bundled file that a whole series is made of."""

    name: str
    filename: str
    sop_class_uid: str
    transfer_syntax: str
    #: DCMTK storescu option that proposes the file's own syntax.
    storescu_option: str


KINDS = {
    kind.name: kind
    for kind in (
        SeriesKind("ct", "CT_small.dcm", CT_IMAGE, ExplicitVRLittleEndian, "-xe"),
        SeriesKind("mr", "MR_small.dcm", MR_IMAGE, ExplicitVRLittleEndian, "-xe"),
        SeriesKind("rtplan", "rtplan.dcm", RT_PLAN, ImplicitVRLittleEndian, "-xi"),
        SeriesKind("jpeg", "SC_rgb_jpeg_gdcm.dcm", SECONDARY_CAPTURE, JPEG_LOSSLESS_SV1, "-xs"),
    )
}


@dataclasses.dataclass(frozen=True)
class Seeded:
    """One instance of the archive: its file and the attributes queried on."""

    instance: data.Instance
    kind: str
    patient_id: str
    patient_name: str
    study_date: str
    study_id: str
    accession_number: str
    modality: str
    series_number: int
    instance_number: int

    @property
    def sop_instance_uid(self) -> str:
        return self.instance.sop_instance_uid

    @property
    def study_instance_uid(self) -> str:
        return self.instance.study_instance_uid

    @property
    def series_instance_uid(self) -> str:
        return self.instance.series_instance_uid


@dataclasses.dataclass(frozen=True)
class StudySpec:
    date: str
    series: tuple[str, ...]  # kind names
    per_series: int = 3


@dataclasses.dataclass(frozen=True)
class PatientSpec:
    patient_id: str
    name: str
    studies: tuple[StudySpec, ...]


PATIENTS: tuple[PatientSpec, ...] = (
    PatientSpec(
        "QR-P1",
        "Alpha^Anna",
        (StudySpec("20200105", ("ct", "mr")), StudySpec("20210610", ("jpeg", "rtplan"))),
    ),
    PatientSpec(
        "QR-P2",
        "Beta^Bruno",
        (StudySpec("20220315", ("mr", "jpeg")), StudySpec("20230920", ("ct", "rtplan"))),
    ),
    PatientSpec("QR-MANY", "Gamma^Many", (StudySpec("20190202", ("ct",), per_series=40),)),
)


@dataclasses.dataclass(frozen=True)
class Archive:
    """What was seeded into a Q/R SCP, with the questions tests ask of it."""

    instances: tuple[Seeded, ...]

    def patients(self) -> dict[str, str]:
        """Patient ID -> Patient's Name."""
        return {s.patient_id: s.patient_name for s in self.instances}

    def studies(self, patient_id: str | None = None) -> set[str]:
        return {
            s.study_instance_uid
            for s in self.instances
            if patient_id is None or s.patient_id == patient_id
        }

    def series(self, study_uid: str) -> set[str]:
        return {s.series_instance_uid for s in self.instances if s.study_instance_uid == study_uid}

    def in_study(self, study_uid: str) -> list[Seeded]:
        return [s for s in self.instances if s.study_instance_uid == study_uid]

    def in_series(self, series_uid: str) -> list[Seeded]:
        return [s for s in self.instances if s.series_instance_uid == series_uid]

    def first(self, **attributes: object) -> Seeded:
        """The first instance whose attributes have these values."""
        for s in self.instances:
            if all(getattr(s, key) == value for key, value in attributes.items()):
                return s
        raise LookupError(f"no seeded instance with {attributes}")

    def study_of(self, patient_id: str, date: str) -> str:
        return self.first(patient_id=patient_id, study_date=date).study_instance_uid

    def series_of(self, study_uid: str, kind: str) -> str:
        return self.first(study_instance_uid=study_uid, kind=kind).series_instance_uid

    def by_uid(self) -> dict[str, Seeded]:
        return {s.sop_instance_uid: s for s in self.instances}


def _conformant(ds: Dataset) -> None:
    """Drop trailing padding; encapsulated Pixel Data is OB (PS3.5 A.4)."""
    if data.DATASET_TRAILING_PADDING in ds:
        del ds[data.DATASET_TRAILING_PADDING]
    if data.PIXEL_DATA in ds and ds[data.PIXEL_DATA].is_undefined_length:
        ds[data.PIXEL_DATA].VR = "OB"


def build_archive(directory: Path, patients: Iterable[PatientSpec] = PATIENTS) -> Archive:
    """Write the archive's files into ``directory``, each with fresh UIDs."""
    directory.mkdir(parents=True, exist_ok=True)
    templates: dict[str, Dataset] = {}
    for kind in KINDS.values():
        template = pydicom.dcmread(data.bundled_file(kind.filename))
        if str(template.file_meta.TransferSyntaxUID) != kind.transfer_syntax:
            raise AssertionError(f"{kind.filename} is not in {kind.transfer_syntax}")
        if str(template.SOPClassUID) != kind.sop_class_uid:
            raise AssertionError(f"{kind.filename} is not of SOP class {kind.sop_class_uid}")
        _conformant(template)
        templates[kind.name] = template

    seeded: list[Seeded] = []
    for p_index, patient in enumerate(patients, start=1):
        for st_index, study in enumerate(patient.studies, start=1):
            study_uid = generate_uid(prefix=None)
            study_id = f"S{p_index}{st_index}"
            accession = f"ACC{p_index}{st_index}"
            for se_index, kind_name in enumerate(study.series, start=1):
                kind = KINDS[kind_name]
                series_uid = generate_uid(prefix=None)
                for number in range(1, study.per_series + 1):
                    ds = copy.deepcopy(templates[kind_name])
                    sop_uid = generate_uid(prefix=None)
                    ds.PatientID = patient.patient_id
                    ds.PatientName = patient.name
                    ds.StudyInstanceUID = study_uid
                    ds.StudyDate = study.date
                    ds.StudyTime = "101500"
                    ds.StudyID = study_id
                    ds.AccessionNumber = accession
                    ds.SeriesInstanceUID = series_uid
                    ds.SeriesNumber = se_index
                    ds.InstanceNumber = number
                    ds.SOPInstanceUID = sop_uid
                    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                    path = directory / f"{patient.patient_id}-{st_index}-{se_index}-{number}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    instance = data.Instance(
                        label=f"{patient.patient_id}/{study.date}/{kind_name}/{number}",
                        path=path,
                        transfer_syntax=kind.transfer_syntax,
                        sop_class_uid=kind.sop_class_uid,
                        sop_instance_uid=sop_uid,
                        study_instance_uid=study_uid,
                        series_instance_uid=series_uid,
                        storescu_option=kind.storescu_option,
                    )
                    seeded.append(
                        Seeded(
                            instance=instance,
                            kind=kind_name,
                            patient_id=patient.patient_id,
                            patient_name=patient.name,
                            study_date=study.date,
                            study_id=study_id,
                            accession_number=accession,
                            modality=str(ds.Modality),
                            series_number=se_index,
                            instance_number=number,
                        )
                    )
    return Archive(tuple(seeded))


# --------------------------------------------------------------------------
# The SCPs


@dataclasses.dataclass(frozen=True)
class MoveDestination:
    """The move destination both SCPs know: an AE a test serves while it moves."""

    aet: str
    port: int


@dataclasses.dataclass
class QrScp:
    """A running, seeded Q/R SCP."""

    kind: str  # "dcmtk" or "pynetdicom"
    peer: peers.Peer
    aet: str
    port: int
    archive: Archive
    move_destination: MoveDestination

    def describe(self) -> str:
        return self.peer.describe()


# dcmqrscp's association profile: what it accepts (QRIn) and what it proposes
# for C-MOVE sub-operations (QROut). UIDs rather than DCMTK's names.
_DCMQRSCP_PROFILE = f"""\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = {ExplicitVRLittleEndian}
TransferSyntax2 = {ImplicitVRLittleEndian}
TransferSyntax3 = 1.2.840.10008.1.2.2
[JpegLossless]
TransferSyntax1 = {JPEG_LOSSLESS_SV1}
[JpegLosslessOrUncompressed]
TransferSyntax1 = {JPEG_LOSSLESS_SV1}
TransferSyntax2 = {ExplicitVRLittleEndian}
TransferSyntax3 = {ImplicitVRLittleEndian}

[[PresentationContexts]]
[Incoming]
PresentationContext1 = 1.2.840.10008.1.1\\Uncompressed
PresentationContext2 = 1.2.840.10008.5.1.4.1.2.1.1\\Uncompressed
PresentationContext3 = 1.2.840.10008.5.1.4.1.2.1.2\\Uncompressed
PresentationContext4 = 1.2.840.10008.5.1.4.1.2.1.3\\Uncompressed
PresentationContext5 = 1.2.840.10008.5.1.4.1.2.2.1\\Uncompressed
PresentationContext6 = 1.2.840.10008.5.1.4.1.2.2.2\\Uncompressed
PresentationContext7 = 1.2.840.10008.5.1.4.1.2.2.3\\Uncompressed
PresentationContext8 = {CT_IMAGE}\\Uncompressed
PresentationContext9 = {MR_IMAGE}\\Uncompressed
PresentationContext10 = {RT_PLAN}\\Uncompressed
PresentationContext11 = {SECONDARY_CAPTURE}\\JpegLosslessOrUncompressed
[Outgoing]
PresentationContext1 = {CT_IMAGE}\\Uncompressed
PresentationContext2 = {MR_IMAGE}\\Uncompressed
PresentationContext3 = {RT_PLAN}\\Uncompressed
PresentationContext4 = {SECONDARY_CAPTURE}\\JpegLossless

[[SCPSCURoleSelection]]
[GetRoles]
Role1 = {CT_IMAGE}\\BOTH
Role2 = {MR_IMAGE}\\BOTH
Role3 = {RT_PLAN}\\BOTH
Role4 = {SECONDARY_CAPTURE}\\BOTH

[[Profiles]]
[QRIn]
PresentationContexts = Incoming
SCPSCURoleSelection = GetRoles
[QROut]
PresentationContexts = Outgoing
"""


@contextlib.contextmanager
def dcmqrscp(
    archive: Archive, move_destination: MoveDestination, aet: str = "DCMQRSCP"
) -> Iterator[QrScp]:
    """DCMTK dcmqrscp holding ``archive``, listening and seeded when it yields."""
    binary = peers.require_dcmtk("dcmqrscp")
    port = peers.free_port()
    with tempfile.TemporaryDirectory(prefix="adicom-qr-dcmqrscp-") as tmp:
        storage = Path(tmp) / "db"
        storage.mkdir()
        config = Path(tmp) / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort  = {port}\n"
            "MaxPDUSize      = 16384\n"
            "MaxAssociations = 16\n"
            "HostTable BEGIN\n"
            f"adicomdest = ({move_destination.aet}, {HOST}, {move_destination.port})\n"
            "HostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            "AETable BEGIN\n"
            f"{aet}  {storage}  RW  (100, 64mb)  ANY\n"
            "AETable END\n"
        )
        profile = Path(tmp) / "profiles.cfg"
        profile.write_text(_DCMQRSCP_PROFILE)
        argv = [
            binary,
            "-xf",
            str(profile),
            "QRIn",
            "QROut",
            "--config",
            str(config),
            str(port),
        ]
        with peers.running(argv, name="DCMTK dcmqrscp", cwd=tmp) as peer:
            peer.port, peer.aet = port, aet
            peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
            scp = QrScp("dcmtk", peer, aet, port, archive, move_destination)
            _seed_with_storescu(scp)
            yield scp


def _seed_with_storescu(scp: QrScp) -> None:
    """Send the archive with DCMTK storescu, one association per storescu option.

    storescu converts a file to the syntax the SCP accepted; the option
    makes it propose the file's own syntax, so the JPEG files stay JPEG
    (the uncompressed ones may become explicit VR little endian).
    """
    groups: dict[str, list[Path]] = {}
    for s in scp.archive.instances:
        groups.setdefault(s.instance.storescu_option, []).append(s.instance.path)
    for option, paths in groups.items():
        argv = peers.dcmtk_storescu_argv(scp.port, "SEEDER", scp.aet, paths, options=[option])
        finished = peers.run(argv, timeout=SEED_TIMEOUT)
        text = finished.stdout + finished.stderr
        stored = text.count("Received Store Response (Success)")
        if finished.returncode != 0 or stored != len(paths):
            raise peers.PeerError(
                f"seeding dcmqrscp: {stored} of {len(paths)} stored\n"
                f"{finished.describe()}\n{scp.describe()}"
            )


def require_pynetdicom_qrscp() -> None:
    peers.require_pynetdicom()
    if importlib.util.find_spec("sqlalchemy") is None:
        pytest.skip("pynetdicom's qrscp needs SQLAlchemy (pip install sqlalchemy)")


@contextlib.contextmanager
def pynetdicom_qrscp(
    archive: Archive, move_destination: MoveDestination, aet: str = "PYQRSCP"
) -> Iterator[QrScp]:
    """pynetdicom's qrscp app holding ``archive``, listening and seeded when it yields."""
    require_pynetdicom_qrscp()
    port = peers.free_port()
    with tempfile.TemporaryDirectory(prefix="adicom-qr-pynetdicom-") as tmp:
        # qrscp joins relative locations to its own package folder: give
        # absolute ones. Every section but DEFAULT is a move destination.
        config = Path(tmp) / "qrscp.ini"
        config.write_text(
            "[DEFAULT]\n"
            f"ae_title = {aet}\n"
            f"port = {port}\n"
            "max_pdu = 16382\n"
            "acse_timeout = 30\n"
            "dimse_timeout = 30\n"
            "network_timeout = 30\n"
            f"bind_address = {HOST}\n"
            f"instance_location = {Path(tmp) / 'instances'}\n"
            f"database_location = {Path(tmp) / 'instances.sqlite'}\n"
            "log_identifier = False\n"
            f"\n[{move_destination.aet}]\n"
            f"address = {HOST}\n"
            f"port = {move_destination.port}\n"
        )
        argv = [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(config)]
        with peers.running(argv, name="pynetdicom qrscp", cwd=tmp) as peer:
            peer.port, peer.aet = port, aet
            peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
            scp = QrScp("pynetdicom", peer, aet, port, archive, move_destination)
            _seed_with_pynetdicom(scp)
            yield scp


def _seed_with_pynetdicom(scp: QrScp) -> None:
    paths = [s.instance.path for s in scp.archive.instances]
    argv = peers.pynetdicom_store_scu_argv(scp.port, "SEEDER", scp.aet, paths)
    finished = peers.run(argv, timeout=SEED_TIMEOUT)
    result = peers.parse_pynetdicom_store_scu(finished)
    statuses = [r.get("status") for r in result.get("results", [])]
    if not result.get("ok") or statuses != [0] * len(paths):
        raise peers.PeerError(
            f"seeding pynetdicom qrscp: statuses {statuses}\n"
            f"{finished.describe()}\n{scp.describe()}"
        )


# --------------------------------------------------------------------------
# ``adicom serve --storage`` as the Q/R SCP (test_serve.py)

#: The archive test_serve.py seeds into ``adicom serve``: QR-P1 and QR-P2 as
#: above, and a third patient whose name is in lower case (PN matching is
#: case-insensitive there) with one two-instance CT series.
SERVE_PATIENTS: tuple[PatientSpec, ...] = (
    PATIENTS[0],
    PATIENTS[1],
    PatientSpec("SV-P3", "gamma^Gina", (StudySpec("20240229", ("ct",), per_series=2),)),
)


@dataclasses.dataclass
class ServeArchive:
    """A running ``adicom serve --storage DIR --move-dest ...``, seeded."""

    peer: peers.Peer
    aet: str
    port: int
    storage: Path
    archive: Archive
    #: Move destination AE title -> port on 127.0.0.1, as given to --move-dest.
    move_destinations: dict[str, int]
    #: SOP Instance UID -> the calling AE title of the peer that stored it.
    seeded_by: dict[str, str]

    def describe(self) -> str:
        return self.peer.describe()


@contextlib.contextmanager
def adicom_serve_archive(
    storage: Path, move_destinations: dict[str, int], aet: str = "ADICOM"
) -> Iterator[peers.Peer]:
    """``adicom serve --storage DIR --move-dest AET=127.0.0.1:PORT ...``, listening on yield."""
    port = peers.free_port()
    argv = [
        *peers.adicom_cli(),
        "serve",
        "--aet",
        aet,
        "--host",
        HOST,
        "--port",
        str(port),
        "--storage",
        str(storage),
    ]
    for dest_aet, dest_port in move_destinations.items():
        argv += ["--move-dest", f"{dest_aet}={HOST}:{dest_port}"]
    with peers.running(argv, name="adicom serve --storage --move-dest") as peer:
        peer.port, peer.aet = port, aet
        peers._wait_for_serve_line(peer, aet, port)
        peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
        yield peer


def seed_with_storescu(port: int, aet: str, instances: Iterable[Seeded], calling_ae: str) -> None:
    """Send ``instances`` with DCMTK storescu, one association per storescu option."""
    groups: dict[str, list[Path]] = {}
    for s in instances:
        groups.setdefault(s.instance.storescu_option, []).append(s.instance.path)
    for option, paths in groups.items():
        argv = peers.dcmtk_storescu_argv(port, calling_ae, aet, paths, options=[option])
        finished = peers.run(argv, timeout=SEED_TIMEOUT)
        text = finished.stdout + finished.stderr
        stored = text.count("Received Store Response (Success)")
        if finished.returncode != 0 or stored != len(paths):
            raise peers.PeerError(
                f"seeding with storescu: {stored} of {len(paths)} stored\n{finished.describe()}"
            )


def seed_with_pynetdicom(port: int, aet: str, instances: Iterable[Seeded], calling_ae: str) -> None:
    """Send ``instances`` with pynetdicom's storage SCU, each in its own transfer syntax."""
    paths = [s.instance.path for s in instances]
    argv = peers.pynetdicom_store_scu_argv(port, calling_ae, aet, paths)
    finished = peers.run(argv, timeout=SEED_TIMEOUT)
    result = peers.parse_pynetdicom_store_scu(finished)
    statuses = [r.get("status") for r in result.get("results", [])]
    if not result.get("ok") or statuses != [0] * len(paths):
        raise peers.PeerError(
            f"seeding with pynetdicom: statuses {statuses}\n{finished.describe()}"
        )


@contextlib.contextmanager
def serve_archive(
    directory: Path,
    move_destinations: dict[str, int],
    aet: str = "ADICOM",
    dcmtk_patients: Iterable[str] = ("QR-P1", "SV-P3"),
    dcmtk_ae: str = "SEED-DCMTK",
    pynetdicom_ae: str = "SEED-PYNET",
) -> Iterator[ServeArchive]:
    """``adicom serve`` holding :data:`SERVE_PATIENTS`, seeded when it yields.

    The patients in ``dcmtk_patients`` go in with DCMTK storescu, the others
    with pynetdicom's storage SCU.
    """
    peers.require_dcmtk("storescu")
    peers.require_pynetdicom()
    archive = build_archive(directory / "files", SERVE_PATIENTS)
    storage = directory / "storage"
    by_dcmtk = [s for s in archive.instances if s.patient_id in set(dcmtk_patients)]
    by_pynetdicom = [s for s in archive.instances if s.patient_id not in set(dcmtk_patients)]
    with adicom_serve_archive(storage, move_destinations, aet) as peer:
        assert peer.port is not None
        try:
            seed_with_storescu(peer.port, aet, by_dcmtk, dcmtk_ae)
            seed_with_pynetdicom(peer.port, aet, by_pynetdicom, pynetdicom_ae)
        except peers.PeerError as exc:
            raise peers.PeerError(f"{exc}\n{peer.describe()}") from None
        seeded_by = {s.sop_instance_uid: dcmtk_ae for s in by_dcmtk}
        seeded_by |= {s.sop_instance_uid: pynetdicom_ae for s in by_pynetdicom}
        yield ServeArchive(
            peer, aet, peer.port, storage, archive, dict(move_destinations), seeded_by
        )


@contextlib.contextmanager
def dcmtk_storescp_on(port: int, output_dir: Path, aet: str) -> Iterator[peers.Peer]:
    """DCMTK storescp on a given port (a move destination named before it starts).

    Accepts every transfer syntax it knows (``+xa``) and writes each data set
    as it came off the wire (``+B``) into ``output_dir``.
    """
    binary = peers.require_dcmtk("storescp")
    argv = [
        binary,
        "--aetitle",
        aet,
        "+xa",
        "+B",
        "-ta",
        "10",
        "-td",
        "30",
        "--output-directory",
        str(output_dir),
        str(port),
    ]
    with peers.running(argv, name="DCMTK storescp (move destination)") as peer:
        peer.port, peer.aet = port, aet
        peers.wait_for_port(HOST, port, peers.READY_TIMEOUT, peer)
        yield peer


# DCMTK tools at -d print every DIMSE message as
#   D: ===================== INCOMING DIMSE MESSAGE ====================
#   D: Message Type                  : C-FIND RSP
#   D: DIMSE Status                  : 0xff00: Pending: ...
#   D: ======================= END DIMSE MESSAGE =======================
_DIMSE_START = re.compile(r"=+ (?P<direction>INCOMING|OUTGOING) DIMSE MESSAGE =+")
_DIMSE_END = re.compile(r"=+ END DIMSE MESSAGE =+")
_DIMSE_FIELD = re.compile(r"^\w:\s(?P<key>[A-Za-z][A-Za-z /-]*?)\s*:\s(?P<value>.*)$")
_DIMSE_STATUS = re.compile(r"0x(?P<code>[0-9a-fA-F]{4})")


@dataclasses.dataclass(frozen=True)
class DimseMessage:
    """One DIMSE message as a DCMTK tool logged it at ``-d``."""

    direction: str  # "INCOMING" or "OUTGOING"
    fields: dict[str, str]

    @property
    def type(self) -> str:
        return self.fields.get("Message Type", "")

    @property
    def status(self) -> int | None:
        m = _DIMSE_STATUS.match(self.fields.get("DIMSE Status", ""))
        return int(m["code"], 16) if m else None

    def count(self, what: str) -> int | None:
        """A sub-operation count ("Completed", "Failed", ...); None when absent."""
        value = self.fields.get(f"{what} Suboperations", "").strip()
        return int(value) if value.isdigit() else None


def dcmtk_dimse_messages(text: str) -> list[DimseMessage]:
    """The DIMSE messages in a DCMTK tool's ``-d`` log, in order."""
    messages: list[DimseMessage] = []
    current: dict[str, str] | None = None
    direction = ""
    for line in text.splitlines():
        if m := _DIMSE_START.search(line):
            current, direction = {}, m["direction"]
        elif _DIMSE_END.search(line):
            if current is not None:
                messages.append(DimseMessage(direction, current))
            current = None
        elif current is not None and (m := _DIMSE_FIELD.match(line)):
            current[m["key"]] = m["value"].strip()
    return messages
