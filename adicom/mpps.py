"""Modality Performed Procedure Step (PS3.4 Annex F): a modality reports what it did.

The modality (SCU) creates an MPPS instance with N-CREATE when it starts a
procedure step, its status "IN PROGRESS", then updates it with N-SET, last
to "COMPLETED" or "DISCONTINUED"; after that the instance may no longer
change (PS3.4 F.7.2.2.2). :class:`MppsStore` is the SCP's handler
(``Server(n_handlers={MPPS: store})``): it keeps each instance as a DICOM
file in a folder (written whole, then renamed into place), checks the state
transitions and answers the statuses of PS3.4 F.7.2.1.4 and F.7.2.2.4.

The SCU side is the plain DIMSE-N of :mod:`adicom.nservices`
(:func:`~adicom.nservices.n_create`, :func:`~adicom.nservices.n_set`);
:func:`create_mpps` and :func:`set_mpps` name the class and check the status.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from adicom.dimse import CommandField, Status
from adicom.fileformat import is_valid_uid
from adicom.negotiation import IMPLEMENTATION_CLASS_UID
from adicom.nservices import NRequest, NResponse, NResult, n_create, n_set
from adicom.presentation import MPPS

if TYPE_CHECKING:
    from adicom.association import Association

__all__ = [
    "MPPS",
    "MPPS_STATES",
    "MppsStore",
    "create_mpps",
    "set_mpps",
]

log = logging.getLogger("adicom")

#: The values of Performed Procedure Step Status (0040,0252) (PS3.3 C.4.14).
MPPS_STATES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")
#: Error ID (0000,0903) of "Performed Procedure Step Object may no longer be
#: updated" (PS3.4 Table F.7.2-2), sent with status 0x0110.
NO_LONGER_UPDATABLE = 0xA710
#: At most this many MPPS instances are kept; beyond, N-CREATE gets 0x0213.
MAX_INSTANCES = 100_000

_STATUS_TAG = 0x00400252


class MppsStore:
    """Keeps MPPS instances in ``folder`` (one ``<SOP Instance UID>.dcm`` each).

    The instances in the folder are read when the store is made, so a
    restarted server goes on with the steps it knew. Files are small and
    written on the event loop, whole to a temporary name, then renamed.
    """

    def __init__(self, folder: str | os.PathLike[str], *, max_instances: int = MAX_INSTANCES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_instances = max_instances
        #: SOP Instance UID -> the instance as it stands.
        self.instances: dict[str, Dataset] = {}
        for path in sorted(self.folder.glob("*.dcm")):
            try:
                dataset = pydicom.dcmread(path)
            except Exception as exc:  # pydicom raises many kinds on bad data
                log.warning("MPPS: skipping %s, which does not read: %s", path, exc)
                continue
            self.instances[path.stem] = dataset
        with contextlib.suppress(FileNotFoundError):
            for leftover in self.folder.glob("*.tmp"):
                leftover.unlink()

    def status(self, sop_instance_uid: str) -> str | None:
        """The Performed Procedure Step Status of an instance, None if unknown."""
        dataset = self.instances.get(sop_instance_uid)
        return None if dataset is None else str(dataset.get("PerformedProcedureStepStatus", ""))

    async def __call__(self, request: NRequest) -> NResponse:
        """The N-CREATE and N-SET handler; a refusal is logged with its reason."""
        if request.field == CommandField.N_CREATE_RQ:
            response = self._create(request)
        elif request.field == CommandField.N_SET_RQ:
            response = self._set(request)
        else:
            response = NResponse(Status.UNRECOGNIZED_OPERATION)
        if response.status != Status.SUCCESS:
            log.warning(
                "MPPS: %s of %s from %s refused: 0x%04X %s",
                request.command.name,
                request.sop_instance_uid or "a new step",
                request.calling_ae,
                response.status,
                response.error_comment or "",
            )
        return response

    def _create(self, request: NRequest) -> NResponse:
        # PS3.4 F.7.2.1.2: the SCU may give the SOP Instance UID or leave it to us.
        uid = request.sop_instance_uid or generate_uid()
        if not is_valid_uid(uid):
            return NResponse(Status.INVALID_ATTRIBUTE_VALUE, error_comment="not a SOP Instance UID")
        if uid in self.instances:
            return NResponse(Status.DUPLICATE_SOP_INSTANCE, error_comment=f"{uid} exists already")
        if len(self.instances) >= self.max_instances:
            return NResponse(Status.RESOURCE_LIMITATION, error_comment="too many MPPS instances")
        dataset = request.dataset or Dataset()
        state = str(dataset.get("PerformedProcedureStepStatus", ""))
        if not state:
            return NResponse(
                Status.MISSING_ATTRIBUTE_VALUE
                if "PerformedProcedureStepStatus" in dataset
                else Status.MISSING_ATTRIBUTE,
                error_comment="no Performed Procedure Step Status (0040,0252)",
                offending_element=(_STATUS_TAG,),
            )
        if state != "IN PROGRESS":
            # PS3.4 F.7.2.1: an MPPS is created "IN PROGRESS".
            return NResponse(
                Status.INVALID_ATTRIBUTE_VALUE,
                error_comment=f"created as {state!r}, not IN PROGRESS",
                offending_element=(_STATUS_TAG,),
            )
        stored = Dataset()
        stored.update(dataset)
        stored.SOPClassUID = MPPS
        stored.SOPInstanceUID = uid
        failure = self._write(uid, stored)
        if failure is not None:
            return failure
        self.instances[uid] = stored
        log.info("MPPS %s created by %s: IN PROGRESS", uid, request.calling_ae)
        return NResponse(sop_instance_uid=uid)

    def _set(self, request: NRequest) -> NResponse:
        uid = request.sop_instance_uid or ""
        held = self.instances.get(uid)
        if held is None:
            return NResponse(Status.NO_SUCH_SOP_INSTANCE, error_comment=f"no MPPS {uid}")
        current = str(held.get("PerformedProcedureStepStatus", ""))
        if current != "IN PROGRESS":
            # PS3.4 F.7.2.2.2, Table F.7.2-2: a completed or discontinued step is final.
            return NResponse(
                Status.PROCESSING_FAILURE,
                error_comment="Performed Procedure Step Object may no longer be updated",
                error_id=NO_LONGER_UPDATABLE,
            )
        changes = request.dataset or Dataset()
        if "SOPInstanceUID" in changes or "SOPClassUID" in changes:
            return NResponse(
                Status.INVALID_ATTRIBUTE_VALUE, error_comment="the SOP UIDs cannot be set"
            )
        state = str(changes.get("PerformedProcedureStepStatus", current))
        if state not in MPPS_STATES:
            return NResponse(
                Status.INVALID_ATTRIBUTE_VALUE,
                error_comment=f"{state!r} is not IN PROGRESS, COMPLETED or DISCONTINUED",
                offending_element=(_STATUS_TAG,),
            )
        updated = Dataset()
        updated.update(held)
        for element in changes:
            if element.is_empty and element.tag in updated:
                # PS3.4 F.7.2.2: a zero-length value removes the value.
                updated[element.tag].value = None if element.VR != "SQ" else []
            else:
                updated[element.tag] = element
        failure = self._write(uid, updated)
        if failure is not None:
            return failure
        self.instances[uid] = updated
        log.info("MPPS %s set by %s: %s", uid, request.calling_ae, state)
        return NResponse()

    def _write(self, uid: str, dataset: Dataset) -> NResponse | None:
        """Keep the instance on disk; the failure to answer when that fails."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(MPPS)
        meta.MediaStorageSOPInstanceUID = UID(uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        buffer = io.BytesIO()
        dataset.file_meta = meta
        try:
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        except Exception as exc:  # pydicom raises many kinds on bad values
            return NResponse(Status.INVALID_ATTRIBUTE_VALUE, error_comment=f"cannot encode: {exc}")
        final = self.folder / f"{uid}.dcm"
        temp = final.with_suffix(".tmp")
        try:
            temp.write_bytes(buffer.getvalue())
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            log.error("MPPS: cannot keep %s: %s", uid, exc)
            return NResponse(Status.PROCESSING_FAILURE, error_comment=f"cannot keep it: {exc}")
        return None


async def create_mpps(
    association: Association, attributes: Dataset, sop_instance_uid: str | None = None
) -> str:
    """N-CREATE an MPPS "IN PROGRESS"; returns its SOP Instance UID, raises on failure."""
    if "PerformedProcedureStepStatus" not in attributes:
        attributes.PerformedProcedureStepStatus = "IN PROGRESS"
    result = (await n_create(association, MPPS, attributes, sop_instance_uid)).check(
        "MPPS N-CREATE"
    )
    uid = result.sop_instance_uid or sop_instance_uid
    if not uid:
        raise ValueError("the SCP did not say which MPPS instance it created")
    return uid


async def set_mpps(association: Association, sop_instance_uid: str, changes: Dataset) -> NResult:
    """N-SET an MPPS (last to COMPLETED or DISCONTINUED); raises on failure."""
    return (await n_set(association, MPPS, sop_instance_uid, changes)).check("MPPS N-SET")
