"""C-STORE between adicom and real peers (pynetdicom, DCMTK), adicom on at least one side.

Every cell checks content, not just status: each received instance is read
back and compared with the sent one element by element (tests/interop/data.py),
with a compressed Pixel Data required to arrive byte for byte in its own
transfer syntax.

Samples: pydicom's bundled files, one per transfer syntax (implicit VR LE,
explicit VR LE and BE, JPEG baseline, extended, lossless SV1, JPEG-LS
lossless, JPEG 2000 lossless and any, RLE), and a synthetic 200 MiB instance.

Cells:
- adicom -> adicom (in process, DiskStorage and MemoryStorage; files and
  pydicom Datasets; no thread ever started)
- DCMTK storescu -> adicom: in process (each transfer syntax, proposed with
  the matching storescu option) and ``adicom serve --storage`` (a process)
- pynetdicom SCU -> adicom (DiskStorage and MemoryStorage)
- adicom -> DCMTK storescp (+xa: everything; +xi / +xe: the uncompressed
  syntax forced) and -> pynetdicom SCP
- the 200 MiB instance: adicom -> adicom, DCMTK storescu -> adicom,
  adicom -> DCMTK storescp
- ``adicom store`` (CLI): files to pynetdicom; a folder (recursive) holding
  one non-DICOM file to DCMTK storescp (skipped and named, exit 0, the rest
  intact)

Transfer syntax expectations. Where the receiver can only have accepted the
file's own syntax (the peer proposes or accepts just that one), the received
file must carry it; explicit VR big endian (retired) may always be converted
to another uncompressed syntax. A compressed instance must always keep its
syntax. Elsewhere an uncompressed instance may be converted, and the values
must still be equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import anyio
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

import adicom
from adicom import DiskStorage, MemoryStorage, StoreResult
from tests.interop import data, peers
from tests.interop.data import Instance

pytestmark = pytest.mark.interop

HOST = peers.HOST
ADICOM_AE = "ADICOM"
ADICOM_SCU_AE = "ADICOM-SCU"
PEER_SCU_AE = "PEER-SCU"
TEST_DEADLINE = 60.0
BIG_DEADLINE = 100.0  # under pytest-timeout's 120 s

ALL_LABELS = tuple(spec.label for spec in data.SAMPLE_SPECS)

SameTS = Callable[[Instance], bool | None]


def own_syntax(instance: Instance) -> bool | None:
    """The receiver got the file's own syntax (big endian may be converted)."""
    return instance.transfer_syntax != ExplicitVRBigEndian


def any_uncompressed(instance: Instance) -> bool | None:
    """An uncompressed instance may arrive in another uncompressed syntax."""
    return None


# --------------------------------------------------------------------------
# Checks


def check_results(
    results: Sequence[StoreResult], sent: Sequence[Instance], sources: Sequence[str]
) -> None:
    """adicom.store's results: one per input, all successful, naming the instance."""
    shown = "\n  ".join(map(repr, results))
    assert len(results) == len(sent), f"{len(results)} results for {len(sent)} inputs:\n  {shown}"
    by_source = {r.source: r for r in results}
    for instance, source in zip(sent, sources, strict=True):
        r = by_source.get(source)
        assert r is not None, f"no result for {source}:\n  {shown}"
        assert r.ok and r.status == 0x0000 and r.error is None, f"{instance.label}: {r!r}"
        assert r.sop_class_uid == instance.sop_class_uid, f"{instance.label}: {r!r}"
        assert r.sop_instance_uid == instance.sop_instance_uid, f"{instance.label}: {r!r}"


def check_disk_storage(
    root: Path,
    sent: Sequence[Instance],
    *,
    calling_ae: str,
    same_ts: SameTS,
    context: str = "",
) -> None:
    """DiskStorage under ``root`` holds exactly ``sent``, at the default layout, intact."""
    expected = {data.layout_path(root, instance) for instance in sent}
    # `adicom serve --storage` is an archive: its SQLite index lives there too.
    present = {p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".adicom-index")}
    assert present == expected, (
        f"files under {root}:\n  missing: {sorted(map(str, expected - present))}\n"
        f"  unexpected: {sorted(map(str, present - expected))}\n{context}"
    )
    for instance in sent:
        with _context(context):
            data.assert_same_instance(
                instance,
                data.layout_path(root, instance),
                same_transfer_syntax=same_ts(instance),
                calling_ae=calling_ae,
            )


