"""A local image source (image_folder:<dir>, csv:<path>) built once into a TFDS array_record set.

`prepare(source, settings)` lists the files (image_folders.py), then builds, or reuses, a dataset
of {"image": uint8 (S, S, C) decoded and resized, "label": ClassLabel (the class names), "path":
the file's real path relative to the source's folder} with splits "train" and "validation", in
sorted path order, and returns a read-only builder of it, read like any prepared TFDS dataset.

It lives in `<data_dir>/image_files/<config>/1.0.0/` (data_dir: data.tfds_data_dir, or
~/.cache/bigmodel_jax/tensorflow_datasets). The config name is a fingerprint of every listed file
(real path, split, class, size, mtime) and of the settings that change the decoded images
(image_size, channels, on_bad_image), so a changed folder builds a new dataset and an unchanged one
is reused without decoding anything. Decoded images are stored raw (S*S*C bytes each): reading them
back costs no decoding, which matters more than disk at these sizes.

data.channels=0 decides from the data: 3 if any file's header says it has colour, else 1.
"""

import contextlib
import dataclasses
import hashlib
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from bigmodel_jax.data import corpora, image_files, image_folders
from bigmodel_jax.errors import UsageError

SCHEMES = ("image_folder", "csv")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The data.* settings of a local image source (see experiments/imagecls.py)."""

  image_size: int = 32
  channels: int = 0  # 1, 3, or 0: decide from the data
  val_percent: int = 10
  on_bad_image: str = "stop"
  image_column: str = "image"
  label_column: str = "label"
  data_dir: str = ""

  @classmethod
  def from_config(cls, data) -> "Settings":
    """From config.data (data_dir is data.tfds_data_dir)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != "data_dir"]
    return cls(**{k: data[k] for k in names}, data_dir=data.tfds_data_dir)


def is_local(source: str) -> bool:
  scheme, _, path = source.partition(":")
  return scheme in SCHEMES and bool(path)


def prepare(source: str, settings: Settings) -> tfds.core.DatasetBuilder:
  """A read-only builder of the source's cached dataset, built first if needed (see module doc)."""
  s = settings
  bad = image_files.BadImages(s.on_bad_image, f"data.source={source}")
  listing = image_folders.list_images(
      source,
      val_percent=s.val_percent,
      bad=bad,
      image_column=s.image_column,
      label_column=s.label_column,
  )
  key = _fingerprint(source, listing, s)
  data_dir = os.path.expanduser(s.data_dir or corpora.DEFAULT_DATA_DIR)
  path = os.path.join(data_dir, ImageFiles.name, key, str(ImageFiles.VERSION))
  reused = os.path.exists(os.path.join(path, "dataset_info.json"))
  if not reused:
    channels = s.channels or _channels(listing)
    builder = ImageFiles(
        listing=listing,
        shape=(s.image_size, s.image_size, channels),
        bad=bad,
        source=source,
        config=tfds.core.BuilderConfig(name=key, description=f"{source}: {listing.root}"),
        data_dir=data_dir,
        file_format="array_record",
    )
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              compute_stats=tfds.download.ComputeStatsMode.SKIP
          )
      )
    except OSError:
      # Another process finished the same build first (its rename won).
      if not os.path.exists(os.path.join(path, "dataset_info.json")):
        raise
    except BaseException:
      with contextlib.suppress(OSError):  # TFDS removed its incomplete folder; not the one above
        os.rmdir(os.path.dirname(path))
      raise
  else:
    logging.info("%s: reusing the image cache %s", source, path)
  built = tfds.builder_from_directory(path)
  skipped = built.info.metadata.get("skipped", [])
  if reused:  # what the build skipped (a build's own skips are in `bad` already)
    bad.skipped += [tuple(x) for x in skipped]
  bad.report()
  logging.info(
      "%s: %s images of %s, %d classes; %d train, %d validation (split by %s)",
      source,
      f"{sum(len(v) for v in listing.splits.values()) - len(skipped):,}",
      "x".join(map(str, built.info.features["image"].shape)),
      len(listing.class_names),
      built.info.splits["train"].num_examples,
      built.info.splits["validation"].num_examples,
      listing.validation,
  )
  return built


def _fingerprint(source: str, listing: image_folders.Listing, s: Settings) -> str:
  digest = hashlib.sha256(
      f"{listing.root}\0{s.image_size}\0{s.channels}\0{s.on_bad_image}\0".encode()
  )
  for split, items in sorted(listing.splits.items()):
    for path, label in items:
      st = os.stat(path)
      name = listing.class_names[label]
      digest.update(f"{split}\0{name}\0{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return f"{source.partition(':')[0]}-{digest.hexdigest()[:16]}-{s.image_size}px"


def _channels(listing: image_folders.Listing) -> int:
  for items in listing.splits.values():
    for path, _ in items:
      if image_files.is_grayscale(path) is False:
        return 3
  return 1


class ImageFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images decoded from local files, with their class labels, in sorted path order."""

  name = "image_files"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def __init__(self, *, listing, shape, bad, source, **kwargs):
    self._listing, self._shape, self._bad, self._source = listing, shape, bad, source
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None  # as corpora's builders: nothing downloaded, no checksums file to find

  def _create_builder_config(self, builder_config, version):
    return builder_config  # made per fingerprint, never listed in BUILDER_CONFIGS

  def _log_download_bytes(self) -> None:
    total = sum(len(v) for v in self._listing.splits.values())
    logging.info(
        "%s: decoding %d images to %s into the image cache %s (once; later runs reuse it)",
        self._source,
        total,
        "x".join(map(str, self._shape)),
        self.data_dir,
    )

  def _log_download_done(self) -> None:
    pass

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Tensor(shape=self._shape, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=self._listing.class_names),
                "path": tfds.features.Text(),
            }
        ),
        disable_shuffling=True,  # keep the sorted path order
        metadata=tfds.core.MetadataDict(skipped=[]),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in ("train", "validation")}

  def _generate_examples(self, split: str):
    items = self._listing.splits[split]
    labels = dict(items)
    counts = np.zeros(len(self._listing.class_names), np.int64)
    h, w, c = self._shape
    decoded = image_files.decoded([p for p, _ in items], (h, w), c)
    with contextlib.closing(decoded):  # a stop on a bad file also stops the decoding threads
      for i, (path, image, reason) in enumerate(decoded):
        if image is None:
          self._bad(path, reason)
          self.info.metadata["skipped"].append((path, reason))
          continue
        counts[labels[path]] += 1
        shown = os.path.relpath(path, self._listing.root)
        yield i, {"image": image, "label": labels[path], "path": shown}
    if split == "train" and not counts.all():
      empty = self._listing.class_names[int(np.argmin(counts))]
      raise UsageError(
          f"{self._source}: class {empty!r} has no readable training images (all skipped)"
      )
    if not counts.any():
      raise UsageError(f"{self._source}: the {split} split has no readable images (all skipped)")
