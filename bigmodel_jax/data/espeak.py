"""Speech synthesis with eSpeak NG, from the `espeakng-loader` wheel alone (no system packages).

The wheel ships `libespeak-ng.so` and its `espeak-ng-data` (voices, dictionaries); we drive the C
API through ctypes in synchronous mode, collecting 16-bit samples through the synth callback:

  espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0) -> sample rate (22,050 Hz)
  espeak_SetVoiceByName("en-us+f3")  a language voice + a variant from voices/!v (the speaker)
  espeak_SetParameter(espeakRATE | espeakPITCH | espeakRANGE, value, absolute)
  espeak_Synth(text, ...) then espeak_Synchronize()

eSpeak keeps one global engine per process, so `Engine` is a process-wide singleton; a phrase
takes about 3 ms on one core.
"""

import ctypes
import functools
import os
import threading

import numpy as np

from bigmodel_jax.errors import RunError

_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT.AUDIO_OUTPUT_SYNCHRONOUS
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Engine:
  """The process's eSpeak NG engine: `synth(text, voice, rate, pitch, pitch_range)`."""

  def __init__(self):
    try:
      import espeakng_loader  # pylint: disable=g-import-not-at-top (only when synthesizing)

      self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
      data = espeakng_loader.get_data_path()
    except (ImportError, OSError, RuntimeError) as e:
      raise RunError(
          f"cannot load eSpeak NG from espeakng-loader ({e}); pip install -r requirements.txt"
      ) from None
    self.sample_rate = self._lib.espeak_Initialize(_SYNCHRONOUS, 0, data.encode(), 0)
    if self.sample_rate <= 0:
      raise RunError(f"eSpeak NG failed to initialise with its data at {data}")
    self.variants = sorted(os.listdir(os.path.join(data, "voices", "!v")))
    self._chunks: list[np.ndarray] = []
    self._callback = _CALLBACK(self._collect)  # kept referenced: C holds the pointer
    self._lib.espeak_SetSynthCallback(self._callback)
    self._lock = threading.Lock()

  def _collect(self, wav, n, events):
    del events
    if n > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
    return 0

  def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
    """-> int16 samples at `sample_rate`. rate in words per minute (80-450), pitch and
    pitch_range 0-100 (50 is the voice's own)."""
    with self._lock:
      if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RunError(f"eSpeak NG has no voice {voice!r} (language+variant, e.g. en-us+f3)")
      for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
        self._lib.espeak_SetParameter(parameter, int(value), 0)
      self._chunks = []
      data = text.encode() + b"\0"
      if self._lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None) != 0:
        raise RunError(f"eSpeak NG could not synthesize {text!r} with voice {voice!r}")
      self._lib.espeak_Synchronize()
      return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@functools.cache
def engine() -> Engine:
  return Engine()
