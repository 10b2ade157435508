"""One device check: parity and speed of sam-jax against the reference on one accelerator.

Made for a lent GPU with minutes of device time and no time to write code there
(benchmarks/DEVICE.md says how to run it). Every part has a time budget; a row that would
not fit in what is left is recorded as "skipped: out of time" instead of overrunning, and
the results are rewritten after every part, so a run cut short still leaves its tables.

    bash benchmarks/device_check.sh                    # the lent GPU: about 6 minutes
    bash benchmarks/device_check.sh --only encoder     # some parts (repeatable)
    bash benchmarks/device_check.sh --dry-run          # every part on this CPU, small models

The harness: `plan` (what a run measures, each part's share of the budget), `results` (the
recorder: rows, markdown and JSON), `harness` (the clock, the models shared between parts,
running one row within its time), `__main__` (the command line). The parts, in order, in
`parts/`: environment; peak (matmul rates); parity (vit_b end to end in float32 against the
reference on the same device); encoder (images/s, vit_b/h/l x batch 1/8/32 x bfloat16 /
float32) and attention (the encoder's attention paths side by side); decode (one point, 64
points), interactive (a session of 8 clicks) and amg (automatic masks, 32x32 points,
1024x768); train (fine-tuning steps); compile and memory (tables gathered from the other
parts). Results: `<results-dir>/<device>-<date>.md` and `.json`, copied with a log to `$OUT`
when set.
"""

import os

# torch and JAX share one GPU in this process: JAX must not take 75% of it up front (set
# before any module of the package imports JAX).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
