#!/usr/bin/env bash
# The device check (the package benchmarks/device_check/; how to run it: benchmarks/DEVICE.md).
# On the lent machine, packages it lacks travel as wheels in .whl/ (carried by the device
# tool) and are installed into /tmp/site first; nothing there can be downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The repository itself is not installed there: import sam_jax and convert from the checkout,
# and the benchmarks' harness (common) and the device_check package from benchmarks/.
export PYTHONPATH="$PWD/benchmarks:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
exec "$PYTHON" -m device_check "$@"
