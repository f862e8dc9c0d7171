"""asr: speech recognition, a convolution + Transformer/Conformer encoder trained with CTC.

  python run.py --experiment=asr                  # CPU, ~7 min alone on 2 cores (see below)
  python run.py --experiment=asr --mode=eval      # CER / WER of the held-out voices
  python run.py --experiment=asr --mode=transcribe --config.transcribe.input=digits.wav
  python run.py --experiment=asr --config.data.source=audio_folder:calls --workdir=runs/calls

Offline default (data.source=espeak_digits): 3,000 digit strings ("four seven zero two") spoken
by eSpeak NG (the espeakng-loader wheel ships the engine and its voices) with ~90 speaker voices
in 7 English accents at random rates and pitches, with reverberation and noise, at 8 kHz; the
test split is 300 utterances by 6 voices that never speak in training (m3, f2, klatt3, Annie,
edward, steph). Synthesis takes ~20 s once; the arrays are cached under data.tfds_data_dir.
Measured (`python run.py --experiment=asr`, seed 0, 1,200 steps of 32): CER 2.26%, WER 4.89% on
the held-out voices with beam 8 (greedy: CER 2.46%, WER 5.36%); per voice CER/WER: Annie
2.6/7.0%, edward 1.7/4.0%, f2 2.1/3.9%, klatt3 0.8/1.8%, m3 0.8/2.8%, steph 5.5/9.8%. That run
took 870 s of CPU (698 user + 172 system, synthesis and compilation included), so about 7.3 min
alone on 2 cores; its wall time, 56 min, was on 2 cores shared with ~8 other jobs (load 17-36).
Eval loss (CTC nats per character) 0.167 at step 400, 0.110 at 800, 0.103 at 1200.

Features: log-mel (features.n_mels bins of features.window_ms windows every features.hop_ms) in
JAX on the device, normalised per utterance, with SpecAugment (augment.*) on training batches.
Decoding: CTC prefix beam search (decode.beam_size; 1 = greedy); CER and WER from jiwer.

Data (`data.source`): espeak_digits | audio_folder:<dir> (WAV/FLAC files + data.transcripts, a CSV
with columns path,text[,speaker]; resampled to data.sample_rate; data.val_percent of the files,
by a hash of each path, are the eval split). TFDS's speech_commands and librispeech need
TensorFlow to load, so they are not offered; export them to a folder and use audio_folder:.

Presets (`--experiment=asr:<preset>`):
  tiny         a few seconds; used by tests
  transformer  no Conformer convolution modules (Transformer blocks only)
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

MODELS = ("speech_encoder",)  # model.name can be any of these (models/<name>.py)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="asr")

  c.data = ml_collections.ConfigDict()
  c.data.source = "espeak_digits"  # | audio_folder:<dir>
  # Where synthesized and decoded audio is cached ("" -> ~/.cache/bigmodel_jax).
  c.data.tfds_data_dir = ""
  c.data.sample_rate = 8000  # Hz the model hears; your recordings are resampled to it
  c.data.max_seconds = 2.0  # longest utterance (longer recordings are skipped with a warning)
  c.data.num_train = 3000  # espeak_digits: training utterances
  c.data.test_per_speaker = 50  # espeak_digits: test utterances per held-out voice
  c.data.split_seed = 0  # espeak_digits: what is synthesized
  c.data.transcripts = "transcripts.csv"  # audio_folder: the CSV in <dir> (path,text[,speaker])
  c.data.val_percent = 10  # audio_folder: share of the recordings held out for evaluation

  c.features = ml_collections.ConfigDict()
  c.features.n_mels = 40  # mel bins
  c.features.window_ms = 25.0  # analysis window (its samples are also the FFT size)
  c.features.hop_ms = 10.0  # one frame every hop_ms

  c.augment = ml_collections.ConfigDict()  # SpecAugment, training batches only
  c.augment.freq_masks = 2  # bands of mel bins set to the mean, per utterance
  c.augment.freq_width = 6  # widest band (bins)
  c.augment.time_masks = 2  # spans of frames set to the mean, per utterance
  c.augment.time_ratio = 0.08  # longest span, as a share of the utterance's frames

  c.model = models.default_config(*MODELS)

  c.decode = ml_collections.ConfigDict()
  c.decode.beam_size = 8  # CTC prefix beam search width; 1 = greedy

  c.transcribe = ml_collections.ConfigDict()
  c.transcribe.input = ""  # --mode=transcribe: a WAV/FLAC file, any rate

  c.train.steps = 1200
  c.train.batch_size = 32
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.02
  c.train.weight_decay = 0.05
  c.train.log_every = 100
  c.train.eval_every = 400
  c.checkpoint.every_steps = 400
  return config_lib.apply_preset(c, arg, PRESETS)


PRESETS = {
    "tiny": {
        "data.num_train": 64,
        "data.test_per_speaker": 2,
        "model.num_layers": 1,
        "model.embed_dim": 32,
        "model.num_heads": 2,
        "model.conv_channels": 4,
        "model.conv_kernel": 3,
        "decode.beam_size": 2,
        "train.steps": 20,
        "train.batch_size": 16,
        "train.warmup_steps": 5,
        "train.log_every": 10,
        "train.eval_every": 10,
        "checkpoint.every_steps": 10,
    },
    "transformer": {"model.conv_kernel": 0},
}
