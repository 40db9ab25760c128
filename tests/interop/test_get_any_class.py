"""C-GET of SOP classes and syntaxes the common offer lacks, from DCMTK's dcmqrscp (issue 12).

dcmqrscp holds a study of pydicom's files: CT (explicit VR), 12-lead ECG,
RT Dose in RLE, Secondary Capture in JPEG Extended (.4.51), RT Ion Plan
(implicit VR), MR in JPEG-LS; one syntax per class, since dcmqrscp sends a
sub-operation on the first context it accepted for the class. Its
association profile accepts each with the SCP role for C-GET; it is seeded
with ``adicom.store``.

dcmqrscp does not return SOP Class UID at IMAGE level, so adicom cannot
learn what to offer from its C-FIND: the common offer is made, and the
classes it lacks fail, each named by ``result.failures``. With ``--offer``
(``DicomClient(get_offer=...)``) every instance comes back, with identical
data elements and byte-identical pixel data.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator, Iterator

import pydicom
import pytest

import adicom
from tests.interop import peers
from tests.test_get_contexts import (
    CT,
    ECG,
    EXPLICIT,
    IMPLICIT,
    JPEG_EXTENDED,
    JPEG_LS,
    MIXED,
    MR_IMAGE,
    RLE,
    RT_DOSE,
    RT_ION_PLAN,
    SC,
    assert_same,
    mixed_study,
)

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

#: One syntax per class (see the module's docstring).
HELD = {CT: EXPLICIT, ECG: EXPLICIT, RT_DOSE: RLE, SC: JPEG_EXTENDED, RT_ION_PLAN: IMPLICIT,
        MR_IMAGE: JPEG_LS}  # fmt: skip
QR_MODELS = [f"1.2.840.10008.5.1.4.1.2.{root}.{n}" for root in (1, 2) for n in (1, 2, 3)]


@pytest.fixture(autouse=True)
def _lenient_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


def profile() -> str:
    """dcmqrscp's association profile: the Q/R models, and each class in its syntax."""
    lines = ["[[TransferSyntaxes]]", "[Uncompressed]"]
    lines += [f"TransferSyntax{n} = {ts}" for n, ts in enumerate((EXPLICIT, IMPLICIT), 1)]
    for ts in sorted(set(HELD.values()) - {EXPLICIT, IMPLICIT}):
        lines += [f"[TS{ts.replace('.', '_')}]", f"TransferSyntax1 = {ts}"]
    lines += ["", "[[PresentationContexts]]", "[Incoming]"]
    entries = [("1.2.840.10008.1.1", "Uncompressed")]
    entries += [(model, "Uncompressed") for model in QR_MODELS]
    for sop, ts in HELD.items():
        group = "Uncompressed" if ts in (EXPLICIT, IMPLICIT) else f"TS{ts.replace('.', '_')}"
        entries.append((sop, group))
    lines += [
        f"PresentationContext{n} = {sop}\\{group}" for n, (sop, group) in enumerate(entries, 1)
    ]
    lines += ["", "[[SCPSCURoleSelection]]", "[GetRoles]"]
    lines += [f"Role{n} = {sop}\\BOTH" for n, sop in enumerate(HELD, 1)]
    lines += ["", "[[Profiles]]", "[QRIn]", "PresentationContexts = Incoming"]
    lines += ["SCPSCURoleSelection = GetRoles", ""]
    return "\n".join(lines)


@contextlib.contextmanager
def dcmqrscp(aet: str = "DCMQRSCP") -> Iterator[adicom.DicomNode]:
    with peers.dcmtk_dcmqrscp(aet, profile()) as peer:
        assert peer.port is not None
        try:
            yield adicom.DicomNode(aet=aet, host=peers.HOST, port=peer.port)
        except BaseException:
            print(peer.describe())
            raise


def held_study(folder: pathlib.Path) -> tuple[str, dict[str, pathlib.Path]]:
    """The mixed study of tests/test_get_contexts.py, one syntax per class."""
    study, files = mixed_study(folder)
    keep = {}
    for uid, path in files.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if HELD.get(ds.SOPClassUID) == ds.file_meta.TransferSyntaxUID:
            keep[uid] = path
    assert len(keep) == len(HELD) < len(MIXED)
    return study, keep


@contextlib.asynccontextmanager
async def seeded(
    tmp_path: pathlib.Path,
) -> AsyncIterator[tuple[adicom.DicomNode, str, dict[str, pathlib.Path]]]:
    study, files = held_study(tmp_path / "src")
    with dcmqrscp() as node:
        stored = await adicom.DicomClient(calling_aet="SEEDER").store(list(files.values()), node)
        assert all(r.ok for r in stored), [(r.source, r.error) for r in stored]
        yield node, study, files


async def test_the_common_offer_names_what_it_could_not_bring(tmp_path: pathlib.Path) -> None:
    async with seeded(tmp_path) as (node, study, files):
        result = await adicom.DicomClient().get_study_to_memory(study, node)
    got = {ds.SOPInstanceUID for ds in result.instances}
    classes = {pydicom.dcmread(files[uid], stop_before_pixels=True).SOPClassUID for uid in got}
    # CT and JPEG-LS MR are in the common offer; the rest is not.
    assert classes == {CT, MR_IMAGE}
    assert result.num_failed == len(HELD) - 2
    assert {f.sop_instance_uid for f in result.failures} == set(files) - got
    for failure in result.failures:
        assert failure.reason.startswith("the peer gave no reason; its C-FIND did not say")


async def test_offer_brings_back_every_class_unchanged(tmp_path: pathlib.Path) -> None:
    offer = {sop: [ts] for sop, ts in HELD.items()}
    async with seeded(tmp_path) as (node, study, files):
        client = adicom.DicomClient(get_offer=offer)
        result = await client.get_study(study, node, tmp_path / "out")
        assert (result.status, result.num_completed, result.num_failed) == (
            "success",
            len(HELD),
            0,
        )
        for path in result.paths:
            received = pydicom.dcmread(path)
            assert_same(received, files[received.SOPInstanceUID])

        argv = [*peers.adicom_cli(), "get", "-k", f"StudyInstanceUID={study}"]
        argv += ["--out", str(tmp_path / "cli"), "--aec", node.aet, node.host, str(node.port)]
        for sop, ts in HELD.items():
            argv += ["--offer", f"{sop}={ts}"]
        finished = peers.run(argv)
        assert finished.returncode == 0, finished.describe()
        assert f"success: {len(HELD)} completed, 0 failed" in finished.stdout
        assert len(list((tmp_path / "cli").rglob("*.dcm"))) == len(HELD)
