"""Distillation (compress/distill.py): the KL term against torch's, the loss mixing, the teacher
kept frozen and out of the student's checkpoint under pmap and mesh, a distilled student closer
to its teacher than a hard-label one, and the bad-input cases."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from bigmodel_jax import parallel, trainer
from bigmodel_jax.compress import distill, distill_variant, quantize
from bigmodel_jax.errors import UsageError
from tests.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENT = dict(model__hidden=16)  # a smaller head than the teacher's (imagecls:tiny has 32)


def _run(config, workdir, mode="train"):
  with contextlib.redirect_stdout(io.StringIO()):
    return trainer.run(config, workdir, mode)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny imagecls teacher; students of the same size trained from it (pmap, and 2 steps on a
  mesh) and on hard labels alone."""
  root = tmp_path_factory.mktemp("distill")
  data = str(root / "tfds")
  teacher = str(root / "teacher")
  _run(tiny_config(data, "imagecls:tiny"), teacher)
  out = {"root": root, "data": data, "teacher": teacher}
  for name, extra in (
      ("distilled", dict(distill__teacher=teacher, distill__alpha=0.5, distill__temperature=2.0)),
      ("hard", {}),
      (
          "mesh",
          dict(
              distill__teacher=teacher,
              parallel__strategy="mesh",
              parallel__fsdp=2,
              train__steps=2,
              train__eval_every=2,
          ),
      ),
  ):
    config = tiny_config(data, "imagecls:tiny", **STUDENT, **extra)
    out[name] = (config, str(root / name), _run(config, str(root / name)))
  return out


def _teacher(runs, config):
  """(the student's DistillTask, the teacher's plain variables restored afresh from its workdir)."""
  config = config.copy_and_resolve_references()
  config.distill.teacher = runs["teacher"]
  task = distill.wrap(trainer.tasks.get(config.task)(config), config, train=True)
  task.setup(runs["teacher"], create=False)  # the teacher's workdir holds the same dataset facts
  return task, task.teacher_variables()


def test_kl_term_matches_torch_kl_div_at_a_temperature():
  rng = np.random.default_rng(0)
  teacher, student = rng.normal(size=(2, 4, 7, 11)).astype(np.float32) * 3
  for temperature in (0.5, 2.0, 4.0):
    ours = distill.kl_divergence(jnp.asarray(teacher), jnp.asarray(student), temperature)
    log_p = torch.log_softmax(torch.from_numpy(teacher) / temperature, -1)
    log_q = torch.log_softmax(torch.from_numpy(student) / temperature, -1)
    ref = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_loss_mixes_kl_and_hard_loss_and_alpha_zero_is_the_plain_task(runs):
  config = runs["hard"][0]
  task, teacher = _teacher(runs, config)
  variables = task.inner.init_variables(jax.random.key(1))
  params = variables.pop("params")
  batch = next(task.inner.train_iterator(16, 0, 0, 1))
  rng = jax.random.key(2)

  def loss(alpha, temperature):
    task.alpha, task.temperature = alpha, temperature
    fn = lambda p: task.loss(p, variables, batch, rng, True, frozen=teacher)  # noqa: E731
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

  (plain, _), plain_grads = jax.jit(
      jax.value_and_grad(lambda p: task.inner.loss(p, variables, batch, rng, True), has_aux=True)
  )(params)
  (zero, (metrics, _)), zero_grads = loss(0.0, 3.0)
  assert float(zero) == float(plain)
  jax.tree.map(np.testing.assert_array_equal, zero_grads, plain_grads)

  (mixed, _), _ = loss(0.3, 3.0)
  student = jax.jit(lambda p: task.inner.loss_and_logits(p, variables, batch, rng, True)[2])(params)
  teacher_state = {k: v for k, v in teacher.items() if k != "params"}
  teacher_logits = jax.jit(
      lambda p: task.teacher.task.loss_and_logits(p, teacher_state, batch, rng, False)[2]
  )(teacher["params"])
  log_p = torch.log_softmax(torch.from_numpy(np.array(teacher_logits)) / 3.0, -1)
  log_q = torch.log_softmax(torch.from_numpy(np.array(student)) / 3.0, -1)
  kl = torch.nn.functional.kl_div(log_q, log_p, reduction="batchmean", log_target=True).item()
  assert float(mixed) == pytest.approx(0.3 * 9.0 * kl + 0.7 * float(plain), rel=1e-5)
  assert metrics["kl"][0] / metrics["kl"][1] == pytest.approx(kl, rel=1e-4)