def check_memory_storage(
    storage: MemoryStorage, sent: Sequence[Instance], *, same_ts: SameTS
) -> None:
    received = {str(ds.SOPInstanceUID): ds for ds in storage.datasets}
    assert len(storage.datasets) == len(sent), [str(ds.SOPInstanceUID) for ds in storage.datasets]
    assert set(received) == {i.sop_instance_uid for i in sent}
    for instance in sent:
        data.assert_same_instance(
            instance, received[instance.sop_instance_uid], same_transfer_syntax=same_ts(instance)
        )


def check_directory(
    directory: Path, sent: Sequence[Instance], *, same_ts: SameTS, context: str = ""
) -> None:
    """A peer SCP wrote exactly ``sent`` (one file each) into ``directory``, intact."""
    received = data.received_files(directory)
    assert set(received) == {i.sop_instance_uid for i in sent}, (
        f"received {sorted(received)}, sent {[i.sop_instance_uid for i in sent]}\n{context}"
    )
    for instance in sent:
        with _context(context):
            data.assert_same_instance(
                instance,
                received[instance.sop_instance_uid],
                same_transfer_syntax=same_ts(instance),
            )


@contextlib.contextmanager
def _context(text: str) -> Iterator[None]:
    """Append ``text`` (a peer's output) to an assertion failing inside."""
    try:
        yield
    except AssertionError as exc:
        if not text:
            raise
        raise AssertionError(f"{exc}\n{text}") from None


@contextlib.asynccontextmanager
async def no_thread_started() -> AsyncIterator[None]:
    """Fail if a second thread exists at any sampled moment inside the block."""
    seen: list[list[str]] = []

    async def watch() -> None:
        while True:
            if threading.active_count() != 1:
                seen.append([t.name for t in threading.enumerate()])
            await asyncio.sleep(0.005)

    assert threading.active_count() == 1, threading.enumerate()
    # A bare asyncio task rather than a task group, so that a failure inside
    # the block comes out as itself, not wrapped in an exception group.
    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])
    assert not seen, f"threads seen: {seen[0]}"
    assert threading.active_count() == 1, threading.enumerate()


def pick(samples: dict[str, Instance], labels: Sequence[str]) -> list[Instance]:
    return [samples[label] for label in labels]


# --------------------------------------------------------------------------
# adicom -> adicom


@pytest.mark.anyio
async def test_adicom_to_adicom_disk(samples: dict[str, Instance], tmp_path: Path) -> None:
    sent = pick(samples, ALL_LABELS)
    with anyio.fail_after(TEST_DEADLINE):
        async with no_thread_started():
            async with adicom.Server(
                ADICOM_AE, host=HOST, port=0, storage=DiskStorage(tmp_path)
            ) as server:
                results = await adicom.store(
                    HOST,
                    server.port,
                    [i.path for i in sent],
                    calling_ae=ADICOM_SCU_AE,
                    called_ae=ADICOM_AE,
                    timeout=30.0,
                )
    check_results(results, sent, [str(i.path) for i in sent])
    check_disk_storage(tmp_path, sent, calling_ae=ADICOM_SCU_AE, same_ts=own_syntax)


@pytest.mark.anyio
async def test_adicom_datasets_to_adicom_memory(samples: dict[str, Instance]) -> None:
    sent = pick(samples, ALL_LABELS)
    datasets = [pydicom.dcmread(i.path) for i in sent]
    storage = MemoryStorage()
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom.Server(ADICOM_AE, host=HOST, port=0, storage=storage) as server:
            results = await adicom.store(
                HOST,
                server.port,
                datasets,
                calling_ae=ADICOM_SCU_AE,
                called_ae=ADICOM_AE,
                timeout=30.0,
            )
    check_results(results, sent, [i.sop_instance_uid for i in sent])
    check_memory_storage(storage, sent, same_ts=own_syntax)


@pytest.mark.anyio
@pytest.mark.slow
async def test_big_adicom_to_adicom(big_instance: Instance, tmp_path: Path) -> None:
    with anyio.fail_after(BIG_DEADLINE):
        async with no_thread_started():
            async with adicom.Server(
                ADICOM_AE, host=HOST, port=0, storage=DiskStorage(tmp_path)
            ) as server:
                results = await adicom.store(
                    HOST,
                    server.port,
                    [big_instance.path],
                    calling_ae=ADICOM_SCU_AE,
                    called_ae=ADICOM_AE,
                    timeout=60.0,
                )
    check_results(results, [big_instance], [str(big_instance.path)])
    check_disk_storage(tmp_path, [big_instance], calling_ae=ADICOM_SCU_AE, same_ts=own_syntax)


