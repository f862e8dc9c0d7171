"""What our TFDS builders for local data share: built once from the user's files into array_record,
read without TensorFlow, and reused while the files and settings are unchanged.

A builder's config name is a fingerprint of its files (real paths, sizes, mtimes) and of the
settings that shape the data, so a changed input builds a new dataset beside the old one and an
unchanged one is reused. `prepare(builder, source)` builds it if needed; a race with another
process building the same dataset is harmless (the first rename wins and the other reads it).
"""

import hashlib
import os

from absl import logging
import tensorflow_datasets as tfds

DEFAULT_DATA_DIR = "~/.cache/bigmodel_jax/tensorflow_datasets"


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder for local files: no downloads, no checksums, quiet about both."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # No checksums file to find (we download nothing). TFDS 4.9.10's lookup
    # also needs the `importlib_resources` backport for classes defined in a
    # package, which Python >= 3.9 installs lack.
    return None

  def is_prepared(self) -> bool:
    # Before a first build the folder does not exist; TFDS's check would warn that it "has no
    # dataset_info.json", which reads like a damaged cache.
    return self.data_path.exists() and super().is_prepared()

  def build_message(self) -> str:
    """What is being built, logged once in place of TFDS's download message."""
    return f"building {self.name} into {self.data_dir}"

  def _log_download_bytes(self) -> None:
    # In place of TFDS's "Downloading and preparing dataset Unknown size ...": nothing is
    # downloaded, the local files are read once into array_record.
    logging.info("%s (once; later runs reuse it)", self.build_message())

  def _log_download_done(self) -> None:
    pass  # TFDS would say "downloaded and prepared"; the caller logs what was built

  def _create_builder_config(self, builder_config, version):
    # Our configs are made per input (named by its fingerprint), never listed
    # in BUILDER_CONFIGS; skip TFDS's "custom data configuration" warning.
    return builder_config


def fingerprint(paths: list[str], *settings, root: str = "") -> tuple[str, int]:
  """(16 hex digits of a hash of root, paths, their sizes and mtimes and `settings`; total size)."""
  digest = hashlib.sha256(os.path.abspath(root).encode("utf-8") if root else b"")
  total = 0
  for path in paths:
    st = os.stat(os.path.join(root, path))
    total += st.st_size
    digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  if settings:
    digest.update(repr(settings).encode("utf-8"))
  return digest.hexdigest()[:16], total


def prepare(builder: LocalBuilder, source: str) -> LocalBuilder:
  """Builds `builder`'s dataset unless it is there already; returns the builder."""
  if builder.is_prepared():
    logging.info("%s: reusing %s", source, builder.data_dir)
    return builder
  folder = builder.data_path.parent  # <data_dir>/<name>/<config>
  existed = folder.exists()
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
  except OSError:
    # Another process finished the same build first (its rename won).
    if not builder.is_prepared():
      raise
  except Exception:
    # A failed build (e.g. bad data) leaves no empty folder behind in the cache.
    if not existed and folder.exists() and not any(folder.iterdir()):
      folder.rmdir()
    raise
  return builder