@pytest.mark.parametrize("name", ["distilled", "mesh"])
def test_teacher_is_bit_identical_after_training_and_not_in_the_checkpoint(runs, name):
  config, workdir, state = runs[name]
  _, teacher = _teacher(runs, config)
  after = parallel.make(config).to_host_layout(state).frozen
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), after, teacher)
  ckpt = os.path.join(workdir, "checkpoints", str(config.train.steps), "state")
  saved = ocp.StandardCheckpointer().metadata(ckpt)
  saved = getattr(saved, "item_metadata", saved)
  assert set(saved) == {"step", "params", "opt_state", "model_state"}
  # The student's own (smaller) head, and nothing of the teacher's shapes beside it.
  assert saved["params"]["hidden"]["kernel"].shape[-1] == 16
  n_saved = len(jax.tree.leaves(saved["params"]))
  assert n_saved == len(jax.tree.leaves(state.params))


def test_distilled_run_resumes_with_its_teacher_on_a_mesh(runs):
  config, workdir, _ = runs["mesh"]
  config = config.copy_and_resolve_references()
  config.train.steps = 3  # one more step from the checkpoint at 2, which holds no teacher
  state = _run(config, workdir)
  assert int(state.step) == 3
  _, teacher = _teacher(runs, config)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.frozen, teacher)


def test_distilled_student_is_closer_to_the_teacher_than_a_hard_label_one(runs):
  config = runs["hard"][0]
  task, teacher = _teacher(runs, config)
  t = task.teacher.task
  batches = t.eval_batches(64)
  teacher_state = {k: v for k, v in teacher.items() if k != "params"}

  def kl_to_teacher(name):
    c, _, state = runs[name]
    host = parallel.make(c).to_host_layout(state)
    total = 0.0
    for batch in batches:
      _, _, s = task.inner.loss_and_logits(
          host.params, host.model_state, batch, jax.random.key(0), False
      )
      _, _, r = t.loss_and_logits(teacher["params"], teacher_state, batch, jax.random.key(0), False)
      total += float((distill.kl_divergence(r, s, 1.0) * batch["weight"]).sum())
    return total / sum(float(b["weight"].sum()) for b in batches)

  distilled, hard = kl_to_teacher("distilled"), kl_to_teacher("hard")
  assert distilled < 0.8 * hard, (distilled, hard)


def _broken_teacher(runs, name, edit):
  """A copy of the teacher workdir with `edit(path)` applied."""
  path = os.path.join(runs["root"], name)
  if not os.path.exists(path):
    shutil.copytree(runs["teacher"], path)
    edit(path)
  return path


def _edit_json(file, **changes):
  with open(file) as f:
    data = json.load(f)
  data.update(changes)
  with open(file, "w") as f:
    json.dump(data, f)


@pytest.mark.parametrize(
    "case, match",
    [
        ("no checkpoint", "holds no checkpoint"),
        ("not a workdir", "is not a run's workdir"),
        ("other experiment", "is a run of experiment 'textgen'"),
        ("other classes", "has 5 outputs (classes or vocabulary tokens) and the student 10"),
        ("alpha", "distill.alpha=1.5 must be in [0, 1]"),
        ("temperature", "distill.temperature=0.0 must be > 0"),
    ],
)
def test_bad_distill_settings_are_one_line_usage_errors(runs, case, match):
  teacher = {
      "no checkpoint": lambda: _broken_teacher(
          runs, "no_ckpt", lambda p: shutil.rmtree(os.path.join(p, "checkpoints"))
      ),
      "not a workdir": lambda: str(runs["root"] / "tfds"),
      "other experiment": lambda: _broken_teacher(
          runs,
          "other_exp",
          lambda p: _edit_json(
              os.path.join(p, "config.json"), experiment="textgen:tiny", task="lm"
          ),
      ),
      "other classes": lambda: _broken_teacher(
          runs,
          "other_classes",
          lambda p: _edit_json(
              os.path.join(p, "dataset.json"), class_names=["a", "b", "c", "d", "e"]
          ),
      ),
  }.get(case, lambda: runs["teacher"])()
  extra = {"alpha": dict(distill__alpha=1.5), "temperature": dict(distill__temperature=0.0)}
  config = tiny_config(
      runs["data"], "imagecls:tiny", distill__teacher=teacher, **extra.get(case, {})
  )
  workdir = str(runs["root"] / f"bad_{case.replace(' ', '_')}")
  with pytest.raises(UsageError, match=re.escape(match)) as e:
    _run(config, workdir)
  assert "\n" not in str(e.value)
  assert not os.path.exists(workdir)  # nothing half-written