# --------------------------------------------------------------------------
# DCMTK storescu -> adicom


@pytest.mark.anyio
@pytest.mark.parametrize("label", ALL_LABELS)
async def test_dcmtk_storescu_to_adicom(
    samples: dict[str, Instance], tmp_path: Path, label: str
) -> None:
    instance = samples[label]
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom.Server(
            ADICOM_AE, host=HOST, port=0, storage=DiskStorage(tmp_path)
        ) as server:
            argv = peers.dcmtk_storescu_argv(
                server.port, PEER_SCU_AE, ADICOM_AE, [instance.path], [instance.storescu_option]
            )
            finished = await peers.run_async(argv)
    assert finished.returncode == 0, finished.describe()
    check_disk_storage(
        tmp_path,
        [instance],
        calling_ae=PEER_SCU_AE,
        same_ts=own_syntax,
        context=finished.describe(),
    )


@pytest.mark.anyio
@pytest.mark.slow
async def test_big_dcmtk_storescu_to_adicom(big_instance: Instance, tmp_path: Path) -> None:
    with anyio.fail_after(BIG_DEADLINE):
        async with adicom.Server(
            ADICOM_AE, host=HOST, port=0, storage=DiskStorage(tmp_path)
        ) as server:
            argv = peers.dcmtk_storescu_argv(
                server.port, PEER_SCU_AE, ADICOM_AE, [big_instance.path], ["-xe"], timeout=60
            )
            finished = await peers.run_async(argv, timeout=90.0)
    assert finished.returncode == 0, finished.describe()
    check_disk_storage(
        tmp_path,
        [big_instance],
        calling_ae=PEER_SCU_AE,
        same_ts=own_syntax,
        context=finished.describe(),
    )


# (storescu options, labels, the syntax expectation)
_SERVE_CELLS = {
    # storescu's defaults: separate contexts per SOP class, explicit LE alone
    # and {BE, implicit}; it may convert a file to whichever was accepted.
    "uncompressed-defaults": ((), data.UNCOMPRESSED_LABELS, any_uncompressed),
    "implicit-only": (("-xi",), ("implicit-le", "implicit-le-rtplan"), own_syntax),
    "jpeg-lossless": (("-xs",), ("jpeg-lossless",), own_syntax),
    "jpeg2000": (("-xw",), ("jpeg2000",), own_syntax),
    "rle": (("-xr",), ("rle",), own_syntax),
}


@pytest.mark.parametrize("cell", list(_SERVE_CELLS))
def test_dcmtk_storescu_to_adicom_serve(
    samples: dict[str, Instance], tmp_path: Path, cell: str
) -> None:
    options, labels, same_ts = _SERVE_CELLS[cell]
    sent = pick(samples, labels)
    storage = tmp_path / "storage"
    storage.mkdir()
    with peers.adicom_serve_storage(storage, ADICOM_AE) as serve:
        assert serve.port is not None
        argv = peers.dcmtk_storescu_argv(
            serve.port, PEER_SCU_AE, ADICOM_AE, [i.path for i in sent], options
        )
        finished = peers.run(argv)
        context = f"{finished.describe()}\n{serve.describe()}"
        assert finished.returncode == 0, context
        check_disk_storage(storage, sent, calling_ae=PEER_SCU_AE, same_ts=same_ts, context=context)


# --------------------------------------------------------------------------
# pynetdicom SCU -> adicom


@pytest.mark.anyio
async def test_pynetdicom_scu_to_adicom_disk(samples: dict[str, Instance], tmp_path: Path) -> None:
    sent = pick(samples, ALL_LABELS)
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom.Server(
            ADICOM_AE, host=HOST, port=0, storage=DiskStorage(tmp_path)
        ) as server:
            argv = peers.pynetdicom_store_scu_argv(
                server.port, PEER_SCU_AE, ADICOM_AE, [i.path for i in sent]
            )
            finished = await peers.run_async(argv)
    outcome = peers.parse_pynetdicom_store_scu(finished)
    assert outcome["ok"], finished.describe()
    # pynetdicom proposed only each file's own syntax.
    check_disk_storage(
        tmp_path,
        sent,
        calling_ae=PEER_SCU_AE,
        same_ts=lambda i: True,
        context=finished.describe(),
    )


