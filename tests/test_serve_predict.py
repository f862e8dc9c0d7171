"""POST /v1/predict for sentiment, translate, tabular and imagecls, driven by plain httpx: the
server predicts what the task's own code predicts, batches concurrent requests, and refuses bad
input with a JSON 400. The app runs in-process (httpx's ASGI transport) on a 2-step training.
Their export bundles serve the same predictions without the model's or task's code, and their
--check catches an edited golden output."""

import asyncio
import base64
import io
import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
from PIL import Image
import pytest

from bigmodel_jax import trainer
from bigmodel_jax.errors import UsageError
from bigmodel_jax.serve import app as app_lib
from bigmodel_jax.serve import bundle as bundle_lib
from bigmodel_jax.serve import bundle_predict
from tests.helpers import tiny_config
from tests.serve_helpers import REPO

EXPERIMENTS = ("sentiment", "translate", "tabular", "imagecls")


@pytest.fixture(scope="module", params=EXPERIMENTS)
def served(request, tmp_path_factory):
  """(experiment, service, app, (config, workdir)): --mode=serve up to the point where uvicorn
  would start."""
  name = request.param
  workdir = str(tmp_path_factory.mktemp(name))
  config = tiny_config("", f"{name}:tiny", train__steps=2)
  trainer.run(config, workdir)
  captured = {}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(app_lib, "serve", lambda service, cfg: captured.update(service=service))
    trainer.run(config, workdir, "serve")
  service = captured["service"]
  app = app_lib.make_app(service, config.serve)
  service.warm_up()
  service.ready = True
  return name, service, app, (config, workdir)


def _post_all(app, bodies, **kwargs):
  async def go():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
      return await asyncio.gather(*(c.post("/v1/predict", json=b, **kwargs) for b in bodies))

  return asyncio.run(go())


def _png(seed: int, shape) -> str:
  h, w, c = shape
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, c), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode()


def _inputs(name, service, n):
  p = service.predictor
  if name == "tabular":
    rng = np.random.default_rng(0)
    return [{f["name"]: float(rng.normal()) for f in p.pre.features} for _ in range(n)]
  if name == "imagecls":
    return [_png(i, p.task.info.shape) for i in range(n)]
  return [f"a text number {i}" + " again" * i for i in range(n)]


def test_concurrent_requests_are_batched_and_each_gets_what_it_gets_alone(served):
  name, service, app, _ = served
  one = service.predictor.keys[0]
  inputs = _inputs(name, service, 6)
  together = _post_all(app, [{one: x} for x in inputs])
  assert all(r.status_code == 200 for r in together), together[0].text
  batches = _metric(app, "bigmodel_batch_size_count")
  assert batches < 6  # six concurrent requests did not run one by one
  alone = [_post_all(app, [{one: x}])[0] for x in inputs[:2]]
  for a, t in zip(alone, together):
    assert a.json()["predictions"] == t.json()["predictions"]
  first = together[0].json()["predictions"][0]
  if name == "translate":
    assert isinstance(first["translation"], str)
    return
  # The task's own prediction code is the reference.
  p, task = service.predictor, service.predictor.task
  if name == "sentiment":
    probs = task.probabilities(p.variables, task.encode(inputs[:1]))[0]
  elif name == "tabular":
    probs = [None, task.probabilities(p.variables, np.stack([p.parse(inputs[0])]))[0]]
  else:
    probs = task.probabilities(p.variables, np.stack([p.parse(inputs[0])]))[0]
  got = list(first["probabilities"].values())
  np.testing.assert_allclose(got[-1], probs[-1], rtol=1e-5)
  assert first["label"] in first["probabilities"]


def test_a_list_of_inputs_in_one_request(served):
  name, service, app, _ = served
  r = _post_all(app, [{service.predictor.keys[1]: _inputs(name, service, 3)}])[0]
  assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_bad_input_is_a_json_400(served):
  name, service, app, _ = served
  one, many = service.predictor.keys
  bad = [{}, {one: 5}, {many: "not a list"}, {one: "x", many: ["x"]}]
  if name == "imagecls":
    bad.append({one: "not base64!"})
    bad.append({one: base64.b64encode(b"not an image").decode()})
  if name == "tabular":
    bad.append({one: {"nope": 1}})
  for body in bad:
    r = _post_all(app, [body])[0]
    assert r.status_code == 400, (body, r.text)
    assert r.json()["error"]["message"]


