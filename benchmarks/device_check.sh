#!/usr/bin/env bash
# The device check (benchmarks/device_check.py; how to run it: benchmarks/DEVICE.md).
# On the lent machine, packages it lacks travel as wheels in .whl/ (carried by the device
# tool) and are installed into /tmp/site first; nothing there can be downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The repository itself is not installed there: import sam_jax and convert from the checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
exec "$PYTHON" benchmarks/device_check.py "$@"
