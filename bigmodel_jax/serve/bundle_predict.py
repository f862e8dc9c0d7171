"""Export bundles of /v1/predict (sentiment, tabular, imagecls, translate) and serving them.

Such a bundle (serve/bundle.py writes the textgen one) is a folder:

  bundle.json            kind "predict", task, model id, platforms and the preprocessing settings:
                         class names; text: max_len (tokenizer/ beside it); image: shape, mean/std
                         (already inside the program, for the record), dark_background, invert;
                         translate: max_source_len, the source's PAD/EOS ids and the target's EOS
  predict.jax            jax.export StableHLO, b symbolic: (variables, inputs (b, ...)) ->
                         probabilities (b, classes), the same function the live server jits; or
                         translate's whole search (encoder, then greedy / beam search in a while
                         loop over the KV cache): (variables, source ids (b, S)) -> tokens
                         (b, decode.max_len)
  variables.msgpack      the model's variables (flax.serialization)
  tokenizer/             text, translate: the run's tokenizer folder
  preprocessing.json     tabular: feature names, normalisation and categories (data/tables.py)
  config.json            the run's config, for the record
  golden.json            request inputs (as JSON bodies carry them) and the live predictions

Loading imports serve/predictors.py and data/ only (no model, task or experiment code), and the
bundle's predictors are the live ones with the task's preprocessing replaced by these settings,
so one request gives the same JSON either way.
"""

import base64
import io
import json
import os
import shutil

import flax
import jax
import numpy as np

from bigmodel_jax.data import tables, tokenizers
from bigmodel_jax.serve import predict, predictors

PLATFORMS = ("cpu", "cuda")
TASKS = ("classify_text", "tabular", "classify_image", "translate")
GOLDEN_TEXTS = ("a wonderful film, I loved it", "dull and far too long", "it was fine", "x")
GOLDEN_SOURCES = ("Mar 3, '21", "2021-03-03", "the 3rd of March 2021", "x")
GOLDEN_COUNT = 4  # golden rows / images
# Probabilities must match golden.json to this (the same program on the same platform is exact;
# this leaves room for another CPU's vector units).
RTOL, ATOL = 1e-5, 1e-6


