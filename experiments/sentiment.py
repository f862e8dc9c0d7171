"""sentiment: classify texts (a Transformer encoder, or an RNN): generated movie reviews as
negative or positive, or your own labelled rows with any number of classes.

  python run.py --experiment=sentiment                # CPU, ~80 s on 2 cores (77 s last run)
  python run.py --experiment=sentiment --mode=predict --config.predict.input="Slow, but good."
  python run.py --experiment=sentiment --mode=predict --config.predict.input=new.csv
  python run.py --experiment=sentiment --mode=eval
  python run.py --experiment=sentiment --config.data.pack=true   # several reviews per row

Your own rows: --config.data.source=csv:<glob> (or tsv:<glob>, jsonl:<glob>) with
data.text_column and data.label_column (names; 0-based positions with data.header=false), labels as
strings or integers. Validation is data.validation_source, or data.val_percent% of the rows held
out by a stable hash per class. The files are built once into a cached TFDS dataset, and the class
list is saved with the run (dataset.json). --mode=predict with predict.input naming .csv/.tsv/.jsonl
files classifies every row into predict.output (default <workdir>/predictions.csv): the row, then
`predicted` and a p_<class> column per class, streamed in batches of predict.batch_size.

Offline default: the generated review corpus of bigmodel_jax/data/reviews.py, whose labels need word
order and negation ("good, but slow" is negative, "slow, but good" positive, "not bad" positive);
a bag-of-words logistic regression scores about 50% on it. Expect a test accuracy of 99.5-100% on
the 2,000 held-out reviews after the default preset (a 2 x 64 Transformer with rotary positions,
1500 steps; it passes 99% by step 750), and the showcase's probes ("Good, but slow." / "Slow, but
good.") both right.

Packing (data.pack=true, data.max_segments reviews at most per row): each row of model.max_len
tokens holds several reviews with segment ids; each gets its own logits, as if alone. On the default
data the padding falls from 63.8% to 22.0% of the training rows (9,286 rows instead of 20,000), and
the default run reached 99.95% at step 500 (unpacked 99.60%) and 100% at step 1500 (as unpacked),
274 s wall / 135 s CPU against 240 s / 140 s unpacked on a loaded shared machine: a packed step
costs ~1.3x an unpacked one but carries ~2.2x the reviews.

Presets (`--experiment=sentiment:<preset>`):
  tiny   a few seconds; used by tests (it memorises 32 reviews: expect no generalisation)
  lstm   a bidirectional LSTM instead of the Transformer (model.name=rnn; model.cell=gru for a GRU):
         100% test accuracy by step 200 of 600, ~2 minutes
  imdb   tfds:imdb_reviews (prepare it first: `tfds build imdb_reviews --file_format=array_record`,
         then --config.data.tfds_data_dir=DIR); sentencepiece 8k, 256 tokens, for a GPU (not
         measured here: no IMDB data offline)
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

# model.name can be any of these; config.model starts from their defaults (models/<name>.py).
MODELS = ("text_encoder", "rnn")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="classify_text")

  c.data = ml_collections.ConfigDict()
  # reviews | tfds:<name>, e.g. tfds:imdb_reviews | csv:<glob> | tsv:<glob> | jsonl:<glob>
  c.data.source = "reviews"
  c.data.num_train = 20000  # reviews only: generated training reviews
  c.data.num_test = 2000  # reviews only: held-out reviews (another seed)
  c.data.seed = 0  # reviews only: the generator's seed
  # tfds: where the prepared dataset is ("" -> TFDS's default); csv/tsv/jsonl: where they are
  # built once ("" -> ~/.cache/bigmodel_jax/tensorflow_datasets)
  c.data.tfds_data_dir = ""
  c.data.text_key = "text"  # tfds only: the Text feature
  c.data.label_key = "label"  # tfds only: the ClassLabel feature
  # csv/tsv/jsonl (and predict.input files): the columns by name, or by 0-based position when
  # data.header=false; labels are strings or integers, classes those of the training rows.
  c.data.text_column = "text"
  c.data.label_column = "label"
  c.data.header = True  # csv/tsv: the first row names the columns
  c.data.validation_source = ""  # csv/tsv/jsonl: the validation rows; "" -> hold out:
  c.data.val_percent = 10  # rows whose text hashes below it, per class (stable as rows change)
  c.data.tokenizer = "sentencepiece"  # | byte
  c.data.vocab_size = 512  # sentencepiece only; byte is always 256
  c.data.spm_model_type = "bpe"  # | unigram
  # Several texts per row of model.max_len tokens (text_encoder only), with segment ids so that
  # each is classified as if alone: true | false (one text per row, padded).
  c.data.pack = False
  c.data.max_segments = 8  # pack only: the most texts in a row (the model's logit slots per row)

  c.model = models.default_config(*MODELS)
  c.model.dropout = 0.1
  c.model.positions = "rotary"  # learns negation and clause order several times faster

  c.train.steps = 1500
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.01
  c.train.log_every = 100
  c.train.eval_every = 500
  c.checkpoint.every_steps = 500

  c.predict = ml_collections.ConfigDict()
  # --mode=predict: the text to classify, or CSV/TSV/JSONL file(s) (a path, a glob, or
  # csv:/tsv:/jsonl:<glob>) whose every row is classified into predict.output
  c.predict.input = ""
  c.predict.output = ""  # "" -> <workdir>/predictions.csv; a name ending .jsonl writes JSON lines
  c.predict.batch_size = 256  # rows per model call when predicting files
  c.predict.num_examples = 6  # showcase: eval texts shown with their predictions
  # An input longer than model.max_len tokens: warn (classify its first max_len tokens and say
  # so on stderr) | error (refuse it: a label for part of a text can be the wrong one).
  c.predict.on_long_input = "warn"
  return config_lib.apply_preset(c, arg, PRESETS)


PRESETS = {
    "tiny": {
        "data.num_train": 32,
        "data.num_test": 60,
        "data.tokenizer": "byte",
        "model.max_len": 48,
        "model.embed_dim": 32,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.hidden_dim": 32,
        "train.steps": 40,
        "train.batch_size": 16,
        "train.learning_rate": 3e-3,
        "train.warmup_steps": 5,
        "train.log_every": 10,
        "train.eval_every": 20,
        "checkpoint.every_steps": 20,
        "predict.num_examples": 2,
    },
    "lstm": {
        "model.name": "rnn",
        "model.num_layers": 1,
        "model.embed_dim": 64,
        "model.hidden_dim": 128,
        "train.learning_rate": 3e-3,
        "train.steps": 600,
        "train.eval_every": 200,
        "checkpoint.every_steps": 200,
    },
    "imdb": {
        "data.source": "tfds:imdb_reviews",
        "data.vocab_size": 8000,
        "model.max_len": 256,
        "model.embed_dim": 256,
        "model.num_layers": 4,
        "model.num_heads": 8,
        "train.steps": 4000,
        "train.batch_size": 64,
        "train.learning_rate": 3e-4,
        "train.weight_decay": 0.1,
        "train.eval_every": 1000,
        "checkpoint.every_steps": 1000,
    },
}
