#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then run the whole suite against a
# real tritonserver with the real packaged models. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
set +e
python -m pytest -ra "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$code"
