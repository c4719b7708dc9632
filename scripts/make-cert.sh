#!/usr/bin/env bash
# Make a self-signed TLS certificate for local use of the nginx front (docker compose, tests).
# Real deployments mount their own tls.crt / tls.key at the same place (NGINX_CERT_DIR in .env).
#
#   scripts/make-cert.sh [OUT_DIR] [HOSTNAME]     (defaults: infra/nginx/certs, localhost)
set -euo pipefail

out_dir="${1:-$(dirname "$0")/../infra/nginx/certs}"
host="${2:-localhost}"
days="${CERT_DAYS:-365}"

command -v openssl >/dev/null || { echo "openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$out_dir"
if [[ -s "$out_dir/tls.crt" && -s "$out_dir/tls.key" && "${FORCE:-0}" != "1" ]]; then
  echo "certificate already in $out_dir (FORCE=1 to replace it)"
  exit 0
fi

# The SAN is what clients check; the CN alone is ignored by modern TLS clients.
san="DNS:localhost,IP:127.0.0.1,IP:::1"
[[ "$host" == "localhost" ]] || san="DNS:${host},${san}"
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$days" \
  -subj "/CN=${host}" \
  -addext "subjectAltName=${san}" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout "$out_dir/tls.key" -out "$out_dir/tls.crt" 2>/dev/null
# nginx's master process reads the key as root before dropping privileges; nobody else needs it.
chmod 600 "$out_dir/tls.key"
chmod 644 "$out_dir/tls.crt"
echo "wrote $out_dir/tls.crt and $out_dir/tls.key (self-signed for ${host}, ${days} days)"
