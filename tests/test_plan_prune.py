"""--mode=plan counts the pruning masks (compress/prune.py keeps them in the optimizer state):
its optimizer memory per device is the real train state's, masks included."""

import jax

from bigmodel_jax import plan, trainer
from tests.helpers import tiny_config

PRUNE = dict(prune__target=0.5, parallel__strategy="mesh", parallel__fsdp=2)


def test_plan_counts_pruning_masks_as_the_real_state_holds_them(tmp_path):
  data, nowhere = str(tmp_path / "tfds"), str(tmp_path / "never_written")
  planned = trainer.run(tiny_config(data, **PRUNE), nowhere, "plan")
  dense = trainer.run(tiny_config(data, **{**PRUNE, "prune__target": 0.0}), nowhere, "plan")
  state = trainer.run(tiny_config(data, **PRUNE), str(tmp_path / "run"), stop_after=1)
  masks = [x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state) if "masks" in str(p)]
  mask_bytes = plan.shard_bytes(masks)
  assert mask_bytes > 0.25 * plan.shard_bytes(state.params)  # a bool per pruned f32 weight
  assert planned["optimizer_bytes_per_device"] == plan.shard_bytes(state.opt_state)
  # The masks and the ramp's step counter (int32) are all that pruning adds.
  assert planned["optimizer_bytes_per_device"] - dense["optimizer_bytes_per_device"] == (
      mask_bytes + 4
  )
