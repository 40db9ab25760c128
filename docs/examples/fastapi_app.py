"""A FastAPI service over adicom's DicomClient (the reference README's example).

Run it against your PACS with, for example::

    ADICOM_AET=CLARINET PACS_AET=PACS_SERVER PACS_HOST=192.168.1.100 PACS_PORT=11112 \
        uvicorn docs.examples.fastapi_app:app

Every request runs on the event loop: no thread pool, no ``to_thread``.
"""

# No "from __future__ import annotations" here: FastAPI reads the
# dependency annotations at runtime, and ``Client`` is local to create_app.
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException

import adicom


def create_app(
    pacs: adicom.DicomNode, storage_path: Path, settings: adicom.DicomSettings
) -> FastAPI:
    """Build the app for one PACS; ``storage_path`` receives retrieved studies."""
    app = FastAPI(title="DICOM gateway")

    def get_dicom_client() -> adicom.DicomClient:
        return adicom.DicomClient.from_settings(settings)

    Client = Annotated[adicom.DicomClient, Depends(get_dicom_client)]

    @app.get("/dicom/studies/{patient_id}")
    async def find_patient_studies(patient_id: str, client: Client) -> dict[str, Any]:
        """Find all studies of a patient."""
        try:
            studies = await client.find_studies(adicom.StudyQuery(patient_id=patient_id), pacs)
        except ValueError as exc:  # an invalid query value: nothing was sent
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except adicom.DicomError as exc:  # unreachable, rejected, aborted, timed out
            raise HTTPException(status_code=502, detail=str(exc)) from None
        return {"studies": [study.model_dump(mode="json") for study in studies]}

    @app.post("/dicom/studies/{study_uid}/retrieve")
    async def retrieve_study(study_uid: str, client: Client) -> dict[str, Any]:
        """Retrieve a study (C-GET) into local storage."""
        output_dir = storage_path / "dicom" / study_uid
        try:
            result = await client.get_study(study_uid, pacs, output_dir)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except adicom.DicomError as exc:
            raise HTTPException(status_code=502, detail=str(exc)) from None
        return {
            "status": result.status,
            "completed": result.num_completed,
            "failed": result.num_failed,
        }

    return app


def _from_environment() -> FastAPI:
    pacs = adicom.DicomNode(
        aet=os.environ.get("PACS_AET", "PACS_SERVER"),
        host=os.environ.get("PACS_HOST", "127.0.0.1"),
        port=int(os.environ.get("PACS_PORT", "11112")),
    )
    storage = Path(os.environ.get("STORAGE_PATH", "./storage"))
    return create_app(pacs, storage, adicom.DicomSettings())


app = _from_environment()