def _spec(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def export(task, variables, config, workdir: str, tmp: str) -> dict:
  """Writes the bundle files of a restored /v1/predict task into `tmp`; returns bundle.json."""
  name = config.experiment.split(":")[0]
  live = predictors.PREDICTORS[config.task](task, variables, config.serve.max_batch)
  host = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
  fn = live.fn if config.task != "translate" else _decode_fn(task, config.decode)
  example = np.asarray(live.example())
  (b,) = jax.export.symbolic_shape("b")
  exp = jax.export.export(fn, platforms=PLATFORMS)(
      jax.tree.map(_spec, host), jax.ShapeDtypeStruct((b, *example.shape), example.dtype)
  )
  with open(os.path.join(tmp, "predict.jax"), "wb") as f:
    f.write(exp.serialize())
  with open(os.path.join(tmp, "variables.msgpack"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(host))
  settings = {"class_names": getattr(live, "class_names", [])}
  if config.task == "translate":
    shutil.copytree(os.path.join(workdir, "tokenizer"), os.path.join(tmp, "tokenizer"))
    d = config.data
    from bigmodel_jax.models import seq2seq  # pylint: disable=g-import-not-at-top (export only)

    pad, _, eos = seq2seq.special_ids(task.src_tok.vocab_size + seq2seq.NUM_SPECIAL)
    settings.update(
        max_source_len=d.max_source_len, source_pad=pad, source_eos=eos,
        target_eos=int(task.model.tgt_specials[2]), shared_vocab=bool(d.shared_vocab),
    )  # fmt: skip
    inputs = list(GOLDEN_SOURCES)
  elif config.task == "classify_text":
    shutil.copytree(os.path.join(workdir, "tokenizer"), os.path.join(tmp, "tokenizer"))
    settings["max_len"] = config.model.max_len
    inputs = list(GOLDEN_TEXTS)
  elif config.task == "tabular":
    live.pre.save(os.path.join(tmp, "preprocessing.json"))
    inputs = [_golden_row(live.pre.features, i) for i in range(GOLDEN_COUNT)]
  else:
    settings.update(
        shape=list(task.info.shape),
        invert=config.predict.invert,
        **{k: task.stats[k] for k in ("mean", "std", "dark_background")},
    )
    inputs = [_golden_png(i, task.info.shape) for i in range(GOLDEN_COUNT)]
  golden = {"inputs": inputs, "predictions": live.predict([live.parse(x) for x in inputs])}
  with open(os.path.join(tmp, "golden.json"), "w") as f:
    json.dump(golden, f)
  return {"kind": "predict", "task": config.task, "name": name, "platforms": list(PLATFORMS),
          "preprocess": settings}  # fmt: skip


def _decode_fn(task, dec):
  """fn(variables, source ids) -> tokens: the live translator's search (task._translate)."""
  from bigmodel_jax import beam_search  # pylint: disable=g-import-not-at-top (export only)

  search = beam_search.decode_fn(task.model, dec.max_len, dec.beam_size, dec.length_penalty)
  return jax.jit(lambda v, src: search(v["params"], src))


def _golden_row(features, i: int) -> dict:
  """Row i of the golden inputs: numbers around each column's mean, categories in turn."""
  return {
      f["name"]: round(f["mean"] + (i - 1.5) * f["std"], 4)
      if f["kind"] == "numeric"
      else f["categories"][i % len(f["categories"])]
      for f in features
  }


def _golden_png(seed: int, shape) -> str:
  """A seeded noise image as base64 PNG, as a client would send it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top (pillow: images only)

  h, w, c = shape
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, c), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode()


class _Exported:
  """What the live predictors call `fn`, from predict.jax: fn(variables, inputs) -> probs."""

  def __init__(self, bundle: str, meta: dict, size: int):
    with open(os.path.join(bundle, "predict.jax"), "rb") as f:
      self.fn = jax.export.deserialize(f.read()).call
    with open(os.path.join(bundle, "variables.msgpack"), "rb") as f:
      self.variables = flax.serialization.msgpack_restore(f.read())
    self.size, self.settings = size, meta["preprocess"]


class BundleSentiment(predictors.Sentiment):

  def __init__(self, bundle, meta, size):
    e = _Exported(bundle, meta, size)
    predictors._Classifier.__init__(  # noqa: SLF001 (the live predictor, minus the task)
        self, e.fn, e.variables, size, e.settings["class_names"]
    )
    tokenizer = tokenizers.load_tokenizer(os.path.join(bundle, "tokenizer"))
    max_len = e.settings["max_len"]

    def encode(texts):  # as classify_text's encode: ids + 1 (0 pads), cut to max_len
      out = np.zeros((len(texts), max_len), np.int32)
      for row, ids in zip(out, tokenizer.encode_many(texts)):
        ids = np.asarray(ids[:max_len])
        row[: len(ids)] = ids + 1
      return out

    self.encode = encode


class BundleTabular(predictors.Tabular):

  def __init__(self, bundle, meta, size):
    e = _Exported(bundle, meta, size)
    predictors._Classifier.__init__(  # noqa: SLF001
        self, e.fn, e.variables, size, e.settings["class_names"]
    )
    self.pre = tables.Preprocessing.load(os.path.join(bundle, "preprocessing.json"))


class BundleImageClassifier(predictors.ImageClassifier):

  def __init__(self, bundle, meta, size):
    e = _Exported(bundle, meta, size)
    predictors._Classifier.__init__(  # noqa: SLF001
        self, e.fn, e.variables, size, e.settings["class_names"]
    )
    s = e.settings
    self.shape = tuple(s["shape"])

    def invert(image):  # as classify_image's _invert (data/images.border_mean, without tfds)
      x = image.astype(np.float64) / 255.0
      border = np.concatenate([x[0].ravel(), x[-1].ravel(), x[:, 0].ravel(), x[:, -1].ravel()])
      return s["invert"] == "yes" or (
          s["invert"] == "auto" and s["dark_background"] and float(border.mean()) > 0.5
      )

    self.invert = invert


class BundleTranslator(predict.Predictor):
  """The live Translator (predictors.py) with the task's encoding and search from the bundle."""

  keys = ("text", "texts")

  def __init__(self, bundle, meta, size):
    e = _Exported(bundle, meta, size)
    self.fn, self.variables, self.size = jax.jit(e.fn), jax.device_put(e.variables), size
    self.s = e.settings
    root = os.path.join(bundle, "tokenizer")
    sides = [root] if self.s["shared_vocab"] else [f"{root}/source", f"{root}/target"]
    toks = [tokenizers.load_tokenizer(p) for p in sides]
    self.src_tok, self.tgt_tok = toks[0], toks[-1]

  def parse(self, value):  # as translate's _encode: ids + EOS, cut to fit, PAD-filled
    length = self.s["max_source_len"]
    ids = self.src_tok.encode_many([predictors._text(value, "text")])[0]  # noqa: SLF001
    out = np.full(length, self.s["source_pad"], np.int32)
    ids = np.append(ids[: length - 1], self.s["source_eos"])
    out[: len(ids)] = ids
    return out

  def predict(self, items):  # as translate's _translate: batches of `size`, the last one padded
    src, out = np.stack(items), []
    for start in range(0, len(src), self.size):
      chunk = src[start : start + self.size]
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.size - len(chunk), 0)])
      tokens = np.asarray(self.fn(self.variables, padded))[: len(chunk)]
      for row in tokens:
        end = np.flatnonzero(row == self.s["target_eos"])
        out.append({"translation": self.tgt_tok.decode(row[: end[0]] if len(end) else row)})
    return out

  def example(self):
    return self.parse("a")


BUNDLE_PREDICTORS = {
    "classify_text": BundleSentiment,
    "tabular": BundleTabular,
    "classify_image": BundleImageClassifier,
    "translate": BundleTranslator,
}


def load(bundle: str, meta: dict, serve_config) -> predict.PredictService:
  predictor = BUNDLE_PREDICTORS[meta["task"]](bundle, meta, serve_config.max_batch)
  return predict.PredictService(predictor, serve_config, meta["name"])


def check(bundle: str, meta: dict, max_batch: int) -> bool:
  """Runs golden.json's inputs through the bundle; True when labels and probabilities match."""
  with open(os.path.join(bundle, "golden.json")) as f:
    golden = json.load(f)
  predictor = BUNDLE_PREDICTORS[meta["task"]](bundle, meta, max_batch)
  outs = predictor.predict([predictor.parse(x) for x in golden["inputs"]])
  ok = True
  for i, (want, got) in enumerate(zip(golden["predictions"], outs, strict=True)):
    if "translation" in want:
      same = want == got
      ok &= same
      print(f"{'ok  ' if same else 'DIFF'} input {i}: {got['translation']!r}")
      continue
    w, g = want["probabilities"], got["probabilities"]
    same = (
        want["label"] == got["label"]
        and list(w) == list(g)
        and np.allclose(list(g.values()), list(w.values()), rtol=RTOL, atol=ATOL)
    )
    ok &= same
    worst = max(abs(g[k] - w.get(k, np.inf)) for k in g)
    print(f"{'ok  ' if same else 'DIFF'} input {i}: {got['label']!r} (golden {want['label']!r}), "
          f"largest probability difference {worst:.2e}")  # fmt: skip
  return ok