@pytest.mark.anyio
async def test_pynetdicom_scu_to_adicom_memory(samples: dict[str, Instance]) -> None:
    sent = pick(samples, ("implicit-le-rtplan", "explicit-le", "jpeg2000", "jpeg-lossless"))
    storage = MemoryStorage()
    with anyio.fail_after(TEST_DEADLINE):
        async with adicom.Server(ADICOM_AE, host=HOST, port=0, storage=storage) as server:
            argv = peers.pynetdicom_store_scu_argv(
                server.port, PEER_SCU_AE, ADICOM_AE, [i.path for i in sent]
            )
            finished = await peers.run_async(argv)
    assert peers.parse_pynetdicom_store_scu(finished)["ok"], finished.describe()
    check_memory_storage(storage, sent, same_ts=lambda i: True)


# --------------------------------------------------------------------------
# adicom -> DCMTK storescp


@pytest.mark.anyio
async def test_adicom_to_dcmtk_storescp(samples: dict[str, Instance], tmp_path: Path) -> None:
    sent = pick(samples, ALL_LABELS)
    with peers.dcmtk_store_scp(tmp_path, accept="+xa") as scp:
        assert scp.port is not None and scp.aet is not None
        with anyio.fail_after(TEST_DEADLINE):
            results = await adicom.store(
                HOST,
                scp.port,
                [i.path for i in sent],
                calling_ae=ADICOM_SCU_AE,
                called_ae=scp.aet,
                timeout=30.0,
            )
        with _context(scp.describe()):
            check_results(results, sent, [str(i.path) for i in sent])
        check_directory(tmp_path, sent, same_ts=any_uncompressed, context=scp.describe())


# storescp accepting only one uncompressed syntax (+xi), or preferring
# explicit VR little endian (+xe): the instance must arrive in that syntax.
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("accept", "labels"),
    [("+xi", ("implicit-le", "implicit-le-rtplan")), ("+xe", ("explicit-le",))],
    ids=["implicit-only", "explicit-le-preferred"],
)
async def test_adicom_to_dcmtk_storescp_uncompressed(
    samples: dict[str, Instance], tmp_path: Path, accept: str, labels: tuple[str, ...]
) -> None:
    sent = pick(samples, labels)
    with peers.dcmtk_store_scp(tmp_path, accept=accept) as scp:
        assert scp.port is not None and scp.aet is not None
        with anyio.fail_after(TEST_DEADLINE):
            results = await adicom.store(
                HOST,
                scp.port,
                [i.path for i in sent],
                calling_ae=ADICOM_SCU_AE,
                called_ae=scp.aet,
                timeout=30.0,
            )
        with _context(scp.describe()):
            check_results(results, sent, [str(i.path) for i in sent])
        check_directory(tmp_path, sent, same_ts=lambda i: True, context=scp.describe())


@pytest.mark.anyio
async def test_adicom_datasets_to_dcmtk_storescp(
    samples: dict[str, Instance], tmp_path: Path
) -> None:
    sent = pick(samples, ("implicit-le", "explicit-le", "jpeg-baseline", "rle"))
    datasets = [pydicom.dcmread(i.path) for i in sent]
    with peers.dcmtk_store_scp(tmp_path, accept="+xa") as scp:
        assert scp.port is not None and scp.aet is not None
        with anyio.fail_after(TEST_DEADLINE):
            results = await adicom.store(
                HOST,
                scp.port,
                datasets,
                calling_ae=ADICOM_SCU_AE,
                called_ae=scp.aet,
                timeout=30.0,
            )
        with _context(scp.describe()):
            check_results(results, sent, [i.sop_instance_uid for i in sent])
        check_directory(tmp_path, sent, same_ts=any_uncompressed, context=scp.describe())


@pytest.mark.anyio
@pytest.mark.slow
async def test_big_adicom_to_dcmtk_storescp(big_instance: Instance, tmp_path: Path) -> None:
    with peers.dcmtk_store_scp(tmp_path, accept="+xa") as scp:
        assert scp.port is not None and scp.aet is not None
        with anyio.fail_after(BIG_DEADLINE):
            results = await adicom.store(
                HOST,
                scp.port,
                [big_instance.path],
                calling_ae=ADICOM_SCU_AE,
                called_ae=scp.aet,
                timeout=60.0,
            )
        with _context(scp.describe()):
            check_results(results, [big_instance], [str(big_instance.path)])
        check_directory(tmp_path, [big_instance], same_ts=any_uncompressed, context=scp.describe())


