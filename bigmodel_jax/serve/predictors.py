"""The per-task glue of /v1/predict (serve/predict.py), one small class per task, chosen by
config.task through PREDICTORS. Preprocessing is the task's own (its tokenizer, its table
preprocessing, its image decoding and normalisation), so the server predicts what
--mode=predict would."""

import io

import jax
import numpy as np

from bigmodel_jax.data import image_files, tables
from bigmodel_jax.errors import UsageError
from bigmodel_jax.serve import app as app_lib
from bigmodel_jax.serve import predict


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
  """(N, ...) -> (max(N, size) rounded to size, ...) zero rows after: one program per shape."""
  extra = -len(rows) % size
  return np.concatenate([rows, np.zeros((extra, *rows.shape[1:]), rows.dtype)])


def _text(value, key) -> str:
  if not isinstance(value, str) or not value.strip():
    raise app_lib.ApiError(400, f"each {key} must be a non-empty string", "invalid_input", key)
  return value


class _Classifier(predict.Predictor):
  """Class probabilities from a jitted fn(variables, batch) over fixed-size padded batches."""

  def __init__(self, fn, variables, size, class_names):
    self.fn, self.variables, self.size = jax.jit(fn), jax.device_put(variables), size
    self.class_names = [str(c) for c in class_names]

  def predict(self, items):
    rows, n = _pad(np.stack(items), self.size), self.size
    chunks = [np.asarray(self.fn(self.variables, rows[i : i + n])) for i in range(0, len(rows), n)]
    return [
        {
            "label": self.class_names[int(p.argmax())],
            "probabilities": dict(zip(self.class_names, p.tolist())),
        }
        for p in np.concatenate(chunks)[: len(items)]
    ]


class Sentiment(_Classifier):
  keys = ("text", "texts")

  def __init__(self, task, variables, size):
    fn = lambda v, t: jax.nn.softmax(task.model.apply(v, t))  # noqa: E731 (as task.probabilities)
    super().__init__(fn, variables, size, task.class_names)
    self.task, self.encode = task, task.encode  # encode: texts -> int32 (N, max_len)

  def parse(self, value):
    return self.encode([_text(value, "text")])[0]

  def example(self):
    return self.parse("a")


class Tabular(_Classifier):
  keys = ("row", "rows")

  def __init__(self, task, variables, size):
    def fn(v, x):  # P(label = label_values[1]) as two-class probabilities
      p = jax.nn.sigmoid(task.model.apply(v, x, train=False)[:, 0])
      return jax.numpy.stack([1 - p, p], axis=-1)

    super().__init__(fn, variables, size, task.pre.label_values)
    self.task, self.pre = task, task.pre

  def parse(self, value):
    if not isinstance(value, dict):
      raise app_lib.ApiError(400, "each row must be an object {column: value}", "invalid_input")
    columns = {
        f["name"]: np.array([_cell(value.get(f["name"]))], object) for f in self.pre.features
    }
    missing = [f["name"] for f in self.pre.features if f["name"] not in value]
    if missing:
      raise app_lib.ApiError(
          400, f"the row lacks the column(s) {', '.join(missing)}", "invalid_input"
      )
    try:
      return self.pre.transform(tables.Table(columns, None, "the row"), key="row")[0]
    except UsageError as e:
      raise app_lib.ApiError(400, str(e), "invalid_input") from None

  def example(self):
    return self.parse({f["name"]: 0 if f["kind"] == "numeric" else "" for f in self.pre.features})


def _cell(value) -> str:
  """A JSON value as a CSV cell would read (numbers as text, null as empty)."""
  if value is None:
    return ""
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise app_lib.ApiError(
        400, f"a cell must be a number, a string or null; got {value!r:.40}", "invalid_input"
    )
  return str(value)


class ImageClassifier(_Classifier):
  keys = ("image", "images")

  def __init__(self, task, variables, size):
    def fn(v, x):  # as the task's own --mode=predict (its normalisation statistics)
      return jax.nn.softmax(task.model.apply(v, task._normalize(x), train=False))  # noqa: SLF001

    super().__init__(fn, variables, size, task.info.class_names)
    # invert: uint8 (H, W, C) -> whether to invert it (light-on-dark training images)
    self.task, self.shape, self.invert = task, task.info.shape, task._invert  # noqa: SLF001

  def parse(self, value):
    data = predict.decode_base64(value)
    h, w, c = self.shape
    try:
      image = image_files.decode(io.BytesIO(data), (h, w), c)
    except (image_files.BadImage, image_files.TooLarge) as e:
      raise app_lib.ApiError(
          400, f"not an image that pillow can read: {e}", "invalid_image"
      ) from None
    return 255 - image if self.invert(image) else image  # as --mode=predict

  def example(self):
    return np.zeros(self.shape, np.uint8)


class Translator(predict.Predictor):
  keys = ("text", "texts")

  def __init__(self, task, variables, size):
    self.task, self.params, self.size = task, jax.device_put(variables["params"]), size

  def parse(self, value):
    t = self.task
    length = t.config.data.max_source_len  # cut to fit, as --mode=translate's files are
    return t._encode(t.src_tok, [_text(value, "text")], length)[0][0]  # noqa: SLF001

  def predict(self, items):
    texts = self.task._translate(self.params, np.stack(items), self.size)  # noqa: SLF001
    return [{"translation": s} for s in texts]

  def example(self):
    return self.parse("a")


PREDICTORS = {
    "classify_text": Sentiment,
    "tabular": Tabular,
    "classify_image": ImageClassifier,
    "translate": Translator,
}


def make_service(task, variables, config) -> predict.PredictService:
  """The registry's hook (serve/__init__.py)."""
  predictor = PREDICTORS[config.task](task, variables, config.serve.max_batch)
  return predict.PredictService(predictor, config.serve, config.experiment.split(":")[0])
