"""Compressed states under --mode=plan and the mesh strategy: plan counts the pruning masks
(compress/prune.py keeps them in the optimizer state) as the real train state holds them, and
int8-quantized kernels (compress/quantize.py) are sharded as their float kernels are."""

import functools

import jax

from bigmodel_jax import parallel, plan, steps, tasks, trainer
from bigmodel_jax.compress import quantize
from tests.helpers import tiny_config

PRUNE = dict(prune__target=0.5, parallel__strategy="mesh", parallel__fsdp=2)


def test_plan_counts_pruning_masks_as_the_real_state_holds_them(tmp_path):
  data = str(tmp_path / "tfds")
  planned = trainer.run(tiny_config(data, **PRUNE), str(tmp_path / "never_written"), "plan")
  state = trainer.run(tiny_config(data, **PRUNE), str(tmp_path / "run"), stop_after=1)
  masks = [x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state) if "masks" in str(p)]
  # A bool per pruned float32 weight: without them the plan would be this much short.
  assert plan.shard_bytes(masks) > 0.25 * plan.shard_bytes(state.params)
  assert planned["optimizer_bytes_per_device"] == plan.shard_bytes(state.opt_state)


def test_quantized_kernels_keep_the_mesh_partitioning_of_their_float_kernels():
  config = tiny_config("", parallel__strategy="mesh", parallel__fsdp=2, parallel__tensor=2)
  task = tasks.get(config.task)(config)
  strategy = parallel.make(config)

  def specs(t):
    init = functools.partial(steps.init_state, task=t, tx=quantize.frozen_optimizer())
    params = strategy.abstract(init, jax.random.key(0)).params
    return {
        jax.tree_util.keystr(p): x.sharding.spec
        for p, x in jax.tree_util.tree_leaves_with_path(params)
    }

  floats, ints = specs(task), specs(quantize.QuantTask(task))
  kernels = [k for k in floats if k.endswith("['kernel']")]
  assert len(kernels) >= 8
  sharded = 0
  for k in kernels:
    assert ints[k + "['int8']"] == floats[k], k
    # The scale: one per output channel, sharded like the kernel's output axes.
    scale = ints[k + "['scale']"]
    assert all(a is None or a == b for a, b in zip(scale, floats[k], strict=False)), k
    sharded += any(a is not None for a in floats[k])
  assert sharded >= 4  # the mesh really splits them (fsdp over embed, tensor over heads/mlp)
  assert ints["['wte']['embedding']['int8']"] == floats["['wte']['embedding']"]
