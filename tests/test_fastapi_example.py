"""The FastAPI example app, called through httpx's ASGI transport against a real Q/R SCP."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

import adicom
from adicom.archive import Archive

pytestmark = pytest.mark.anyio

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_example() -> ModuleType:
    path = ROOT / "docs" / "examples" / "fastapi_app.py"
    spec = importlib.util.spec_from_file_location("fastapi_app_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_find_and_retrieve_through_the_api(tmp_path: pathlib.Path) -> None:
    example = load_example()
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    archive = Archive(tmp_path / "pacs")
    async with adicom.Server("PACS_SERVER", port=0, **archive.handlers()) as server:
        pacs = adicom.DicomNode(aet="PACS_SERVER", host="127.0.0.1", port=server.port)
        (stored,) = await adicom.store("127.0.0.1", server.port, [ct], called_ae="PACS_SERVER")
        assert stored.ok
        app = example.create_app(pacs, tmp_path / "gateway", adicom.DicomSettings(aet="CLARINET"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            found = await http.get("/dicom/studies/1CT1")
            assert found.status_code == 200
            (study,) = found.json()["studies"]
            expected = pydicom.dcmread(ct)
            assert study["study_instance_uid"] == expected.StudyInstanceUID
            assert study["patient_name"] == str(expected.PatientName)

            retrieved = await http.post(f"/dicom/studies/{expected.StudyInstanceUID}/retrieve")
            assert retrieved.json() == {"status": "success", "completed": 1, "failed": 0}
            (path,) = (tmp_path / "gateway" / "dicom" / expected.StudyInstanceUID).rglob("*.dcm")
            assert pydicom.dcmread(path).PixelData == expected.PixelData

            nobody = await http.get("/dicom/studies/NOBODY")
            assert nobody.json() == {"studies": []}
            bad = await http.post("/dicom/studies/not-a-uid/retrieve")
            assert bad.status_code == 422
    archive.close()
    # The PACS is gone: the API says so instead of hanging or crashing.
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        down = await http.get("/dicom/studies/1CT1")
        assert down.status_code == 502 and "Connection refused" in down.json()["detail"]
