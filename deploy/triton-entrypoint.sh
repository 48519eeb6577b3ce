#!/usr/bin/env bash
# tritonserver for one pool of use cases (the Triton image's entrypoint; runs anywhere a
# tritonserver is on PATH). Renders triton_models/ for RTMEDIA_PLACEMENT, then serves:
#   RTMEDIA_TRITON_USE_CASES  use cases of this pool, e.g. "stt tts avatar"
#   RTMEDIA_TRITON_LOAD       models loaded at start, e.g. "whisper piper avatar"; the others
#                             load on demand (the media server's loader, repository API)
#   RTMEDIA_PLACEMENT         profile in triton_models/placement.json (default single-gpu:
#                             a container sees only its own GPUs, numbered from 0)
# Extra arguments go to tritonserver (e.g. --backend-directory, ports).
set -euo pipefail
use_cases=${RTMEDIA_TRITON_USE_CASES:?set RTMEDIA_TRITON_USE_CASES, e.g. "stt tts avatar"}
placement=${RTMEDIA_PLACEMENT:-single-gpu}
out=${RTMEDIA_TRITON_REPO:-/tmp/rtmedia-model-repository}
rtmedia triton-repo --out "$out" --placement "$placement" >/dev/null
args=()
for uc in $use_cases; do args+=("--model-repository=$out/$uc"); done
for m in ${RTMEDIA_TRITON_LOAD:-}; do args+=("--load-model=$m"); done
# accept the media server's gRPC keepalive pings (pipelines.triton_client.Keepalive)
read -r -a keepalive < <(python3 -c 'from pipelines.triton_client import Keepalive
print(" ".join(Keepalive().server_flags()))' 2>/dev/null || echo \
  "--grpc-keepalive-permit-without-calls=1 --grpc-http2-min-recv-ping-interval-without-data=10000")
echo "tritonserver: ${use_cases} (placement ${placement}; loading ${RTMEDIA_TRITON_LOAD:-none})"
exec tritonserver "${args[@]}" --model-control-mode=explicit --exit-on-error=false \
  --strict-readiness=false --exit-timeout-secs=5 "${keepalive[@]}" "$@"
