"""recsys: recommendation from implicit feedback, matrix factorisation or a two-tower model.

  python run.py --experiment=recsys                    # CPU, ~2 min (see below)
  python run.py --experiment=recsys --mode=eval        # recall/NDCG/hit rate @10 + popular baseline
  python run.py --experiment=recsys --mode=recommend --config.recommend.user=u17
  python run.py --experiment=recsys:two_tower          # user/item towers over ids and features
  python run.py --experiment=recsys --config.data.source=csv:ml-latest-small/ratings.csv \\
      --config.data.min_rating=4 --workdir=workdir/ml
  python run.py --experiment=recsys --config.data.source=tsv:ml-100k/u.data \\
      --config.data.header=false --config.data.user_column=0 --config.data.item_column=1 \\
      --config.data.rating_column=2 --config.data.time_column=3 --workdir=workdir/ml100k
  python -m bigmodel_jax.bench_recsys                  # ours next to implicit's ALS, same split

Offline default: generated interactions with planted structure (20 topics, within-topic taste)
and a Zipf popularity skew (bigmodel_jax/data/synthetic_interactions.py): 6,000 users, 1,000
items, 181,019 interactions. Each user's last interaction is held out (leave-last-out by time)
and ranked among ALL items except the user's training items. `python run.py --experiment=recsys`
took 109-146 s wall, 40-45 s CPU on 2 cores shared with other jobs (load average ~30); the table
is from `python -m bigmodel_jax.bench_recsys` (seed 0, 3,000 steps; same metrics in two runs):

  model                                   recall@10  NDCG@10  hit@10
  mf, full softmax (default)                 0.3267   0.2014  0.3267
  implicit ALS, best of an 18-point grid     0.2965   0.1794  0.2965
  implicit ALS, its defaults                 0.1270   0.0690  0.1270
  most popular                               0.1515   0.0823  0.1515

Presets and options on the same data (NDCG@10 at step 3000, `python run.py ...`): bpr 0.1769;
two_tower 0.1882 (one Dense per tower; 0.1250 with --config.model.hidden_sizes=64; at ~30
interactions per user the ids already say what the noisy topic features do); sampled softmax
against 100 shared negatives (--config.loss.num_negatives=100) 0.1941.

Your own data (bigmodel_jax/data/interactions.py): one interaction per row of a CSV (csv:<path>)
or TSV (tsv:<path>) file; data.user_column, data.item_column, data.rating_column ("" = none) and
data.time_column ("" = file order) name the columns (0-based positions with data.header=false).
Rows rated below data.min_rating are dropped; the rest are positive feedback. --mode=recommend
lists a user's top unseen items with scores; an unknown user gets the most popular items, with a
first line saying so (recommend.unknown_user=error makes it a one-line error instead).

Presets (`--experiment=recsys:<preset>`):
  tiny       a few seconds; used by tests
  two_tower  the two-tower model with the generated data's user and item features
  bpr        matrix factorisation trained with the BPR loss
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

# model.name can be any of these; config.model starts from their defaults (models/<name>.py).
MODELS = ("mf", "two_tower")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="recsys")

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # | csv:<path> | tsv:<path>
  c.data.holdout = 1  # each user's last N interactions (by time) are the evaluation split
  # csv/tsv: the columns (header names, or 0-based positions with header=false); defaults fit
  # MovieLens' ratings.csv. rating_column "" = every row counts; time_column "" = file order.
  c.data.user_column = "userId"
  c.data.item_column = "movieId"
  c.data.rating_column = "rating"
  c.data.time_column = "timestamp"
  c.data.header = True  # csv/tsv: the first row names the columns
  c.data.min_rating = 0.0  # csv/tsv: rows rated below this are dropped (e.g. 4 for "liked")
  # synthetic: sizes, the number of topics and the Zipf exponent of item popularity.
  c.data.num_users = 6000
  c.data.num_items = 1000
  c.data.topics = 20
  c.data.interactions_per_user = 30  # mean; lognormal spread, at least 5
  c.data.popularity_exponent = 1.0
  c.data.seed = 0

  c.model = models.default_config(*MODELS)

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "softmax"  # | bpr (tasks/recsys.py)
  # softmax: 0 = against every item (exact; cheap for a catalog of thousands), N = sampled
  # softmax against N uniformly drawn items shared by the batch.
  c.loss.num_negatives = 0

  c.recommend = ml_collections.ConfigDict()
  c.recommend.user = ""  # --mode=recommend: the user id, as in the data
  c.recommend.count = 10  # how many items to list
  c.recommend.unknown_user = "popular"  # | error (bigmodel_jax/recommend.py)

  c.train.steps = 3000
  c.train.batch_size = 512
  # Measured on the default data (NDCG@10 at step 3000): lr 3e-3 0.144, 2e-2 0.171; with
  # weight decay 0.1 0.201, 0.5 0.153.
  c.train.learning_rate = 2e-2
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.1
  c.train.no_decay = r"(^|/)bias$"  # embeddings decay: the regulariser of factorisation
  c.train.grad_clip = 0.0
  c.train.log_every = 250
  c.train.eval_every = 1000
  c.train.eval_batches = 0
  c.checkpoint.every_steps = 1000
  return config_lib.apply_preset(c, arg, PRESETS)


PRESETS = {
    "tiny": {
        "data.num_users": 300,
        "data.num_items": 120,
        "data.topics": 6,
        "data.interactions_per_user": 15,
        "train.steps": 150,
        "train.batch_size": 64,
        "train.learning_rate": 5e-2,
        "train.warmup_steps": 10,
        "train.log_every": 50,
        "train.eval_every": 75,
        "checkpoint.every_steps": 75,
        "model.embed_dim": 16,
    },
    "two_tower": {"model.name": "two_tower"},
    "bpr": {"loss.name": "bpr"},
}
