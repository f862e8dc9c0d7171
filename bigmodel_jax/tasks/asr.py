"""Speech recognition (asr): a speech encoder trained with CTC on log-mel features.

Batches are {"audio": int16 (B, S), "audio_length": int32 (B,), "labels": int32 (B, L)} (eval
batches add "weight"); labels are character ids, 0 = blank/padding (data/speech.py). The step
computes log-mel features on the device (audio_features.py), normalises each utterance, applies
SpecAugment to training batches only, and minimises optax.ctc_loss; "loss" is CTC nats per
character. CER and WER (jiwer) come from decoding the eval split on the host: greedy and prefix
beam search (ctc.py). The run's dataset facts (alphabet, rate, shapes) are saved in dataset.json,
so eval and transcribe read audio exactly as training did.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import jiwer
import numpy as np
import optax

from bigmodel_jax import audio_features, classification, ctc, json_files, models
from bigmodel_jax.data import audio_files, speech
from bigmodel_jax.errors import RunError, UsageError
from bigmodel_jax.tasks import base

DATASET_FILE = "dataset.json"
# --mode=plan compiles before any data exists: letters, apostrophe and space, 40 characters.
_PLAN_ALPHABET, _PLAN_LABELS = " 'abcdefghijklmnopqrstuvwxyz", 40


class Task(base.ArrayTask):
  """CTC over characters; eval loss per character, final CER/WER (beam and greedy)."""

  unit = "seconds"  # of audio
  eval_metrics = ("loss",)
  final_metric_names = ("cer", "wer", "cer_greedy", "wer_greedy")

  def __init__(self, config):
    super().__init__(config)
    d, f, a = config.data, config.features, config.augment
    speech.check(d.source)
    if not 1000 <= d.sample_rate <= 96000 or not 0 < d.max_seconds <= 600:
      raise UsageError(
          f"data.sample_rate={d.sample_rate} must be in 1000..96000 (Hz) and "
          f"data.max_seconds={d.max_seconds} in (0, 600]"
      )
    if d.num_train < 1 or d.test_per_speaker < 1 or not 0 < d.val_percent < 100:
      raise UsageError(
          f"data.num_train={d.num_train} and data.test_per_speaker={d.test_per_speaker} must be"
          f" >= 1 and data.val_percent={d.val_percent} in 1..99"
      )
    self.n_fft, self.hop = (round(ms * d.sample_rate / 1000) for ms in (f.window_ms, f.hop_ms))
    if not 8 <= self.n_fft <= d.max_seconds * d.sample_rate or self.hop < 1 or f.n_mels < 4:
      raise UsageError(
          f"features.window_ms={f.window_ms} and features.hop_ms={f.hop_ms} must give >= 8 and"
          f" >= 1 samples, a window within data.max_seconds, and features.n_mels={f.n_mels} >= 4"
      )
    if min(a.freq_masks, a.freq_width, a.time_masks) < 0 or not 0 <= a.time_ratio <= 1:
      raise UsageError(
          "augment.freq_masks, augment.freq_width and augment.time_masks must be >= 0 and "
          f"augment.time_ratio={a.time_ratio} in [0, 1]"
      )
    if a.freq_width > f.n_mels:
      raise UsageError(f"augment.freq_width={a.freq_width} exceeds features.n_mels={f.n_mels}")
    if config.decode.beam_size < 1:
      raise UsageError(f"decode.beam_size={config.decode.beam_size} must be >= 1 (1 = greedy)")
    self.units_per_example = d.max_seconds
    models.make(config.model, ("speech_encoder",), vocab_size=2)  # checks the model's settings
    self.modes = {"transcribe": self.transcribe}
    self.facts = {
        "source": d.source,
        "sample_rate": d.sample_rate,
        "alphabet": _PLAN_ALPHABET,
        "max_samples": int(d.max_seconds * d.sample_rate),
        "max_label": _PLAN_LABELS,
    }

  @functools.cached_property
  def model(self):
    return models.make(self.config.model, vocab_size=len(self.facts["alphabet"]) + 1)

  @functools.cached_property
  def dataset(self) -> dict[str, dict[str, np.ndarray]]:
    if self.facts["source"] != self.config.data.source:
      raise RunError(
          f"this run was trained on {self.facts['source']} (its {DATASET_FILE}) but "
          f"data.source={self.config.data.source}; use a new --workdir"
      )
    return speech.load(self.config.data)

  # --- data ---------------------------------------------------------------------------------

  def setup(self, workdir: str, create: bool) -> None:
    path = os.path.join(workdir, DATASET_FILE)
    if os.path.exists(path):
      self.facts = json_files.read_json(path, "dataset facts (alphabet, sample rate, shapes)")
    elif create:
      train, test = self.dataset["train"], self.dataset["test"]
      self.facts["alphabet"] = speech.alphabet(train["text"])
      self.facts["max_samples"] = max(train["audio"].shape[1], test["audio"].shape[1])
      self.facts["max_label"] = max(len(t) for t in [*train["text"], *test["text"]])
      with open(path, "w") as f:
        json.dump(self.facts, f, indent=2)
    else:
      raise RunError(
          f"no {DATASET_FILE} in {workdir}; train first with python run.py "
          f"--experiment={self.config.experiment} --workdir={workdir}"
      )
    self.model = models.make(self.config.model, vocab_size=len(self.facts["alphabet"]) + 1)

  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    u = self.dataset[split]
    audio = np.zeros((len(u["audio"]), self.facts["max_samples"]), np.int16)
    audio[:, : u["audio"].shape[1]] = u["audio"][:, : audio.shape[1]]
    labels = speech.encode(u["text"], self.facts["alphabet"], self.facts["max_label"])
    return {"audio": audio, "audio_length": u["audio_length"], "labels": labels}

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "audio": jax.ShapeDtypeStruct((batch_size, self.facts["max_samples"]), np.int16),
        "audio_length": jax.ShapeDtypeStruct((batch_size,), np.int32),
        "labels": jax.ShapeDtypeStruct((batch_size, self.facts["max_label"]), np.int32),
    }

  # --- model and loss -----------------------------------------------------------------------

  def _features(self, audio, audio_length, rng=None):
    """int16 (B, S), (B,) -> normalised log-mel (B, T, M) and frame counts (B,); SpecAugment
    when given an rng."""
    f, a = self.config.features, self.config.augment
    x = audio_features.log_mel(
        audio.astype(jnp.float32) / 32768, self.facts["sample_rate"], self.n_fft, self.hop, f.n_mels
    )
    frames = audio_features.num_frames(audio_length, self.n_fft, self.hop)
    x = audio_features.normalize(x, frames)
    if rng is not None:
      x = audio_features.spec_augment(
          x,
          frames,
          rng,
          freq_masks=a.freq_masks,
          freq_width=a.freq_width,
          time_masks=a.time_masks,
          time_ratio=a.time_ratio,
      )
    return x, frames

  def init_variables(self, rng):
    x = jnp.zeros((1, self.facts["max_samples"]), jnp.int16)
    features, frames = self._features(x, jnp.full((1,), x.shape[1]))
    return self.model.init({"params": rng, "dropout": rng}, features, frames, train=False)

  def loss(self, params, model_state, batch, rng, train: bool):
    augment_rng, dropout_rng = jax.random.split(rng)
    x, frames = self._features(
        batch["audio"], batch["audio_length"], augment_rng if train else None
    )
    variables = {"params": params, **model_state}
    logits, out = self.model.apply(variables, x, frames, train=train, rngs={"dropout": dropout_rng})
    labels = batch["labels"]
    logit_pad = (jnp.arange(logits.shape[1])[None, :] >= out[:, None]).astype(jnp.float32)
    per_seq = optax.ctc_loss(logits, logit_pad, labels, (labels == 0).astype(jnp.float32))
    weight = batch.get("weight", jnp.ones(labels.shape[0], jnp.float32))
    chars = (labels > 0).sum(-1) * weight
    total = jnp.where(weight > 0, per_seq * weight, 0.0).sum()  # padded rows may be inf
    return total / jnp.maximum(chars.sum(), 1.0), ({"loss": (total, chars.sum())}, model_state)

  @functools.cached_property
  def _log_probs(self):
    def fn(variables, audio, audio_length):
      x, frames = self._features(audio, audio_length)
      logits, out = self.model.apply(variables, x, frames, train=False)
      return jax.nn.log_softmax(logits), out

    return jax.jit(fn)

  def transcripts(self, variables, audio, audio_length, beam_size: int, size: int = 0) -> list[str]:
    """int16 (N, S) audio -> N transcripts, in batches of `size` (0: train.batch_size)."""
    out = []
    size = size or self.config.train.batch_size
    for start in range(0, len(audio), size):
      chunk, lengths = audio[start : start + size], audio_length[start : start + size]
      pad = size - len(chunk)
      lp, frames = self._log_probs(
          variables, np.pad(chunk, ((0, pad), (0, 0))), np.pad(lengths, (0, pad))
      )
      ids = ctc.decode(np.asarray(lp)[: len(chunk)], np.asarray(frames)[: len(chunk)], beam_size)
      out += [speech.to_text(i, self.facts["alphabet"]) for i in ids]
    return out

  # --- what a person sees -------------------------------------------------------------------

  def _scores(self, variables) -> dict:
    """The eval split decoded by beam search and greedily; final_metrics and showcase both ask,
    so it is decoded once per set of parameters (told apart by the output layer's bytes)."""
    key = np.asarray(jax.tree.leaves(variables["params"]["head"])[-1]).tobytes()
    if getattr(self, "_scored", (None,))[0] != key:
      test, b = self.split_arrays("test"), self.config.decode.beam_size
      self._scored = key, {
          "ref": list(self.dataset["test"]["text"]),
          "beam": self.transcripts(variables, test["audio"], test["audio_length"], b),
          "greedy": self.transcripts(variables, test["audio"], test["audio_length"], 1),
          "speaker": self.dataset["test"]["speaker"],
      }
    return self._scored[1]

  def final_metrics(self, variables) -> dict[str, float]:
    s = self._scores(variables)
    return {
        "cer": jiwer.cer(s["ref"], s["beam"]),
        "wer": jiwer.wer(s["ref"], s["beam"]),
        "cer_greedy": jiwer.cer(s["ref"], s["greedy"]),
        "wer_greedy": jiwer.wer(s["ref"], s["greedy"]),
    }

  def showcase(self, variables) -> dict:
    """CER/WER (beam search) per speaker of the eval split, overall, and a few transcripts."""
    s = self._scores(variables)
    ref, hyp, who = s["ref"], s["beam"], np.asarray(s["speaker"])
    rows = []
    for speaker in sorted(set(who)):
      idx = np.nonzero(who == speaker)[0]
      r, h = [ref[i] for i in idx], [hyp[i] for i in idx]
      rows.append(
          [
              speaker or "(all)",
              len(idx),
              f"{100 * jiwer.cer(r, h):.1f}%",
              f"{100 * jiwer.wer(r, h):.1f}%",
          ]
      )
    cer, wer = jiwer.cer(ref, hyp), jiwer.wer(ref, hyp)
    print(
        f"\n{self.config.data.source}: CER {100 * cer:.2f}%, WER {100 * wer:.2f}% on "
        f"{len(ref)} eval utterances (beam {self.config.decode.beam_size}; greedy CER "
        f"{100 * jiwer.cer(ref, s['greedy']):.2f}%)\n"
        + classification.format_table(["speaker", "utterances", "CER", "WER"], rows),
        flush=True,
    )
    for i in range(min(3, len(ref))):
      print(f"  ref: {ref[i]}\n  hyp: {hyp[i]}", flush=True)
    return {"cer": cer, "wer": wer, "per_speaker": {r[0]: r[2] for r in rows}}

  def transcribe(self, variables) -> str:
    """`--mode=transcribe --config.transcribe.input=<audio file>`: prints and returns the text."""
    path = os.path.expanduser(self.config.transcribe.input)
    if not path:
      raise UsageError("--mode=transcribe needs --config.transcribe.input=<WAV/FLAC file>")
    if not os.path.isfile(path):
      raise UsageError(f"transcribe.input={path}: no such file")
    wave = audio_files.read_audio(path, self.facts["sample_rate"])
    if len(wave) < self.n_fft:
      raise RunError(f"{path} is shorter than one analysis window ({self.n_fft} samples)")
    samples = (np.clip(wave, -1, 1) * 32767).astype(np.int16)[None]
    text = self.transcripts(
        variables, samples, np.array([samples.shape[1]]), self.config.decode.beam_size, size=1
    )[0]
    print(text, flush=True)
    return text