def test_bad_alpha_exits_2_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "run.py", "--experiment=imagecls:tiny", "--config.distill.alpha=-0.1",
       f"--config.distill.teacher={tmp_path}", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
  )  # fmt: skip
  assert result.returncode == 2, result.stderr[-1000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "distill.alpha=-0.1 must be in [0, 1]" in lines[0], lines


@pytest.fixture(scope="module")
def compressed(runs):
  """--mode=compress on the teacher: int8, 2:4-pruned (4 fine-tune steps) and a distilled
  student (2 steps)."""
  config = tiny_config(
      runs["data"],
      "imagecls:tiny",
      compress__variants=("int8", "prune_2of4", "distill"),
      compress__finetune_steps=4,
      compress__distill_steps=2,
  )
  rows = _run(config, runs["teacher"], "compress")
  return config, {r["variant"]: r for r in rows}


def test_distill_variant_is_a_smaller_workdir_that_evaluates_with_the_plain_command(compressed):
  config, rows = compressed
  row = rows["distill"]
  assert row["parameters"] < rows["original"]["parameters"] / 2  # half the widths: ~1/4
  with open(os.path.join(row["workdir"], distill.MARKER)) as f:
    assert json.load(f)["overrides"]["model.widths"] == [4, 8]  # imagecls:tiny's (8, 16) halved
  values = _run(config, row["workdir"], "eval")  # the experiment's own config, no overrides
  assert values["accuracy"] == pytest.approx(row["accuracy"])


@pytest.mark.parametrize("variant", ["int8", "prune_2of4"])
def test_quantized_and_pruned_runs_can_teach(runs, compressed, variant):
  config, rows = compressed
  teacher = distill.Teacher(rows[variant]["workdir"], config)
  student = trainer.tasks.get(config.task)(config)
  student.setup(runs["teacher"], create=False)
  kernel = teacher.load(student)["params"]["hidden"]["kernel"]  # the plain float kernel
  assert kernel.dtype == np.float32
  if variant == "prune_2of4":  # 2 of every 4 input-side weights are zero
    assert (kernel.reshape(-1, 4, kernel.shape[-1]) != 0).sum(1).max() <= 2
  else:  # the float teacher's kernel through int8 and back, exactly
    float_kernel = distill.Teacher(runs["teacher"], config).load(student)["params"]["hidden"]
    np.testing.assert_array_equal(
        kernel, quantize.dequantize(quantize.quantize({"k": float_kernel["kernel"]}))["k"]
    )
    assert not np.array_equal(kernel, float_kernel["kernel"])


@pytest.mark.parametrize(
    "student, match",
    [
        (("model.num_layers",), "'model.num_layers' is not key=value"),
        (("model.layers=2",), "compress.student: --config.model.layers: unknown config key"),
        (("model.num_layers=two",), "expected int"),
    ],
)
def test_bad_student_overrides_are_one_line(student, match):
  config = tiny_config("/nonexistent", "textgen:tiny", compress__student=student)
  with pytest.raises(UsageError, match=re.escape(match)):
    distill_variant.student_overrides(config)


def test_default_student_halves_layers_and_widths():
  config = tiny_config("/nonexistent", "textgen:tiny")  # 2 layers of width 32, 2 heads
  assert distill_variant.student_overrides(config) == {
      "model.num_layers": 1,
      "model.embed_dim": 16,
  }
