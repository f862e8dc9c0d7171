"""Log-mel spectrograms and SpecAugment, in JAX (computed on the device, inside the step).

log_mel matches `transformers.audio_utils.spectrogram` with an HTK mel filter bank, a periodic
Hann window, no centring and log(max(mel, 1e-10)) (tests/test_asr.py checks it against that).
Frames: 1 + (samples - window) // hop, so a frame never reads padding past a real sample's end.
"""

import jax
import jax.numpy as jnp
import numpy as np

LOG_FLOOR = 1e-10


def hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)  # HTK


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
  """(n_fft // 2 + 1, n_mels) triangular filters, evenly spaced on the HTK mel scale from 0 Hz
  to the Nyquist frequency, peak 1 (not area-normalised)."""
  freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  edges_mel = np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2)
  edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)  # (n_mels + 2,) Hz
  lower = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
  upper = (edges[None, 2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])
  return np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)


def num_frames(samples, n_fft: int, hop: int):
  """Frames of log_mel for `samples` real samples (0 when shorter than one window)."""
  return jnp.maximum(0, (samples - n_fft) // hop + 1)


def log_mel(audio, sample_rate: int, n_fft: int, hop: int, n_mels: int):
  """audio float (B, S) in [-1, 1] -> log mel power float32 (B, T, n_mels), T frames of n_fft
  samples every hop."""
  frames = (audio.shape[1] - n_fft) // hop + 1
  index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]  # (T, n_fft)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
  x = audio[:, index] * window.astype(np.float32)  # (B, T, n_fft)
  power = jnp.abs(jnp.fft.rfft(x, axis=-1)) ** 2  # (B, T, n_fft // 2 + 1)
  mel = power @ mel_filters(sample_rate, n_fft, n_mels)  # (B, T, n_mels)
  return jnp.log(jnp.maximum(mel, LOG_FLOOR))


def normalize(features, lengths):
  """Per utterance and mel bin: zero mean, unit variance over the real frames; padding frames
  become 0. Makes the features blind to a recording's gain and steady colouring."""
  mask = (jnp.arange(features.shape[1])[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
  count = jnp.maximum(mask.sum(1, keepdims=True), 1)
  mean = jnp.where(mask, features, 0).sum(1, keepdims=True) / count
  var = jnp.where(mask, (features - mean) ** 2, 0).sum(1, keepdims=True) / count
  return jnp.where(mask, (features - mean) * jax.lax.rsqrt(var + 1e-5), 0.0)


def spec_augment(features, lengths, rng, *, freq_masks, freq_width, time_masks, time_ratio):
  """SpecAugment (Park et al. 2019) without time warping: each example gets `freq_masks` bands
  of 0..freq_width mel bins and `time_masks` spans of up to time_ratio of its real frames set to
  0 (the mean, after `normalize`). features (B, T, M), lengths (B,) -> (B, T, M)."""
  batch, frames, mels = features.shape
  k = jax.random.split(rng, 4)
  width = jax.random.randint(k[0], (batch, freq_masks), 0, freq_width + 1)
  start = (jax.random.uniform(k[1], (batch, freq_masks)) * (mels - width)).astype(jnp.int32)
  m = jnp.arange(mels)[None, None, :]
  freq = ((m >= start[..., None]) & (m < (start + width)[..., None])).any(1)  # (B, M)
  longest = jnp.floor(time_ratio * lengths).astype(jnp.int32)  # (B,)
  span = (jax.random.uniform(k[2], (batch, time_masks)) * (longest[:, None] + 1)).astype(jnp.int32)
  room = jnp.maximum(lengths[:, None] - span, 0)
  begin = (jax.random.uniform(k[3], (batch, time_masks)) * room).astype(jnp.int32)
  t = jnp.arange(frames)[None, None, :]
  time = ((t >= begin[..., None]) & (t < (begin + span)[..., None])).any(1)  # (B, T)
  return jnp.where(freq[:, None, :] | time[:, :, None], 0.0, features)
