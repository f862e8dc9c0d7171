"""serve/engine.py: continuous batching gives each request what it would get alone, and the
programs compiled at warm-up are the only ones ever compiled."""

import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import generate, trainer
from bigmodel_jax.errors import UsageError
from bigmodel_jax.models.gpt import GPT
from bigmodel_jax.serve import engine as engine_lib
from tests.helpers import TINY_GPT, tiny_config

CONTEXT = 40  # buckets 16, 32, 40: a prompt of 20 pads to 32, one of 33 to the context
LENGTHS = (1, 3, 5, 9, 17, 20, 2, 33)


@pytest.fixture(scope="module")
def served():
  model = GPT(**{**TINY_GPT, "block_size": CONTEXT, "positions": "rotary", "vocab_size": 64})
  params = model.init(jax.random.key(0), jnp.zeros((1, CONTEXT), jnp.int32))["params"]
  programs = engine_lib.gpt_programs(model)
  engine = engine_lib.Engine(programs, params, vocab_size=60, max_batch=8, max_queue=64)
  engine.warm_up()
  engine.start()
  try:
    yield model, params, engine
  finally:
    engine.stop()


def _run(engine, prompts, max_tokens, temperature=0.0, seed=0):
  """Submits all prompts at once -> their generated ids, in order."""
  outs, done = [[] for _ in prompts], threading.Semaphore(0)
  for i, p in enumerate(prompts):
    engine.submit(
        engine_lib.Request(
            prompt=p, max_tokens=max_tokens, temperature=temperature, top_p=0.9, seed=seed,
            sample_index=0, on_token=outs[i].append, on_done=lambda reason: done.release(),
        )
    )  # fmt: skip
  for _ in prompts:
    assert done.acquire(timeout=60)
  return outs


def test_buckets_are_powers_of_two_up_to_the_context():
  assert engine_lib.buckets(40) == [16, 32, 40]
  assert engine_lib.buckets(16) == [16]
  assert engine_lib.buckets(256) == [16, 32, 64, 128, 256]


def test_greedy_output_is_the_same_alone_and_in_a_mixed_batch_of_eight(served):
  model, params, engine = served
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, 60, n).astype(np.int32) for n in LENGTHS]
  compiled = engine.compiles
  together = _run(engine, prompts, max_tokens=6)
  alone = [_run(engine, [p], max_tokens=6)[0] for p in prompts]
  assert together == alone
  # And both are what generate.generate (one sequence, its own cache) writes.
  for p, out in zip(prompts[:3], together):
    key = jax.random.key(0)
    ref = generate.generate(model, params, p, max_new_tokens=6, rng=key, temperature=0)
    assert out == list(ref[0, len(p) :])
  # Mixed prompt lengths and batch sizes compiled nothing after warm-up: prefill buckets and
  # the one decode program were all compiled there.
  assert engine.compiles == compiled == len(engine.buckets) + 1


def test_seeded_sampling_does_not_depend_on_the_batch(served):
  _, _, engine = served
  rng = np.random.default_rng(2)
  prompts = [rng.integers(0, 60, n).astype(np.int32) for n in LENGTHS[:4]]
  together = _run(engine, prompts, max_tokens=5, temperature=1.0, seed=7)
  alone = [_run(engine, [p], max_tokens=5, temperature=1.0, seed=7)[0] for p in prompts]
  assert together == alone
  assert all(t < 60 for out in together for t in out)  # padding rows of the vocab never drawn
  other_seed = _run(engine, prompts, max_tokens=5, temperature=1.0, seed=8)
  assert other_seed != together


def test_cancelled_and_finished_requests_free_their_slots(served):
  _, _, engine = served
  got, done = [], threading.Event()
  request = engine_lib.Request(
      prompt=np.arange(4, dtype=np.int32), max_tokens=30, temperature=0.0, top_p=1.0, seed=0,
      sample_index=0, on_token=got.append, on_done=lambda reason: (got.append(reason), done.set()),
  )  # fmt: skip
  request.cancel()  # before it is admitted: it never takes a slot
  engine.submit(request)
  assert done.wait(30) and got == ["cancelled"]
  _run(engine, [np.arange(3, dtype=np.int32)] * 12, max_tokens=3)  # more requests than slots
  assert engine.free_slots == engine.max_batch and not engine.waiting


@pytest.mark.parametrize(
    "experiment, mode, overrides, message",
    [
        ("textgen:tiny", "serve", {"serve__max_batch": 0}, "serve.max_batch=0"),
        ("textgen:tiny", "serve", {"serve__port": 70000}, "serve.port=70000"),
        ("recsys:tiny", "export", {}, "--mode=export is not available for task 'recsys'"),
    ],
)
def test_bad_serve_settings_are_one_line_errors_before_any_restore(
    tmp_path, experiment, mode, overrides, message
):
  config = tiny_config(str(tmp_path), experiment, **overrides)
  with pytest.raises(UsageError, match=re.escape(message)):
    trainer.run(config, str(tmp_path / "never_trained"), mode)
