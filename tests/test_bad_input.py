"""The bad-input catalogue: each case is one line on stderr, no traceback, the right exit code
(2 usage, 1 runtime), and the workdir exactly as it was."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from bigmodel_jax import trainer
from tests.helpers import tiny_config
from tests.image_helpers import write_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--experiment=textgen:tiny"
IMAGES = "--experiment=imagecls:tiny"
IMAGE_CACHE = "--config.data.tfds_data_dir={tmp}/image_cache"

CASES = [
    # (id, args, exit code, part of the message); {tmp} is a scratch folder, {trained} a trained
    # workdir, {data} the test's TFDS cache, {sentiment} and {translate} trained workdirs of those
    # experiments (trained only when a chosen case names them).
    ("unknown experiment", ["--experiment=textgem"], 2, "unknown experiment 'textgem'"),
    ("unknown preset", ["--experiment=textgen:huge"], 2, "unknown preset 'huge'"),
    ("no experiment", [], 2, "--experiment is required"),
    ("unknown config key", [TINY, "--config.model.layers=2"], 2, "unknown config key"),
    ("config group", [TINY, "--config.train=1"], 2, "'train' is a group"),
    ("wrong type", [TINY, "--config.train.steps=ten"], 2, "expected int"),
    ("bool type", [TINY, "--config.model.use_bias=perhaps"], 2, "expected bool"),
    ("override without value", [TINY, "--config.train.steps"], 2, "needs a value"),
    ("negative steps", [TINY, "--config.train.steps=-3"], 2, "train.steps=-3 must be a positive"),
    ("zero steps", [TINY, "--config.train.steps=0"], 2, "train.steps=0 must be a positive"),
    (
        "batch not divisible by devices",
        [TINY, "--config.train.batch_size=12"],
        2,
        "does not divide over 8 devices",
    ),
    ("fsdp with pmap", [TINY, "--config.parallel.fsdp=2"], 2, "need parallel.strategy=mesh"),
    (
        "cpu devices below -1",
        [TINY, "--config.parallel.cpu_devices=-2"],
        2,
        "parallel.cpu_devices=-2 must be >= 0",
    ),
    ("unknown strategy", [TINY, "--config.parallel.strategy=ddp"], 2, "valid: pmap, mesh"),
    (
        "mesh does not divide",
        [TINY, "--config.parallel.strategy=mesh", "--config.parallel.fsdp=3"],
        2,
        "does not divide the 8 devices",
    ),
    (
        "heads do not divide width",
        [TINY, "--config.model.num_heads=3"],
        2,
        "must be divisible by model.num_heads=3",
    ),
    ("unknown tokenizer", [TINY, "--config.data.tokenizer=wordpiece"], 2, "data.tokenizer"),
    (
        "sentencepiece vocabulary too small",
        [TINY, "--config.data.tokenizer=sentencepiece", "--config.data.vocab_size=10"],
        2,
        "data.vocab_size",
    ),
    ("unknown on_nan", [TINY, "--config.train.on_nan=ignore"], 2, "valid: stop, skip"),
    (
        "unknown optimizer",
        [TINY, "--config.train.optimizer=adam"],
        2,
        "train.optimizer='adam' is not valid (did you mean adamw?)",
    ),
    (
        "logical rule to no mesh axis",
        [TINY, "--config.parallel.logical_rules=(('embed', 'model'),)"],
        2,
        "parallel.logical_rules: ('embed', 'model') is not a (logical name, mesh axes) pair",
    ),
    ("unknown data scheme", [TINY, "--config.data.source=s3://bucket"], 2, "pystdlib"),
    ("missing data file", [TINY, "--config.data.source=text_files:{tmp}/nope.txt"], 2, "nope.txt"),
    ("glob matching nothing", [TINY, "--config.data.source=text_files:{tmp}/*.md"], 2, "*.md"),
    ("empty corpus", [TINY, "--config.data.source=text_files:{tmp}/empty/*.txt"], 2, "empty"),
    (
        "corpus shorter than a sequence",
        [TINY, "--config.data.source=text_files:{tmp}/short/*"],
        2,
        "block_size",
    ),
    ("non-UTF-8 text", [TINY, "--config.data.source=text_files:{tmp}/binary/*"], 2, "UTF-8"),
    (
        "unknown tfds dataset",
        [TINY, "--config.data.source=tfds:tiny_shakespear"],
        2,
        "unknown tfds dataset",
    ),
    (
        "tfds dataset not prepared",
        [
            TINY,
            "--config.data.source=tfds:tiny_shakespeare",
            "--config.data.tfds_data_dir={tmp}/no_tfds",
        ],
        2,
        "not prepared",
    ),
    ("workdir not writable", [TINY, "--workdir=/sys/bigmodel_jax_test"], 2, "not writable"),
    ("workdir is a file", [TINY, "--workdir={tmp}/a_file"], 2, "is a file"),
    (
        "init_from pointing nowhere",
        [TINY, "--config.init_from={tmp}/nowhere"],
        1,
        "config.init_from",
    ),
    ("unknown mode", [TINY, "--mode=deploy"], 2, "--mode='deploy' is not valid"),
    ("unknown flag", [TINY, "--epochs=3"], 2, "Unknown command line flag 'epochs'"),
    ("stray argument", [TINY, "train"], 2, "unexpected arguments"),
    ("sampling with no checkpoint", [TINY, "--mode=sample"], 1, "train first"),
    ("eval with no checkpoint", [TINY, "--mode=eval"], 1, "train first"),
    (
        "prompt longer than the context",
        [TINY, "--workdir={trained}", "--mode=sample", "--config.sample.prompt=" + "x" * 40],
        2,
        "model.block_size",
    ),
    (
        "temperature below zero",
        [TINY, "--workdir={trained}", "--mode=sample", "--config.sample.temperature=-0.5"],
        2,
        "temperature=-0.5",
    ),
    (
        "CSV without the label column",
        [
            "--experiment=tabular:tiny",
            "--config.data.source=csv:{tmp}/table.csv",
            "--config.data.label_column=churned",
        ],
        2,
        "churned",
    ),
    (
        "missing CSV file",
        [
            "--experiment=tabular:tiny",
            "--config.data.source=csv:{tmp}/no.csv",
            "--config.data.label_column=y",
        ],
        2,
        "no.csv",
    ),
    (
        "top_p above one",
        [TINY, "--workdir={trained}", "--mode=sample", "--config.sample.top_p=1.5"],
        2,
        "top_p=1.5",
    ),
    (
        "NaN learning rate",
        [TINY, "--config.train.learning_rate=nan"],
        2,
        "train.learning_rate=nan must be a finite number",
    ),
    (
        "infinite temperature",
        [TINY, "--workdir={trained}", "--mode=sample", "--config.sample.temperature=inf"],
        2,
        "must be a finite number",
    ),
    (
        "seed beyond 64 bits",
        [TINY, "--config.seed=99999999999999999999"],
        2,
        "must be a seed in [0, 4294967295]",
    ),
    ("b2 of one", [TINY, "--config.train.b2=1"], 2, "train.b2=1.0 must be in [0, 1)"),
    (
        "negative min_lr_ratio",
        [TINY, "--config.train.min_lr_ratio=-0.5"],
        2,
        "train.min_lr_ratio=-0.5 must be in [0, 1]",
    ),
    (
        "best_metric no eval reports",
        [TINY, "--config.checkpoint.best_metric=bleu"],
        2,
        "checkpoint.best_metric='bleu' is not a metric",
    ),
    (
        "steps below the checkpoint's",
        [TINY, "--workdir={trained}", "--config.train.steps=1"],
        2,
        "train.steps=1 is below the step of the checkpoint",
    ),
    (
        "showcase prompt longer than the context",
        [TINY, "--config.sample.num_samples=1", "--config.sample.prompt=" + "y" * 40],
        2,
        "sample.prompt is 40 tokens but model.block_size=32",
    ),
    (
        "model larger than memory",
        [TINY, "--config.model.embed_dim=32768", "--config.model.num_layers=16"],
        2,
        "GiB per device for parameters and optimizer state, but a device has",
    ),
    (
        "a folder of the user's own files",
        [TINY, "--workdir={tmp}/users_folder"],
        2,
        "holds files that are not a bigmodel_jax run (config.json, notes.txt)",
    ),
    (
        "text setting that is not UTF-8",
        [TINY, "--config.sample.prompt=ab\udcff"],
        2,
        "sample.prompt='ab?' is not valid UTF-8",
    ),
    (
        "malformed coordinator",
        [
            TINY,
            "--config.distributed.coordinator=10.0.0.1",
            "--config.distributed.num_processes=2",
            "--config.distributed.process_id=1",
        ],
        2,
        "must be host:port",
    ),
    (
        "unreachable coordinator",
        [
            TINY,
            "--config.distributed.coordinator=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            "--config.distributed.process_id=1",
            "--config.distributed.timeout_s=2",
        ],
        1,
        "could not reach the coordinator 127.0.0.1:",
    ),
    ("auto with no cluster", [TINY, "--config.distributed.auto=true"], 1, "found no cluster"),
    (
        "profile_steps backwards",
        [TINY, "--config.train.profile_steps=9,3"],
        2,
        "train.profile_steps=(9, 3)",
    ),
    (
        "text to classify longer than the model reads, refused",
        [
            "--experiment=sentiment:tiny",
            "--workdir={sentiment}",
            "--mode=predict",
            "--config.predict.on_long_input=error",
            "--config.predict.input=" + "Slow, but good. " * 6250,
        ],
        2,
        "predict.input is 100000 tokens long but the model reads 48 (model.max_len=48)",
    ),
    (
        "text to translate longer than the model reads, refused",
        [
            "--experiment=translate:tiny",
            "--workdir={translate}",
            "--mode=translate",
            "--config.decode.on_long_input=error",
            "--config.decode.input=" + "2021-03-03 " * 9091,
        ],
        2,
        "decode.input is 100001 tokens long but the model reads 31 (data.max_source_len=32",
    ),
    (
        "sentiment CSV without its label column",
        [
            "--experiment=sentiment:tiny",
            "--config.data.source=csv:{tmp}/reviews.csv",
            "--config.data.label_column=stars",
            "--config.data.tfds_data_dir={tmp}/records",
        ],
        2,
        "data.label_column='stars' is not a column of",
    ),
    (
        "TSV read as CSV",
        [
            "--experiment=sentiment:tiny",
            "--config.data.source=csv:{tmp}/reviews.tsv",
            "--config.data.tfds_data_dir={tmp}/records",
        ],
        2,
        "the file looks like TSV; use data.source=tsv:<glob>",
    ),
    (
        "translation pairs without their source column",
        [
            "--experiment=translate:tiny",
            "--config.data.source=csv:{tmp}/reviews.csv",
            "--config.data.tfds_data_dir={tmp}/records",
        ],
        2,
        "data.source_column='source' is not a column of",
    ),
    (
        "translations written over their input",
        [
            "--experiment=translate:tiny",
            "--workdir={translate}",
            "--mode=translate",
            "--config.data.source_column=text",
            "--config.decode.input={tmp}/reviews.csv",
            "--config.decode.output={tmp}/reviews.csv",
        ],
        2,
        "reviews.csv is an input file",
    ),
    (
        "predictions written over their input",
        [
            "--experiment=sentiment:tiny",
            "--workdir={sentiment}",
            "--mode=predict",
            "--config.predict.input={tmp}/reviews.csv",
            "--config.predict.output={tmp}/reviews.csv",
        ],
        2,
        "is an input file; writing it would destroy the input",
    ),
    (
        "image folder with an unreadable image",
        [IMAGES, "--config.data.source=image_folder:{tmp}/images/bad_file", IMAGE_CACHE],
        2,
        "oops.png is not a readable image (cannot identify image file",
    ),
    (
        "image folder with an empty class folder",
        [IMAGES, "--config.data.source=image_folder:{tmp}/images/empty_class", IMAGE_CACHE],
        2,
        "empty_class/dog has no JPEG, PNG, BMP or WebP images",
    ),
    ("image size zero", [IMAGES, "--config.data.image_size=0"], 2, "data.image_size=0 must be"),
    (
        "unknown on_long_input",
        ["--experiment=sentiment:tiny", "--mode=predict", "--config.predict.on_long_input=cut"],
        2,
        "valid: warn, error",
    ),
]


def _closed_port() -> int:
  """A local port nothing listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bad_input")
  for folder, content in (("empty", b""), ("short", b"def f():\n"), ("binary", b"\xff\xfe\x00a")):
    (tmp / folder).mkdir()
    (tmp / folder / "a.txt").write_bytes(content)
  (tmp / "a_file").write_text("not a directory")
  (tmp / "users_folder").mkdir()
  (tmp / "users_folder" / "notes.txt").write_text("mine")
  (tmp / "users_folder" / "config.json").write_text('{"model_type": "gpt2"}')
  (tmp / "table.csv").write_text("age,income,plan\n31,40000,basic\n45,52000,pro\n")
  (tmp / "reviews.csv").write_text("text,label\nGood.,pos\nBad.,neg\n")
  (tmp / "reviews.tsv").write_text("text\tlabel\nGood.\tpos\nBad.\tneg\n")
  write_shapes(tmp / "images" / "bad_file", 2)
  (tmp / "images" / "bad_file" / "circle" / "oops.png").write_text("not an image")
  write_shapes(tmp / "images" / "empty_class", 2)
  (tmp / "images" / "empty_class" / "dog").mkdir()
  data = str(tmp / "tfds")
  trained = str(tmp / "trained")
  trainer.run(tiny_config(data, train__steps=2), trained)
  return tmp, trained, data


