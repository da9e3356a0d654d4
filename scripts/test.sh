#!/usr/bin/env bash
# Set up and run the test suite (CPU only). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Test files run in parallel, one worker a CPU core up to four (TEST_WORKERS=N to choose, 0 = in this process):
# a file's tests stay on one worker, so a module's fixture (the demo's one run) is built once.
workers=${TEST_WORKERS:-$(python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")}
exec python -m pytest -q -n "$workers" --dist loadfile "$@"
