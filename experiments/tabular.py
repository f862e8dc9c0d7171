"""tabular: binary classification of table rows with a small MLP (the founding notes, done right).

  python run.py --experiment=tabular                   # CPU, seconds
  python run.py --experiment=tabular --mode=eval       # loss, accuracy, AUC on the test split
  python run.py --experiment=tabular --mode=predict --config.predict.input=rows.csv
  python run.py --experiment=tabular --config.data.source=csv:data.csv \\
      --config.data.label_column=churned --workdir=./workdir/churn

The founding notes' MLP (features -> 20 -> 10 -> 1, ReLU) with Adam (lr 1e-3), two bugs fixed:
the loss is sigmoid binary cross-entropy on the logit (not BCE on an unbounded output), and a row is
predicted positive when its probability is >= 0.5 (not argmax over one output). Features are
standardised with training-split statistics only; string columns are one-hot encoded with the
training split's categories (bigmodel_jax/data/tables.py says exactly how, and how a two-valued
label maps to 0/1). The encoding is saved in the workdir (preprocessing.json) for eval and predict.

Offline default: scikit-learn's bundled breast-cancer data (569 real patients, 30 features; label
benign 0 / malignant 1), a fixed stratified 80/20 split (455 train, 114 test). Expect 96.5% test
accuracy and AUC 0.994 (seed 0), printed with a confusion matrix. One test row is 0.9%: other seeds
give 93.9-96.5% on this split, and over 6 splits x 3 seeds the mean is 96.6%.

Predict writes <workdir>/predictions.csv (or predict.output): the input's line number, the
probability of the label's second value and the predicted label, one row per input row.

Presets (`--experiment=tabular:<preset>`):
  tiny    a few seconds; used by tests
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

# model.name can be any of these; config.model starts from their defaults (models/<name>.py).
MODELS = ("mlp",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="tabular")

  c.data = ml_collections.ConfigDict()
  c.data.source = "breast_cancer"  # | csv:<path>
  c.data.label_column = ""  # csv: the binary label's column
  c.data.drop_columns = ()  # columns to ignore (IDs, free text)
  c.data.max_categories = 50  # csv: most distinct values a string column may have (one-hot)
  c.data.test_fraction = 0.2  # held-out share of the fixed stratified split
  c.data.split_seed = 0

  c.model = models.default_config(*MODELS)

  # Adam with a constant learning rate of 1e-3, as in the founding notes.
  c.train.steps = 1500
  c.train.batch_size = 32
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 0
  c.train.min_lr_ratio = 1.0
  c.train.weight_decay = 0.0
  c.train.b2 = 0.999
  c.train.grad_clip = 0.0
  c.train.log_every = 100
  c.train.eval_every = 500
  c.checkpoint.every_steps = 500

  c.predict = ml_collections.ConfigDict()
  c.predict.input = ""  # a CSV with the feature columns, for --mode=predict
  c.predict.output = ""  # "" -> <workdir>/predictions.csv
  return config_lib.apply_preset(c, arg, PRESETS)


PRESETS = {
    "tiny": {
        "train.steps": 40,
        "train.batch_size": 32,
        "train.learning_rate": 1e-2,
        "train.log_every": 10,
        "train.eval_every": 20,
        "checkpoint.every_steps": 20,
    },
}
