#!/usr/bin/env bash
# A self-signed certificate for trials: make-cert.sh [DIR] [NAME...]
# Writes DIR/fullchain.pem and DIR/privkey.pem (DIR defaults to nginx/certs) valid for the
# names given (default: localhost and 127.0.0.1) for 30 days. Browsers warn about it;
# for production mount a real certificate (e.g. Let's Encrypt) at the same paths.
set -euo pipefail
dir=${1:-"$(dirname "$0")/certs"}
shift || true
names=("$@")
((${#names[@]})) || names=(localhost 127.0.0.1)
san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=${names[0]}" -addext "subjectAltName=${san%,}" \
  -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null
chmod 600 "$dir/privkey.pem"
echo "certificate for ${names[*]}: $dir/fullchain.pem (key $dir/privkey.pem)"
