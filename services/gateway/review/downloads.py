"""The reviewed result as a workbook, from the job list and the job's page.

    GET /review/jobs/{id}/result.xlsx   the result with final_code, coded_by and final_status (.xlsx)

The CSV form is `GET /review/jobs/{id}/result.csv` (decisions.py); both come from
`shared.review.exports.reviewed_rows`, so they have the same columns and cells.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from starlette.responses import Response

from services.gateway.deps import SessionDep
from services.gateway.downloads import xlsx_result
from services.gateway.review.pages import ReviewedJobDep
from shared.db.tables import JobStatus
from shared.review.decisions import decisions_for_job

router = APIRouter(prefix="/review", include_in_schema=False)


@router.get("/jobs/{job_id}/result.xlsx", name="review_result_xlsx")
def reviewed_result_xlsx(session: SessionDep, job: ReviewedJobDep) -> Response:
    if job.status != JobStatus.succeeded or not Path(job.result_path or "").is_file():
        raise HTTPException(
            409, detail={"error": "not_ready", "message": f"the job has no result ({job.status})"}
        )
    return xlsx_result(job, decisions_for_job(session, job.id), f"isco-{job.id}-reviewed.xlsx")
