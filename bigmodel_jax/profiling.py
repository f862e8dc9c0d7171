"""`train.profile_steps=(first, last)`: a jax.profiler trace of those training steps.

The trace goes to <workdir>/tensorboard/plugins/profile/<time>/: TensorBoard's Profile tab reads
it (`pip install tensorboard tensorboard-plugin-profile`), and the `.trace.json.gz` next to it
opens in https://ui.perfetto.dev. Each step is annotated with its number, so the trace viewer
shows step boundaries; map an op back to the model with `--xla_dump_to` and its op_name.

`op_table` sums such a trace by kind of op of the optimised HLO (each dot by its shapes, other
ops by fusion kind): `python -m bigmodel_jax.bench --sections=profile` prints it per preset.
"""

import collections
import glob
import gzip
import json
import os
import re

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


# --- where a step's time goes: trace events mapped onto the optimised HLO ---------------------


def _hlo_index(hlo_text: str) -> dict[str, str]:
  """Each instruction of an optimised HLO module -> what it does: 'dot f32[M,N] <- [..] x [..]'
  for a dot or a fusion around one (the fused computation's dot), else its fusion or op name
  without the number ('multiply_tanh_fusion', 'all-reduce')."""
  bodies, current, instructions = {}, None, {}
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if header:
      current = bodies.setdefault(header.group(1), [])
      continue
    instruction = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
    if instruction:
      instructions[instruction.group(1)] = instruction.group(2)
      if current is not None:
        current.append(instruction.group(2))
  index = {}
  for name, text in instructions.items():
    called = re.search(r"calls=%?([\w.\-]+)", text)
    lines = [text] + (bodies.get(called.group(1), []) if called else [])
    dot = next((t for t in lines if re.search(r"\bdot\(", t)), None)
    if dot:
      shape = lambda t: re.sub(r"\{[\d,]*\}", "", t.split(" ")[0])  # noqa: E731 'f32[M,N]'
      operands = re.findall(r"%?([\w.\-]+)", dot.split(" dot(")[1].split(")")[0])
      shapes = [shape(instructions[o]) for o in operands if o in instructions]
      index[name] = f"dot {shape(dot)} <- {' x '.join(shapes)}"
    else:
      index[name] = re.sub(r"\.\d+$", "", name)
  return index


def op_table(trace_dir: str, hlo_text: str, steps: int) -> list[dict]:
  """Milliseconds per step spent in each kind of HLO op of a jax.profiler trace of `steps` steps
  (summed over all threads, so with several devices the total exceeds the step time), largest
  first, with each kind's share of all HLO time."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[-1]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  index = _hlo_index(hlo_text)
  totals = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in index:
      totals[index[e["name"]]] += e["dur"]  # microseconds
  total = sum(totals.values()) or 1
  return [
      {"op": op, "ms_per_step": us / 1e3 / steps, "share": us / total}
      for op, us in totals.most_common()
  ]