# --------------------------------------------------------------------------
# adicom -> pynetdicom SCP


@pytest.mark.anyio
async def test_adicom_to_pynetdicom_scp(samples: dict[str, Instance], tmp_path: Path) -> None:
    sent = pick(samples, ALL_LABELS)
    with peers.pynetdicom_store_scp(tmp_path) as scp:
        assert scp.port is not None and scp.aet is not None
        with anyio.fail_after(TEST_DEADLINE):
            results = await adicom.store(
                HOST,
                scp.port,
                [i.path for i in sent],
                calling_ae=ADICOM_SCU_AE,
                called_ae=scp.aet,
                timeout=30.0,
            )
        with _context(scp.describe()):
            check_results(results, sent, [str(i.path) for i in sent])
        check_directory(tmp_path, sent, same_ts=any_uncompressed, context=scp.describe())


@pytest.mark.anyio
async def test_adicom_to_pynetdicom_scp_implicit_only(
    samples: dict[str, Instance], tmp_path: Path
) -> None:
    sent = pick(samples, ("implicit-le", "implicit-le-rtplan"))
    with peers.pynetdicom_store_scp(tmp_path, transfer_syntaxes=[ImplicitVRLittleEndian]) as scp:
        assert scp.port is not None and scp.aet is not None
        with anyio.fail_after(TEST_DEADLINE):
            results = await adicom.store(
                HOST,
                scp.port,
                [i.path for i in sent],
                calling_ae=ADICOM_SCU_AE,
                called_ae=scp.aet,
                timeout=30.0,
            )
        with _context(scp.describe()):
            check_results(results, sent, [str(i.path) for i in sent])
        check_directory(tmp_path, sent, same_ts=lambda i: True, context=scp.describe())


# --------------------------------------------------------------------------
# `adicom store` (CLI)


def test_adicom_store_cli_files_to_pynetdicom(samples: dict[str, Instance], tmp_path: Path) -> None:
    sent = pick(samples, ("implicit-le", "explicit-le", "jpeg2000", "jpeg-ls-lossless"))
    out = tmp_path / "received"
    out.mkdir()
    with peers.pynetdicom_store_scp(out) as scp:
        assert scp.port is not None and scp.aet is not None
        finished = peers.run(
            peers.adicom_store_argv(scp.port, ADICOM_SCU_AE, scp.aet, [i.path for i in sent])
        )
        context = f"{finished.describe()}\n{scp.describe()}"
        assert finished.returncode == 0, context
        assert (finished.stdout + finished.stderr).strip(), f"no summary\n{context}"
        check_directory(out, sent, same_ts=any_uncompressed, context=context)


def test_adicom_store_cli_folder_with_non_dicom_file(
    samples: dict[str, Instance], tmp_path: Path
) -> None:
    """A folder, recursively: the non-DICOM file is skipped (named, exit 0), the rest arrive."""
    folder = tmp_path / "export"
    placement = {
        "implicit-le": folder,
        "explicit-le": folder / "series1",
        "jpeg2000": folder / "series1" / "deeper",
        "rle": folder / "series2",
    }
    sent: list[Instance] = []
    for label, directory in placement.items():
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(samples[label].path, directory / samples[label].path.name)
        sent.append(samples[label])
    bad = folder / "series1" / "scan-notes.txt"
    bad.write_text("Not a DICOM file: notes taken at the scanner.\n" * 20)
    out = tmp_path / "received"
    out.mkdir()
    with peers.dcmtk_store_scp(out, accept="+xa") as scp:
        assert scp.port is not None and scp.aet is not None
        finished = peers.run(peers.adicom_store_argv(scp.port, ADICOM_SCU_AE, scp.aet, [folder]))
        context = f"{finished.describe()}\n{scp.describe()}"
        assert finished.returncode == 0, context
        output = finished.stdout + finished.stderr
        assert "Traceback" not in output, context
        assert any(str(bad) in line for line in output.splitlines()), (
            f"the output does not name {bad}\n{context}"
        )
        # The copies keep their content, so they compare with the samples.
        check_directory(out, sent, same_ts=any_uncompressed, context=context)
