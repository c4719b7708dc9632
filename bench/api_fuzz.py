"""Schemathesis over the whole API of a running gateway for a time budget; the summary goes to bench/results.

    PORT=9000 ISCO_API_KEY=fuzz-key make run            # in one terminal
    python -m bench.api_fuzz --url http://127.0.0.1:9000 --key fuzz-key --seconds 180

Every built-in check runs (response schema, status codes, content types, headers, no 5xx, invalid data
refused, valid data accepted, authentication enforced); bench/schemathesis.toml holds the one exception.
The test suite runs a bounded pass of the same checks (tests/test_gateway.py); this is the long one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

CONFIG = Path(__file__).with_name("schemathesis.toml")
RESULTS_DIR = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("ISCO_GATEWAY_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("ISCO_API_KEY"), help="a valid API key")
    parser.add_argument("--seconds", type=int, default=180, help="time budget of the whole run")
    args = parser.parse_args()
    if not args.key:
        parser.error("--key (or ISCO_API_KEY) is required: the API refuses requests without a valid key")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    junit = RESULTS_DIR / f"api-fuzz-{stamp}.xml"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file", str(CONFIG),
        "run", f"{args.url}/openapi.json",
        "--header", f"X-API-Key: {args.key}",
        "--max-time", str(args.seconds),
        "--report", "junit", "--report-junit-path", str(junit),
    ]  # fmt: skip
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True)
    print(run.stdout[-4000:], run.stderr[-2000:], sep="\n")
    suites = ET.parse(junit).getroot() if junit.exists() else None
    counts = {k: int(suites.get(k, 0)) for k in ("tests", "failures", "errors")} if suites is not None else {}
    summary = {
        "url": args.url,
        "seconds_budget": args.seconds,
        "seconds": round(time.monotonic() - started, 1),
        "exit_code": run.returncode,
        "junit": junit.name,
        **counts,
        "load_average": os.getloadavg(),
        "output_tail": run.stdout[-1500:],
    }
    path = RESULTS_DIR / f"api-fuzz-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {path}")
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