def test_an_image_as_a_multipart_upload(served):
  name, service, app, _ = served
  if name != "imagecls":
    pytest.skip("images only")
  png = base64.b64decode(_png(0, service.predictor.task.info.shape))
  files = {"image": ("x.png", png, "image/png")}

  async def go():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
      return await c.post("/v1/predict", files=files), await c.post(
          "/v1/predict", json={"image": _png(0, service.predictor.task.info.shape)}
      )

  upload, as_json = asyncio.run(go())
  assert upload.status_code == 200, upload.text
  assert upload.json()["predictions"] == as_json.json()["predictions"]


def _metric(app, name):
  async def go():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
      return (await c.get("/metrics")).text

  text = asyncio.run(go())
  return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name)))


def _served_bundle(config, bundle):
  """--mode=serve --config.serve.bundle=BUNDLE up to uvicorn: (service, app). No workdir."""
  config = tiny_config("", config.experiment, train__steps=2, serve__bundle=bundle)
  captured = {}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(app_lib, "serve", lambda service, cfg: captured.update(service=service))
    trainer.run(config, "/nonexistent/workdir", "serve")
  service = captured["service"]
  app = app_lib.make_app(service, config.serve)
  service.warm_up()
  service.ready = True
  return service, app


def test_the_export_bundle_serves_the_live_predictions_without_model_code(served, tmp_path):
  name, service, app, (config, workdir) = served
  out = tmp_path / "bundle"
  trainer.run(tiny_config("", config.experiment, serve__export_dir=str(out)), workdir, "export")
  # The bundle's own process reproduces the golden (live) predictions with no model code.
  check = subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.serve_bundle", str(out), "--check"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert check.returncode == 0, check.stdout + check.stderr[-2000:]
  assert "model/experiment modules imported: none" in check.stdout
  golden = json.loads((out / "golden.json").read_text())
  assert check.stdout.count("ok  ") == len(golden["inputs"]) > 0
  # Served through run.py, the bundle answers other inputs as the live server does.
  _, bundle_app = _served_bundle(config, str(out))
  one, many = service.predictor.keys
  inputs = _inputs(name, service, 5)
  live = _post_all(app, [{many: inputs}])[0].json()["predictions"]
  bundled = _post_all(bundle_app, [{many: inputs}, {one: inputs[0]}])
  assert all(r.status_code == 200 for r in bundled), bundled[0].text
  assert bundled[0].json()["predictions"][0] == bundled[1].json()["predictions"][0]
  got_all = bundled[0].json()["predictions"]
  if name == "translate":  # the whole beam search in one exported program: the same tokens
    assert got_all == live
  else:
    for want, got in zip(live, got_all, strict=True):
      assert got["label"] == want["label"]
      assert list(got["probabilities"]) == list(want["probabilities"])
      np.testing.assert_allclose(
          list(got["probabilities"].values()), list(want["probabilities"].values()), rtol=1e-5
      )
  # An edited golden output fails the check.
  edited = tmp_path / "edited"
  shutil.copytree(out, edited)
  if name == "translate":
    golden["predictions"][0]["translation"] += "!"
  else:
    probs = golden["predictions"][0]["probabilities"]
    first = next(iter(probs))
    probs[first] += 1e-3 if probs[first] < 0.5 else -1e-3  # 10x the check's tolerance and more
  (edited / "golden.json").write_text(json.dumps(golden))
  meta = bundle_lib.read_meta(str(edited))
  assert bundle_predict.check(str(out), meta, 4)
  assert not bundle_predict.check(str(edited), meta, 4)


def test_not_a_bundle_or_another_tasks_bundle_is_a_usage_error(served, tmp_path):
  name, _, _, (config, _) = served
  if name != "tabular":
    pytest.skip("once is enough")
  with pytest.raises(UsageError, match="not an export bundle"):
    _served_bundle(config, str(tmp_path))
  bad = subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.serve_bundle", str(tmp_path), "--check"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert bad.returncode == 2 and "not an export bundle" in bad.stderr
  (tmp_path / "bundle.json").write_text(json.dumps({"kind": "predict", "task": "translate"}))
  with pytest.raises(UsageError, match="exported from a translate run"):
    _served_bundle(config, str(tmp_path))
