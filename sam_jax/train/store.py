"""A training run's checkpoints: orbax steps `<dir>/<step>/{weights,opt_state,meta}`, each
loadable by `sam_jax.load`, checked on restore; a run folder holds nothing else."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sam_jax import checkpoint
from sam_jax.config import SamConfig
from sam_jax.train.config import TrainConfig


class CheckpointStore:
    """Orbax `CheckpointManager` over a run directory: `<dir>/<step>/{weights,opt_state,meta}`.

    `weights/` has the layout of `sam_jax.save`, so a step directory, or the run
    directory (its latest step), loads with `sam_jax.load` and exports with
    `python -m convert --to-torch`.
    """

    def __init__(self, directory: str, keep: int) -> None:
        import os

        import orbax.checkpoint as ocp

        check_run_directory(directory)
        self.directory = Path(directory)
        self.ocp = ocp
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("weights", "opt_state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """The saved steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def read_meta(self, step: int) -> dict[str, Any]:
        """A step's metadata, read without restoring anything else."""
        path = self.directory / str(step) / "meta" / "metadata"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable step metadata ({e})") from None
        if not isinstance(meta, dict) or not {"config", "train", "data_cursor"} <= set(meta):
            raise ValueError(f"{path}: not the metadata of a sam_jax training step")
        return meta

    def save(self, step: int, weights: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        ocp = self.ocp
        host = jax.tree.map(np.asarray, weights)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                weights=ocp.args.PyTreeSave(host),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, step: int, opt_state_template: Any) -> tuple[Any, Any]:
        """A step's weights and optimiser state, checked against the checksum in its metadata.

        Raises:
            ValueError: naming the step's folder when it cannot be read or was altered.
        """
        ocp = self.ocp
        meta = self.read_meta(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, opt_state_template)
        where = self.directory / str(step)
        composite = ocp.args.Composite(weights=ocp.args.PyTreeRestore(), opt_state=ocp.args.StandardRestore(abstract))
        try:
            with checkpoint.quiet_orbax():
                r = self.manager.restore(step, args=composite)
        except Exception as e:  # orbax raises many types for a damaged step
            raise ValueError(f"{where}: unreadable step ({type(e).__name__}: {str(e)[:200]})") from None
        weights = jax.tree.map(lambda x: np.asarray(x, np.float32), r["weights"])
        expected = meta.get("weights_sha256")
        if expected is not None and checkpoint.weights_digest(weights) != expected:
            raise ValueError(f"{where}/weights: the weights do not match the checksum in its metadata")
        checkpoint.check_finite(weights, f"{where}/weights")
        expected = meta.get("opt_state_sha256")
        if expected is not None and checkpoint.tree_digest(r["opt_state"]) != expected:
            raise ValueError(f"{where}/opt_state: the optimiser state does not match the checksum in its metadata")
        return weights, r["opt_state"]

    def set_aside(self, step: int, reason: str) -> Path:
        """Moves a damaged step out of the run (renamed, never deleted): `<step>.damaged[-k]`,
        with `DAMAGED_NOTE` saying why, so a resume can write that step again.

        Returns:
            Where the step now is.
        """
        source = self.directory / str(step)
        k = 1
        while (target := self.directory / f"{step}{DAMAGED_SUFFIX}{'' if k == 1 else f'-{k}'}").exists():
            k += 1
        # The note first: a step folder with a note is still a step; a renamed one without it
        # would be a folder the run directory's check refuses.
        (source / DAMAGED_NOTE).write_text(f"step {step} of this run could not be resumed: {reason}\n")
        source.rename(target)
        self.manager.reload()
        return target

    def close(self) -> None:
        self.manager.close()


# A damaged step set aside (`CheckpointStore.set_aside`): `<step>.damaged` (or `-2`, `-3`, ...)
# holding this note; it stays in the run folder and no longer counts as a step.
DAMAGED_SUFFIX = ".damaged"
DAMAGED_NOTE = "SAM_JAX_DAMAGED_STEP.txt"


def _is_run_entry(entry: Path) -> bool:
    if ".orbax-checkpoint-tmp" in entry.name:  # a save a kill interrupted; orbax ignores it
        return True
    if re.fullmatch(rf"\d+{re.escape(DAMAGED_SUFFIX)}(-\d+)?", entry.name):
        return entry.is_dir() and (entry / DAMAGED_NOTE).is_file()
    return entry.name.isdigit() and entry.is_dir() and entry.joinpath(*checkpoint.RUN_META_FILE).is_file()


def check_run_directory(directory: str | os.PathLike[str]) -> None:
    """Refuses a `--checkpoint-dir` that holds anything but a training run's steps: the
    checkpoint manager deletes old steps, and must never meet a folder of the user's."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint directory {directory}: exists and is not a folder")
    if path.is_dir():
        foreign = [e.name for e in path.iterdir() if not _is_run_entry(e)]
        if foreign:
            raise ValueError(
                f"checkpoint directory {directory}: holds {foreign[0]!r}, which is not a step of a sam_jax training "
                "run; choose a new or empty folder"
            )


def step_metadata(
    config: SamConfig,
    cfg: TrainConfig,
    step: int,
    cursor: int,
    figures: dict[str, float],
    weights: Any,
    opt_state: Any,
) -> dict[str, Any]:
    """A step's `meta` item: what `sam_jax.load` and a resume read (the model, the options,
    the data cursor, the checksums of the weights and of the optimiser state), and the run's
    figures at that step."""
    return {
        "format": checkpoint.FORMAT,
        "version": checkpoint.VERSION,
        "weights_sha256": checkpoint.weights_digest(weights),
        "opt_state_sha256": checkpoint.tree_digest(opt_state),
        "config": config.to_dict(),
        "train": cfg.to_dict(),
        "step": step,
        "data_cursor": cursor,
        "seed": cfg.seed,
        "rng": f"fold_in(key({cfg.seed}), step)",
        "metrics": figures,
    }
