"""Opening TFDS catalog datasets the only way that works here: already prepared, as array_record,
read without TensorFlow. Every failure is a one-line UsageError saying what to do."""

import difflib

import tensorflow_datasets as tfds

from bigmodel_jax.errors import UsageError


def open_prepared(name: str, data_dir: str = "") -> tfds.core.DatasetBuilder:
  """The builder of `tfds:<name>` (name may carry /config and :version) in `data_dir`."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    base = name.split("/")[0].split(":")[0]
    close = difflib.get_close_matches(
        base, sorted(set(tfds.list_builders(with_community_datasets=False))), n=3
    )
    hint = f"did you mean {', '.join('tfds:' + c for c in close)}? " if close else ""
    raise UsageError(
        f"unknown tfds dataset {base!r}; {hint}see https://www.tensorflow.org/datasets/catalog "
        "(datasets whose code needs TensorFlow are unavailable here)"
    ) from None
  except ValueError as e:  # e.g. an unknown config or version
    raise UsageError(f"tfds:{name} cannot be opened: {' '.join(str(e).split())[:300]}") from None
  if not builder.is_prepared():
    raise UsageError(
        f"tfds:{name} is not prepared in {builder.data_dir} and cannot be downloaded offline; "
        f"prepare it on a machine with internet (`tfds build {name} --file_format=array_record`), "
        "copy the data_dir here and pass --config.data.tfds_data_dir=<that data_dir>"
    )
  formats = builder.info.available_file_formats()
  if tfds.core.FileFormat.ARRAY_RECORD not in formats:
    raise UsageError(
        f"tfds:{name} in {builder.data_dir} is stored as "
        f"{', '.join(sorted(f.value for f in formats))}, which needs TensorFlow to read; rebuild "
        f"it with `tfds build {name} --file_format=array_record`"
    )
  return builder
