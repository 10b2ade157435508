"""Batch jobs over image collections on every local device, one host or many.

The engine is JAX's own SPMD machinery: a batch is a `jax.Array` sharded over a 1-D mesh of
this process's devices (`jax.sharding`), the weights are replicated, and with
`jax.distributed` each process takes a disjoint, deterministic share of the inputs. There is
no scheduler: the share is `sorted inputs[process_index::process_count]`.

Safety: every output is written atomically (temporary name, then rename), so an output that
exists is complete; a re-run skips those and a killed run loses only the images in flight.
An output path holding something a job did not write is recorded as a failure and left
untouched. Unreadable images are recorded in `failures*.tsv` and the rest go on.

- `engine`: inputs, shares, decoding within a pixel cap and a memory budget, the plan of a job;
- `layout`: what each job writes where, and how its outputs are recognised;
- `embed`: `embed_images`; `amg`: `generate_masks_for_images`.
"""

from sam_jax.jobs.amg import generate_masks_for_images, generate_tiled_masks_for_images
from sam_jax.jobs.embed import check_batch_memory, embed_images
from sam_jax.jobs.engine import InputItem, JobReport, discover_inputs, local_mesh, process_share
from sam_jax.jobs.layout import failures_file, masks_output_path, output_path

__all__ = [
    "InputItem",
    "JobReport",
    "check_batch_memory",
    "discover_inputs",
    "embed_images",
    "failures_file",
    "generate_masks_for_images",
    "generate_tiled_masks_for_images",
    "local_mesh",
    "masks_output_path",
    "output_path",
    "process_share",
]
