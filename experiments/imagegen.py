"""imagegen: class-conditional image generation, flow matching with a small U-Net.

  python run.py --experiment=imagegen                  # CPU, ~3 min alone on 2 cores (see below)
  python run.py --experiment=imagegen --mode=sample    # -> workdir/imagegen/samples.png
  python run.py --experiment=imagegen --mode=sample --config.sample.classes=3,8 \
    --config.sample.guidance_scale=3 --config.sample.output=/tmp/threes_and_eights.png
  python run.py --experiment=imagegen --mode=eval      # loss, class accuracy, Frechet distances
  python run.py --experiment=imagegen:mnist --config.data.tfds_data_dir=DIR

Flow matching (rectified flow) with classifier-free guidance and EMA weights; why flow matching:
bigmodel_jax/flow_matching.py. The U-Net: bigmodel_jax/models/unet.py. Offline default:
scikit-learn's 8x8 handwritten digits (the imagecls split: 1,437 train / 360 held out).

Quality, at the end of training and in --mode=eval: an imagecls classifier (quality.classifier,
trained once through the same trainer on the real training images, cached in
<workdir>/classifier or quality.classifier_workdir) labels one generated image per held-out
image of half B; class_accuracy is the share labelled as the conditioned class, fid the Frechet
distance of the classifier's features between the generated images and held-out half A, fid_real
the same between halves B and A (real images, same sample size).

Measured (python run.py --experiment=imagegen --workdir=/tmp/ig_d --config.compile_cache_dir=,
seed 0, 2000 steps, guidance 1.5): 100.0% of the generated digits classified as their class (the
classifier gets 99.4% of the real half B), Frechet distance 28.5 against real vs real 17.5; eval
loss 0.363. 325 s of CPU time (273 user + 52 system), 1,446 s wall on 2 cores shared with ~8 other
jobs (load average ~30), so about 3 minutes alone (CPU time / 2 cores), compilation and the quality
classifier included. The grid shows each row's digit in varied hands (1s with and without a
foot, open and closed 4s), a few grey speckles in the background and some blurred 8s. An 800-step
run scored the same (100%, 28.1), so the steps are a margin, not a need. Guidance trades variety
for fidelity: after 800 steps guidance 1.0 gave 93.9% and 22.2, 2.0 gave 100% and 40.0.

Presets (`--experiment=imagegen:<preset>`):
  tiny           seconds; used by tests
  mnist          tfds:mnist, 3 levels (for a GPU; needs the prepared dataset)
  fashion_mnist  tfds:fashion_mnist, as mnist
  cifar10        tfds:cifar10, wider U-Net (for a GPU)
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

MODELS = ("unet",)  # model.name can be any of these (models/<name>.py)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="generate_image")

  c.data = ml_collections.ConfigDict()
  c.data.source = "digits"  # | tfds:<name> (an Image "image" and a ClassLabel "label")
  c.data.tfds_data_dir = ""  # where tfds:<name> is prepared ("" -> TFDS's default)
  c.data.test_fraction = 0.2  # digits only: the held-out share of the fixed stratified split
  c.data.split_seed = 0  # digits only

  c.model = models.default_config(*MODELS)
  # One block per level (8 residual blocks; 2 per level would be 12) keeps the CPU default short.
  c.model.blocks = 1

  c.flow = ml_collections.ConfigDict()
  # Share of training labels replaced by "no class" so the one model also learns the
  # unconditional velocity that classifier-free guidance needs (0.1: Ho & Salimans 2022).
  c.flow.label_dropout = 0.1
  c.flow.ema_decay = 0.999  # EMA of the weights that sampling uses (ramped up over early steps)

  c.sample = ml_collections.ConfigDict()
  # >= 0; 0 unconditional, 1 conditional, > 1 stronger guidance (more class fidelity, less variety).
  # Digits, 800 steps (real vs real 17.5): 1.0 -> 93.9% classified as their class, Frechet
  # distance 22.2; 1.5 -> 100%, 28.1; 2.0 -> 100%, 40.0.
  c.sample.guidance_scale = 1.5
  c.sample.steps = 32  # Euler steps from noise to image (model calls, x2 with guidance)
  c.sample.classes = ()  # class ids, one grid row each; () = every class
  c.sample.per_class = 10  # images per row
  c.sample.seed = 0
  c.sample.output = ""  # the PNG grid ("" -> <workdir>/samples.png)
  c.sample.scale = 8  # screen pixels per image pixel in the PNG

  c.quality = ml_collections.ConfigDict()
  c.quality.classifier = "imagecls"  # the imagecls experiment (preset) that judges samples
  c.quality.classifier_workdir = ""  # its workdir ("" -> <workdir>/classifier; trained if empty)
  c.quality.seed = 1  # noise for the generated images the quality figures judge

  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.05
  c.train.weight_decay = 0.0
  c.train.log_every = 200
  c.train.eval_every = 1000
  c.checkpoint.every_steps = 1000
  return config_lib.apply_preset(c, arg, PRESETS)


_TFDS = {
    "model.widths": (64, 128, 128),
    "train.steps": 30000,
    "train.batch_size": 128,
    "train.learning_rate": 2e-4,
    "train.warmup_steps": 1000,
    "train.eval_every": 5000,
    "train.eval_batches": 10,
    "checkpoint.every_steps": 5000,
    "sample.scale": 3,
}

PRESETS = {
    "tiny": {
        "model.widths": (16,),  # one level: half the ops to compile (tests' time is compiling)
        "model.blocks": 1,
        "model.groups": 4,
        "train.steps": 30,
        "train.batch_size": 32,
        "train.warmup_steps": 5,
        "train.log_every": 10,
        "train.eval_every": 15,
        "checkpoint.every_steps": 15,
        "sample.steps": 4,
        "sample.per_class": 2,
        "quality.classifier": "imagecls:tiny",
    },
    "mnist": {**_TFDS, "data.source": "tfds:mnist", "quality.classifier": "imagecls:mnist"},
    "fashion_mnist": {
        **_TFDS,
        "data.source": "tfds:fashion_mnist",
        "quality.classifier": "imagecls:fashion_mnist",
    },
    "cifar10": {
        **_TFDS,
        "data.source": "tfds:cifar10",
        "model.widths": (128, 256, 256),
        "train.steps": 100000,
        "quality.classifier": "imagecls:cifar10",
        "sample.scale": 2,
    },
}
