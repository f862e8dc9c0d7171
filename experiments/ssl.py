"""ssl: self-supervised pretraining of a ViT encoder (SimCLR), and the transfer study.

  python run.py --experiment=ssl                          # pretrain on the digits, no labels
  python run.py --experiment=ssl --mode=transfer_study    # scratch vs ssl start vs linear probe
  python run.py --experiment=imagecls:vit --config.init_from=workdir/ssl   # fine-tune from it
  python run.py --experiment=imagecls:vit --config.init_from=workdir/ssl \
    --config.linear_probe=true --config.train.weight_decay=0 --workdir=workdir/probe
  python run.py --experiment=ssl:mnist --config.data.tfds_data_dir=DIR

SimCLR (tasks/contrastive.py says why not MAE): two augmented views of every image (augment.ops:
a random resized crop, brightness/contrast jitter and cutout, from data/augment.py), the NT-Xent
loss over the batch. Data and model settings are imagecls's (this file starts from its config),
so imagecls:vit takes the encoder with init_from; its head starts fresh.

Measured (seed 0, 2 CPU cores shared with ~8 other jobs, load average 20-35): the default took
736 s wall and 128 s CPU (89 user + 39 system), so about 1-2 minutes alone on 2 cores; at step
1000 the encoder's 10-nearest-neighbour test accuracy is 95.56% with no label used in training
(validation NT-Xent 3.44, chance ln(255) = 5.54). The transfer study on it (seeds 0-2, mean
test accuracy): one label per class, scratch 17.4% vs ssl start 62.5%; 10%, 63.6% vs 90.4%;
100%, 54.4% vs 92.5% (table, spreads and plot: README, "Self-supervised pretraining and transfer").

Presets (`--experiment=ssl:<preset>`):
  tiny           a few seconds; used by tests (the study: 2 fractions x 1 seed, a few steps)
  mnist          tfds:mnist (28x28, patch 4), ViT 4 x 64 (needs the prepared dataset; for a GPU)
  cifar10        tfds:cifar10 (32x32 RGB, patch 4), ViT 6 x 128, flips (for a GPU)
"""

import ml_collections

from bigmodel_jax import config as config_lib
from experiments import imagecls

# config.model is imagecls's (its models' fields, so init_from transfers); ssl pretrains a vit.
MODELS = imagecls.MODELS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = imagecls.get_config(None)
  c.task = "contrastive"
  c.model.name = "vit"

  # Views: each op of augment.ops in order (data/augment.py: crop, flip, cutout, resized_crop,
  # jitter), with the settings below and imagecls's crop_padding / cutout.
  c.augment.ops = ("resized_crop", "jitter", "cutout")
  c.augment.cutout = 3  # pixels: a 3x3 hole in an 8x8 digit
  c.augment.min_area = 0.4  # resized_crop: the smallest box, as a share of the image's area
  c.augment.jitter = 0.4  # brightness and contrast scaled by 1 +- jitter

  c.ssl = ml_collections.ConfigDict()
  c.ssl.temperature = 0.2  # NT-Xent's t: > 0 (SimCLR: 0.1-0.5, lower with larger batches)
  c.ssl.proj_hidden = 128  # projector MLP widths: positive integers
  c.ssl.proj_dim = 64
  c.ssl.knn_k = 10  # neighbours that vote in the final knn_accuracy

  # --mode=transfer_study (bigmodel_jax/transfer_study.py): imagecls runs of train.steps each.
  c.study = ml_collections.ConfigDict()
  c.study.fractions = (0.01, 0.1, 1.0)  # shares of the labelled training images: (0, 1]
  c.study.seeds = (0, 1, 2)  # each seed draws its own labelled images and initialisation
  c.study.starts = ("scratch", "ssl")  # which runs: scratch | ssl | probe (a linear probe)
  c.study.steps = 300  # training steps of each run
  c.study.batch_size = 64  # at most; fewer labelled images -> all of them in each batch
  c.study.learning_rate = 1e-3  # scratch and ssl (fine-tuning every weight)
  c.study.probe_learning_rate = 1e-2  # probe (the head alone)

  c.train.steps = 1000
  c.train.batch_size = 128  # 256 views: 254 negatives for each
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.1
  c.train.log_every = 100
  c.train.eval_every = 500
  c.checkpoint.every_steps = 500
  return config_lib.apply_preset(c, arg, PRESETS)


PRESETS = {
    "tiny": {
        "parallel.num_devices": 1,  # the whole batch in one NT-Xent (tests fake 8 devices)
        "model.num_layers": 1,
        "model.embed_dim": 16,
        "model.num_heads": 2,
        "ssl.proj_hidden": 16,
        "ssl.proj_dim": 8,
        "train.steps": 20,
        "train.batch_size": 32,
        "train.warmup_steps": 2,
        "train.log_every": 10,
        "train.eval_every": 10,
        "checkpoint.every_steps": 10,
        "study.fractions": (0.02, 1.0),
        "study.seeds": (0,),
        "study.steps": 6,
        "study.batch_size": 32,
    },
    "mnist": {
        "data.source": "tfds:mnist",
        "model.patch_size": 4,
        "augment.cutout": 8,
        "train.steps": 10000,
        "train.batch_size": 512,
        "train.eval_every": 2000,
        "checkpoint.every_steps": 2000,
        "study.steps": 2000,
        "study.batch_size": 128,
    },
    "cifar10": {
        "data.source": "tfds:cifar10",
        "model.patch_size": 4,
        "model.num_layers": 6,
        "model.embed_dim": 128,
        "augment.ops": ("resized_crop", "flip", "jitter"),
        "augment.min_area": 0.2,
        "ssl.temperature": 0.1,
        "ssl.proj_hidden": 512,
        "ssl.proj_dim": 128,
        "train.steps": 50000,
        "train.batch_size": 512,
        "train.eval_every": 5000,
        "checkpoint.every_steps": 5000,
        "study.steps": 5000,
        "study.batch_size": 128,
    },
}
