"""imagecls: image classification with a small CNN, a ResNet or a ViT, and data augmentation.

  python run.py --experiment=imagecls                  # CPU, ~15 s on 2 cores (12 s last run)
  python run.py --experiment=imagecls --mode=eval
  python run.py --experiment=imagecls --mode=predict --config.predict.input=digit.png
  python run.py --experiment=imagecls:resnet           # ResNet with BatchNorm, same data
  python run.py --experiment=imagecls:vit --config.init_from=workdir/ssl   # from an ssl encoder
  python run.py --experiment=imagecls:cifar10 --config.data.tfds_data_dir=DIR
  python run.py --experiment=imagecls --config.data.source=image_folder:pets --workdir=runs/pets
  python run.py --experiment=imagecls --config.data.source=image_folder:pets --workdir=runs/pets \
    --mode=predict --config.predict.input=new_photos        # -> runs/pets/predictions.csv

Offline default: scikit-learn's bundled 8x8 handwritten digits (1,797 real scans; 1,437 train /
360 test, a fixed stratified split; see bigmodel_jax/data/images.py for why). Expect about 99% top-1
test accuracy from the default CNN (98.9% with seed 0; 98.9-99.2% over seeds 0-2), printed at the
end with a per-class table. The resnet preset reaches about the same (99.4%), many times slower on
a CPU. Predict reads an image, resizes it to the dataset's size and channels, and for light-on-dark
data (digits, MNIST) inverts a light background to match (predict.invert=auto|yes|no). Given a
folder or a glob it writes one CSV row per image (path, class, probability, the top-k), in sorted
path order, in batches of predict.batch_size: about 2,300 images/s for 2,100 small images on 2 CPU
cores with the default CNN at 32x32 (README, "Your own images").

Data (`data.source`): digits | tfds:mnist | tfds:fashion_mnist | tfds:cifar10 (any prepared TFDS
dataset with "image" and "label" features and train/test splits) | image_folder:<dir> (one
subfolder per class; a validation/ or val/ subfolder is the validation split, else data.val_percent
by a hash of each path) | csv:<file> (data.image_column, data.label_column). Your own images are
resized to data.image_size (channels: data.channels, 0 = from the data), decoded once into a cached
TFDS dataset (data.tfds_data_dir or ~/.cache/bigmodel_jax), and an unreadable file stops the run
or is skipped (data.on_bad_image=stop|skip). Augmentation on training batches only: random crop
from an image padded by augment.crop_padding pixels, horizontal flip (augment.flip; off for
digits), cutout of an augment.cutout-pixel square (data/augment.py, shared with ssl).

Transfer (README, "Self-supervised pretraining and transfer"): init_from an ssl run takes its
encoder (the head starts fresh); linear_probe=true trains the head alone; data.label_fraction
trains on a share of the labels (per class, by data.label_seed). The ViT from scratch on all the
labels: see the 100% row of the transfer study there (300 steps).

Presets (`--experiment=imagecls:<preset>`):
  tiny           a few seconds; used by tests
  resnet         a ResNet (3 stages of 2 basic blocks, BatchNorm) on the digits
  vit            a Vision Transformer on the digits (start it from ssl with init_from)
  mnist          tfds:mnist, CNN, crop padding 2 (needs the prepared dataset)
  fashion_mnist  tfds:fashion_mnist, ResNet, crop padding 2, flip
  cifar10        tfds:cifar10, ResNet-20 widths, crop padding 4, flip, cutout 8 (for a GPU)
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

# model.name can be any of these; config.model starts from their defaults (models/<name>.py).
MODELS = ("cnn", "resnet", "vit")  # as tasks/classify_image.py MODELS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="classify_image")

  c.data = ml_collections.ConfigDict()
  c.data.source = "digits"  # | tfds:<name> | image_folder:<dir> | csv:<file>
  # Where tfds:<name> is prepared ("" -> TFDS's default), and where image_folder/csv sources are
  # cached ("" -> ~/.cache/bigmodel_jax/tensorflow_datasets).
  c.data.tfds_data_dir = ""
  c.data.test_fraction = 0.2  # digits only: the held-out share of the fixed stratified split
  c.data.split_seed = 0  # digits only
  # image_folder / csv only (your own images):
  c.data.image_size = 32  # each image is resized to image_size x image_size pixels
  c.data.channels = 0  # 1 (grayscale) or 3 (RGB); 0: 3 if any image has colour, else 1
  c.data.val_percent = 10  # held out for validation by a hash of each path (no validation/ folder)
  c.data.on_bad_image = "stop"  # stop | skip: a file pillow cannot read stops the run | is skipped
  c.data.image_column = "image"  # csv: the column of image paths (relative to the CSV's folder)
  c.data.label_column = "label"  # csv: the column of class names
  # Train on this share of the training images, drawn per class by label_seed: (0, 1].
  c.data.label_fraction = 1.0
  c.data.label_seed = 0

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 1  # pixels of zero padding to crop back from; 0 = off
  c.augment.flip = False  # random horizontal flips (not for digits)
  c.augment.cutout = 0  # side of a square set to the mean pixel; 0 = off

  # vit only: train the head alone on a frozen encoder (with init_from an ssl run, a linear probe);
  # needs train.weight_decay=0.
  c.linear_probe = False

  # Where cnn and resnet share a field (widths, stage_sizes) this holds cnn's default, so the
  # resnet presets set their own.
  c.model = models.default_config(*MODELS)

  c.train.steps = 1000
  c.train.batch_size = 64
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.01
  c.train.weight_decay = 0.05
  c.train.log_every = 100
  c.train.eval_every = 500
  c.checkpoint.every_steps = 500

  c.predict = ml_collections.ConfigDict()
  c.predict.input = ""  # --mode=predict: an image file (prints), or a folder or glob (writes a CSV)
  c.predict.output = ""  # the CSV of a folder or glob ("" -> <workdir>/predictions.csv)
  c.predict.batch_size = 256  # images classified at once for a folder or glob
  c.predict.top_k = 3
  c.predict.invert = "auto"  # auto: invert a light-background image for dark-background data
  return config_lib.apply_preset(c, arg, PRESETS)


_RESNET = {"model.name": "resnet", "model.widths": (16, 32, 64), "model.stage_sizes": (2, 2, 2)}

PRESETS = {
    "tiny": {
        "model.widths": (8, 16),
        "model.hidden": 32,
        "train.steps": 30,
        "train.batch_size": 32,
        "train.warmup_steps": 5,
        "train.log_every": 10,
        "train.eval_every": 15,
        "checkpoint.every_steps": 15,
    },
    "resnet": {**_RESNET, "train.steps": 1500},
    # A ViT (models/vit.py): 2x2-pixel patches of the 8x8 digits, 2 blocks of width 64; the
    # encoder `ssl` pretrains, so init_from=<an ssl run> starts this from it.
    "vit": {"model.name": "vit", "train.learning_rate": 1e-3},
    "mnist": {
        "data.source": "tfds:mnist",
        "augment.crop_padding": 2,
        "model.dropout": 0.25,
        "train.steps": 5000,
        "train.batch_size": 128,
        "train.eval_every": 1000,
        "checkpoint.every_steps": 1000,
    },
    "fashion_mnist": {
        **_RESNET,
        "data.source": "tfds:fashion_mnist",
        "augment.crop_padding": 2,
        "augment.flip": True,
        "train.steps": 10000,
        "train.batch_size": 128,
        "train.eval_every": 1000,
        "checkpoint.every_steps": 1000,
    },
    "cifar10": {
        **_RESNET,
        "data.source": "tfds:cifar10",
        "model.stage_sizes": (3, 3, 3),
        "augment.crop_padding": 4,
        "augment.flip": True,
        "augment.cutout": 8,
        "train.steps": 30000,
        "train.batch_size": 128,
        "train.learning_rate": 2e-3,
        "train.warmup_steps": 500,
        "train.eval_every": 2000,
        "checkpoint.every_steps": 2000,
    },
}
