"""`train.profile_steps=(first, last)`: a jax.profiler trace of those training steps.

The trace goes to <workdir>/tensorboard/plugins/profile/<time>/: TensorBoard's Profile tab reads
it (`pip install tensorboard tensorboard-plugin-profile`), and the `.trace.json.gz` next to it
opens in https://ui.perfetto.dev. Each step is annotated with its number, so the trace viewer
shows step boundaries; map an op back to the model with `--xla_dump_to` and its op_name.
"""

import os

from absl import logging
import jax


class StepProfiler:
  """Starts the trace before step `first` and stops it after step `last` has finished."""

  def __init__(self, profile_steps, workdir: str, enabled: bool = True):
    self.first, self.last = tuple(profile_steps) if profile_steps else (0, -1)
    self.directory = os.path.join(os.path.abspath(workdir), "tensorboard")
    self.enabled, self.active = enabled and bool(profile_steps), False

  def annotate(self, step: int):
    """Context manager around one step: its boundary in the trace."""
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def before(self, step: int) -> None:
    if self.enabled and not self.active and self.first <= step <= self.last:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True
      logging.info("Profiling steps %d-%d into %s", step, self.last, self.directory)

  def after(self, step: int, state) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)  # the trace must hold the whole of the last step
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info(
          "Profile written under %s (TensorBoard's Profile tab, or Perfetto)",
          os.path.join(self.directory, "plugins", "profile"),
      )