@pytest.fixture(scope="module")
def trained_sentiment(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sentiment"))
  trainer.run(tiny_config("", "sentiment:tiny", train__steps=2), workdir)
  return workdir


@pytest.fixture(scope="module")
def trained_translate(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("translate"))
  trainer.run(tiny_config("", "translate:tiny", train__steps=2), workdir)
  return workdir


def _listing(path: str):
  if not os.path.exists(path):
    return None
  return (
      sorted(
          (os.path.relpath(os.path.join(r, f), path), os.path.getsize(os.path.join(r, f)))
          for r, _, fs in os.walk(path)
          for f in fs
      )
      if os.path.isdir(path)
      else "file"
  )


@pytest.mark.parametrize("args, code, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(scratch, request, args, code, message):
  tmp, trained, data = scratch
  workdirs = {
      name: request.getfixturevalue(f"trained_{name}")
      for name in ("sentiment", "translate")
      if any(f"{{{name}}}" in a for a in args)
  }
  args = [a.format(tmp=tmp, trained=trained, port=_closed_port(), **workdirs) for a in args]
  if not any(a.startswith("--workdir=") for a in args):
    args.append(f"--workdir={tmp}/workdir")
  workdir = next(a for a in args if a.startswith("--workdir="))[len("--workdir=") :]
  if TINY in args and not any("tfds_data_dir" in a for a in args):
    args.append(f"--config.data.tfds_data_dir={data}")
  before = _listing(workdir)
  result = subprocess.run(
      [sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  lines = result.stderr.strip().splitlines()
  assert result.returncode == code, result.stderr[-2000:]
  assert lines and lines[-1].startswith("error: ") and message in lines[-1], lines[-1:]
  assert "Traceback" not in result.stderr
  assert sum(line.startswith("error: ") for line in lines) == 1
  assert _listing(workdir) == before
  if before is None and os.path.exists(workdir):
    shutil.rmtree(workdir)
