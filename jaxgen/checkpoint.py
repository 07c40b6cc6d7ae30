"""Orbax checkpoints of a run's whole state, with safe fallback on corruption.

A checkpoint that cannot be read is moved to `<workdir>/checkpoints_corrupt/`
(never deleted) and the next older one is tried, with a warning. When none can
be read the run stops with an error instead of silently starting afresh.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No readable checkpoint where one was expected."""


class Checkpointer:
  """Periodic, final and on-signal saves of a state pytree under one folder."""

  def __init__(self, directory: str | Path, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = Path(directory).absolute()
    self.quarantine = self.directory.parent / (self.directory.name + "_corrupt")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves (asynchronously if configured); a step already saved is skipped."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, abstract_state: Any) -> Any:
    return self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))

  def restore_latest(self, abstract_state: Any) -> tuple[Any | None, int | None]:
    """The newest readable checkpoint as (state, step); (None, None) if none exist.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct (with shardings) that
    fixes the structure, dtypes and placement of the result.
    """
    steps = self.steps()
    if not steps:
      return None, None
    failures = []
    for step in reversed(steps):
      try:
        return self.restore(step, abstract_state), step
      except Exception as e:  # pylint: disable=broad-except
        # A readable checkpoint of another layout is no corruption: moving it
        # aside would hide a run that the right settings can resume.
        mismatch = self._layout_mismatch(step, abstract_state)
        if mismatch:
          raise CheckpointError(
              f"the checkpoint at step {step} in {self.directory} holds a "
              f"different state layout from the one this config builds "
              f"({mismatch}). A setting "
              "that shapes the model or its state differs from the one it was "
              "trained with (model.width, model.scan_steps, "
              "model.dequantization, ...), or it was written by an older "
              "jaxgen. Run with the settings in the workdir's config.json, or "
              "use a new --workdir. Nothing was moved.") from e
        # Orbax/tensorstore raise many types for unreadable data; any of them
        # means this checkpoint cannot be used.
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        failures.append(f"step {step}: {reason}")
        moved = self._move_aside(step)
        logging.warning(
            "checkpoint at step %d is unreadable (%s); moved it to %s and "
            "trying the previous one.", step, reason, moved)
    raise CheckpointError(
        f"none of the checkpoints in {self.directory} could be read "
        f"(moved to {self.quarantine}):\n  " + "\n  ".join(failures) +
        "\nRefusing to start from scratch over them. To start afresh, use a "
        "new --workdir (or remove the checkpoints folder).")

  def _layout_mismatch(self, step: int, abstract_state: Any) -> str:
    """How the checkpoint's arrays (paths and shapes) differ from
    abstract_state's; "" when they agree or the checkpoint cannot be read
    whole in its own layout (then it is corrupt, not different: a damaged
    checkpoint's metadata alone can still read, with arrays missing)."""
    try:
      metadata = ocp.StandardCheckpointer().metadata(
          self.directory / str(step) / "default")
      tree = getattr(metadata, "item_metadata", metadata)
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      as_saved = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
      self.restore(step, as_saved)
    except Exception:  # pylint: disable=broad-except
      return ""
    saved = _layout(as_saved)
    wanted = _layout(abstract_state)
    only_saved = sorted(set(saved) - set(wanted))
    only_wanted = sorted(set(wanted) - set(saved))
    reshaped = sorted(p for p in set(saved) & set(wanted) if saved[p] != wanted[p])
    parts = []
    if only_saved:
      parts.append(f"{len(only_saved)} arrays only in the checkpoint, "
                   f"e.g. {only_saved[0]}")
    if only_wanted:
      parts.append(f"{len(only_wanted)} only in this run's state, "
                   f"e.g. {only_wanted[0]}")
    if reshaped:
      parts.append(f"{len(reshaped)} of another shape, e.g. {reshaped[0]} "
                   f"{saved[reshaped[0]]} saved vs {wanted[reshaped[0]]} now")
    return "; ".join(parts)

  def _move_aside(self, step: int) -> Path:
    # Only process 0 touches the file system; Orbax's own step folder is
    # named by the step number.
    source = self.directory / str(step)
    target = self.quarantine / str(step)
    if jax.process_index() == 0 and source.exists():
      self.quarantine.mkdir(parents=True, exist_ok=True)
      if target.exists():
        shutil.rmtree(target)
      shutil.move(str(source), str(target))
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _layout(tree: Any) -> dict[str, tuple[int, ...] | None]:
  """Array path ("params/layers_0/bias") -> shape, for a state pytree and for
  Orbax's metadata of one alike (dataclass fields and dict keys both by name)."""
  def name(key) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(name(k) for k in path): (tuple(leaf.shape) if hasattr(leaf, "shape")
                                            else None)
          for path, leaf in leaves}
