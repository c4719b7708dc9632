#!/usr/bin/env bash
# Smoke test of a running system, printed as a transcript: health, /predict/job, /predict/batch, and a CSV
# job from upload to result. Works against `make run` and against the compose deployment behind nginx.
#
#   scripts/smoke.sh [URL] [API_KEY]     (defaults: $ISCO_GATEWAY_URL or http://127.0.0.1:8000;
#                                         $ISCO_API_KEY or the key in var/dev-api-key)
#   CURL_OPTS="--cacert infra/nginx/certs/tls.crt" scripts/smoke.sh https://localhost
set -euo pipefail

url="${1:-${ISCO_GATEWAY_URL:-http://127.0.0.1:8000}}"
key="${2:-${ISCO_API_KEY:-}}"
if [[ -z "$key" && -f var/dev-api-key ]]; then key="$(cat var/dev-api-key)"; fi
[[ -n "$key" ]] || { echo "no API key: pass one, set ISCO_API_KEY, or run make run first" >&2; exit 2; }
read -r -a curl_opts <<< "${CURL_OPTS:-}"
timeout_s="${SMOKE_TIMEOUT_S:-300}"

body=""
show() {  # print the command (key elided), run it, print the answer and keep it in $body
  echo "\$ curl $(python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "$@" \
    | sed -e "s|${key}|\$ISCO_API_KEY|g" -e "s|${csv_dir:-/nonexistent}/||g")"
  body="$(curl -sS --fail-with-body "${curl_opts[@]}" "$@")"
  echo "$body"
  echo
}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "# health and readiness"
show "$url/health"
show "$url/ready"

echo "# one record"
show "$url/predict/job" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"id": "r1", "job_title": "Registered nurse", "duties_description": "cares for patients on a surgical ward, gives medication, keeps records"}'

echo "# a batch, answered in order"
show "$url/predict/batch" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"top_k": 3, "records": [{"id": "1", "job_title": "truck driver", "duties_description": "drives heavy goods vehicles between depots"}, {"id": "2", "job_title": "primary school teacher", "duties_description": "teaches reading and arithmetic to children"}, {"id": "3", "job_title": "software developer", "duties_description": "writes and tests web applications"}]}'

echo "# a CSV job: upload, poll, download"
csv_dir="$(mktemp -d)"
csv="$csv_dir/jobs.csv"
trap 'rm -rf "$csv_dir"' EXIT
cat > "$csv" <<'CSV'
job_title,duties_description,ref
Accountant,prepares financial statements and tax returns for clients,A-1
Electrician,installs and repairs wiring in houses,A-2
Chef,plans menus and cooks meals in a restaurant kitchen,A-3
Accountant,prepares financial statements and tax returns for clients,A-4
,,A-5
CSV
echo "\$ cat jobs.csv"; cat "$csv"; echo
show "$url/predict/csv" -H "Authorization: Bearer $key" -F "file=@$csv;type=text/csv"
job_id="$(echo "$body" | json "['job_id']")"
deadline=$((SECONDS + timeout_s))
while :; do
  status="$(curl -sS "${curl_opts[@]}" "$url/jobs/$job_id" -H "Authorization: Bearer $key")"
  state="$(echo "$status" | json "['status']")"
  [[ "$state" == "succeeded" || "$state" == "failed" || "$state" == "cancelled" ]] && break
  (( SECONDS < deadline )) || { echo "job $job_id still $state after ${timeout_s}s" >&2; exit 1; }
  sleep 0.5
done
show "$url/jobs/$job_id" -H "Authorization: Bearer $key"
show "$url/jobs/$job_id/result" -H "Authorization: Bearer $key"
[[ "$state" == "succeeded" ]] || exit 1
