"""POST /v1/predict for the classifiers and the translator: requests batched together.

Each input of a request (a body may hold one or several) is parsed and preprocessed on arrival
(`Predictor.parse`: bad input is a 400 before it joins a batch); a worker gathers up to
serve.max_batch inputs, waiting at most serve.max_wait_ms after the first, and runs
`Predictor.predict` on them in a thread, padded to serve.max_batch rows so the model compiles
once (at warm-up). Rows never mix: a row's output does not depend on its batch.
"""

import asyncio
import base64
import binascii
import time

import fastapi

from bigmodel_jax.serve import app as app_lib


class Predictor:
  """The per-task glue (serve/predictors.py): inputs in, JSON-able predictions out."""

  keys: tuple[str, str]  # the body's key for one input and for a list of them, e.g. text, texts

  def parse(self, value):
    """One input from the JSON body -> what `predict` takes; ApiError(400) when it is bad."""
    raise NotImplementedError

  def predict(self, items: list) -> list[dict]:
    raise NotImplementedError

  def example(self):
    """A parsed input for warm-up."""
    raise NotImplementedError


class PredictService(app_lib.Service):

  def __init__(self, predictor: Predictor, serve_config, name: str):
    self.name, self.predictor = name, predictor
    self.max_batch, self.max_queue = serve_config.max_batch, serve_config.max_queue
    self.max_wait = serve_config.max_wait_ms / 1e3
    self.queue = None  # asyncio.Queue of (item, future), made on the server's event loop
    self.worker = None
    self.metrics = None

  def warm_up(self):
    self.predictor.predict([self.predictor.example()])

  def routes(self, app, metrics):
    self.metrics = metrics
    metrics.watch(lambda: self.queue.qsize() if self.queue else 0)
    one, many = self.predictor.keys

    @app.post("/v1/predict")
    async def predict(request: fastapi.Request):
      kind = request.headers.get("content-type", "")
      if kind.startswith("multipart/form-data"):
        form = await request.form()
        values = [await f.read() for k, f in form.multi_items() if k in (one, many)]
        values = [v for v in values if isinstance(v, bytes)]
      else:
        try:
          body = await request.json()
        except ValueError:
          raise app_lib.ApiError(400, "the body is not valid JSON", "invalid_body") from None
        if not isinstance(body, dict) or (one in body) == (many in body):
          raise app_lib.ApiError(
              400, f"give {one!r} (one input) or {many!r} (a list)", "invalid_body"
          )
        values = [body[one]] if one in body else body[many]
        if not isinstance(values, list):
          raise app_lib.ApiError(400, f"{many!r} must be a list", "invalid_body", many)
      if not 1 <= len(values) <= self.max_queue:
        raise app_lib.ApiError(400, f"give 1 to {self.max_queue} inputs", "invalid_body")
      items = [self.predictor.parse(v) for v in values]
      return {"model": self.name, "predictions": await self._submit(items)}

  async def _submit(self, items):
    loop = asyncio.get_running_loop()
    if self.worker is None or self.worker.get_loop() is not loop:  # first use (or a new loop)
      self.queue = asyncio.Queue()
      self.worker = loop.create_task(self._work())
    if self.queue.qsize() + len(items) > self.max_queue:
      raise app_lib.ApiError(429, "too many inputs are waiting; retry later", "overloaded")
    futures = [loop.create_future() for _ in items]
    for item, future in zip(items, futures):
      self.queue.put_nowait((item, future))
    return await asyncio.gather(*futures)

  async def _work(self):
    while True:
      batch = [await self.queue.get()]
      deadline = time.perf_counter() + self.max_wait
      while len(batch) < self.max_batch:
        try:
          left = deadline - time.perf_counter()
          batch.append(
              self.queue.get_nowait()
              if left <= 0
              else await asyncio.wait_for(self.queue.get(), left)
          )
        except (TimeoutError, asyncio.QueueEmpty):
          break
      self.metrics.batch.observe(len(batch))
      try:
        results = await asyncio.to_thread(self.predictor.predict, [item for item, _ in batch])
      except Exception as e:  # noqa: BLE001 (the callers get it as a 500)
        for _, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      for (_, future), result in zip(batch, results):
        if not future.done():  # a caller that went away
          future.set_result(result)


def decode_base64(value) -> bytes:
  if isinstance(value, bytes):
    return value
  if not isinstance(value, str):
    raise app_lib.ApiError(400, "an image must be a base64 string", "invalid_image")
  try:
    return base64.b64decode(
        value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True
    )
  except (binascii.Error, ValueError):
    raise app_lib.ApiError(400, "the image is not valid base64", "invalid_image") from None
