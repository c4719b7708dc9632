"""`isco jobs ...`: submit a CSV to a running gateway, follow the job, download the result.

    isco jobs submit jobs.csv --wait --output coded.csv
    isco jobs get JOB_ID --output coded.csv
    isco jobs status JOB_ID | isco jobs list | isco jobs cancel JOB_ID

The gateway's URL and the API key come from --url / --api-key or ISCO_GATEWAY_URL / ISCO_API_KEY.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from shared.files import atomic_open

app = typer.Typer(help="Coding jobs on a running gateway: submit a CSV, follow it, download the result.")
err = Console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="ISCO_GATEWAY_URL", help="gateway base URL")]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="ISCO_API_KEY", help="API key", show_default=False)
]
DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")


def _client(url: str, api_key: str | None, timeout: float = 60.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(
        base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)
    )


def _fail(response: httpx.Response) -> None:
    """Print the gateway's error message and exit 2 (1 is kept for a job that failed)."""
    try:
        detail: Any = response.json().get("detail")
    except ValueError:
        detail = response.text[:500]
    # the API's ErrorResponse: {error, message, ...}, a list of {field, reason, type}, or a sentence
    if isinstance(detail, dict):
        message = detail.get("message") or detail.get("reason")
    elif isinstance(detail, list):
        message = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in detail if isinstance(e, dict))
    else:
        message = detail
    err.print(f"[red]error {response.status_code}[/red]: {message if message else json.dumps(detail)}")
    raise typer.Exit(2)


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/jobs/{job_id}")
    if response.status_code != 200:
        _fail(response)
    return response.json()


def _follow(client: httpx.Client, job: dict[str, Any], poll_s: float, quiet: bool) -> dict[str, Any]:
    """Poll until the job ends, with a progress bar on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=quiet, transient=False) as progress:
        bar = progress.add_task(f"job {job['job_id'][:10]} {job['status']}", total=job["rows_total"] or None)
        while job["status"] not in FINISHED:
            time.sleep(poll_s)
            job = _job(client, job["job_id"])
            progress.update(
                bar, completed=job["rows_done"], description=f"job {job['job_id'][:10]} {job['status']}"
            )
        progress.update(bar, completed=job["rows_done"])
    return job


def _download(client: httpx.Client, job_id: str, output: Path | None, accept: str = "text/csv") -> None:
    with client.stream("GET", f"/jobs/{job_id}/result", headers={"Accept": accept}) as response:
        if response.status_code != 200:
            response.read()
            _fail(response)
        if output is None or str(output) == "-":
            for chunk in response.iter_bytes():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        with atomic_open(output, binary=True) as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    err.print(f"result written to {output}")


def _report_end(job: dict[str, Any]) -> None:
    if job["status"] == "succeeded":
        err.print(f"[green]succeeded[/green]: {job['rows_done']} rows, {job['rows_failed']} with a row_error")
    else:
        err.print(f"[red]{job['status']}[/red]" + (f": {job['error']}" if job.get("error") else ""))
        raise typer.Exit(1)


@app.command()
def submit(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="UTF-8 CSV with job_title and/or duties_description, optionally industry",
        ),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="follow the job with a progress bar until it ends")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="with --wait: write the result here")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, max=20)] = 5,
    unit_threshold: Annotated[float | None, typer.Option(min=0, max=1, help="4-digit threshold")] = None,
    poll: Annotated[float, typer.Option(help="seconds between status checks")] = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Upload a CSV as a job; prints the job id on stdout."""
    params: dict[str, Any] = {"top_k": top_k}
    if unit_threshold is not None:
        params["unit_threshold"] = unit_threshold
    with _client(url, api_key, timeout=600.0) as client, open(file, "rb") as f:
        response = client.post("/predict/csv", params=params, files={"file": (file.name, f, "text/csv")})
        if response.status_code != 202:
            _fail(response)
        accepted = response.json()
        err.print(f"job {accepted['job_id']} queued: {accepted['rows_total']} rows")
        print(accepted["job_id"], flush=True)
        if not wait:
            return
        job = _follow(client, _job(client, accepted["job_id"]), poll, quiet)
        if job["status"] == "succeeded" and output is not None:
            _download(client, job["job_id"], output)
        _report_end(job)


@app.command()
def get(
    job_id: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file to write; default stdout")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="wait for the job to end first")] = False,
    poll: float = 1.0,
    json_result: Annotated[bool, typer.Option("--json", help="batch jobs: JSON instead of CSV")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Download a job's result (CSV)."""
    with _client(url, api_key) as client:
        if wait:
            job = _follow(client, _job(client, job_id), poll, quiet=False)
            if job["status"] != "succeeded":
                _report_end(job)
        _download(client, job_id, output, "application/json" if json_result else "text/csv")


@app.command()
def status(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Print a job's status as JSON."""
    with _client(url, api_key) as client:
        print(json.dumps(_job(client, job_id), indent=2))


@app.command("list")
def list_jobs(limit: int = 20, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """The jobs of this API key, newest first."""
    with _client(url, api_key) as client:
        response = client.get("/jobs", params={"limit": limit})
        if response.status_code != 200:
            _fail(response)
        for job in response.json():
            print(
                f"{job['job_id']}  {job['kind']:<5} {job['status']:<9} "
                f"{job['rows_done']:>9}/{job['rows_total']:<9} {job['created_at']}"
            )


@app.command()
def cancel(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Cancel a queued or running job."""
    with _client(url, api_key) as client:
        response = client.delete(f"/jobs/{job_id}")
        if response.status_code != 200:
            _fail(response)
        err.print(f"job {job_id}: {response.json()['status']}")
