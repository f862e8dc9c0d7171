"""imagecls --mode=predict over many images: a folder or a glob in, a CSV out, in bounded memory.

The files: a folder -> every JPEG, PNG, BMP or WebP file below it (image_files.find); a glob (`**`
recurses) -> the image files it matches (files.match, which survives symlink loops); each file
once, by its real path, in sorted path order. They are decoded in threads exactly as the training
images were (image_files.decode) and classified in fixed-size batches (predict.batch_size; one
compilation, the last batch padded) while the next images decode. Each batch's rows are written
before more images are read, so memory holds about two batches however many files there are. An
unreadable file follows data.on_bad_image (stop: one-line error naming it; skip: counted, no row).

The CSV goes to a temporary name and is renamed when complete, so a stopped run leaves no
half-written predictions. Columns: path (relative to the folder; the real path for a glob), class,
probability, then class_2, probability_2, ... up to predict.top_k.
"""

from collections.abc import Callable
import csv
import glob
import itertools
import os
import time

import numpy as np

from bigmodel_jax.data import files, image_files
from bigmodel_jax.errors import UsageError


def list_inputs(spec: str) -> tuple[str, list[str]]:
  """(the folder that shown paths are relative to, or "" for a glob; sorted real paths)."""
  if os.path.isdir(spec):
    root = os.path.realpath(spec)
    paths, others = image_files.find(spec)
  elif glob.has_magic(spec):
    root, matched = "", files.match(spec).paths
    paths = [p for p in matched if image_files.is_image_name(p)]
    others = len(matched) - len(paths)
  else:
    raise UsageError(
        f"predict.input={spec} does not exist; give an image file ({image_files.KINDS}), a "
        "folder of them or a glob"
    )
  if not paths:
    raise UsageError(
        f"predict.input={spec} has no {image_files.KINDS} files"
        f"{f' (only {others} other files)' if others else ''}; give a folder or glob of images"
    )
  return root, paths


def write_csv(
    paths: list[str],
    *,
    root: str,
    output: str,
    classify: Callable[[np.ndarray], np.ndarray],
    class_names: list[str],
    shape: tuple[int, int, int],
    top_k: int,
    batch_size: int,
    bad: image_files.BadImages,
) -> str:
  """Writes one row per readable image of `paths` to `output` (see module doc); returns it.
  `classify` maps uint8 (batch_size, H, W, C) to (batch_size, classes) probabilities."""
  start = time.perf_counter()
  k = min(top_k, len(class_names))
  header = ["path", "class", "probability"]
  header += [f"{name}_{i}" for i in range(2, k + 1) for name in ("class", "probability")]
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  partial = f"{output}.partial"
  h, w, c = shape
  decoded = image_files.decoded(paths, (h, w), c)
  count = 0
  try:
    with open(partial, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(header)
      while chunk := list(itertools.islice(decoded, batch_size)):
        shown, batch = [], []
        for path, image, reason in chunk:
          name = os.path.relpath(path, root) if root else path
          if image is None:
            bad(path, reason, shown=name)
          else:
            shown.append(name)
            batch.append(image)
        if not batch:
          continue
        x = np.stack(batch + [np.zeros_like(batch[0])] * (batch_size - len(batch)))
        probs = classify(x)[: len(batch)]
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        for name, row, best in zip(shown, probs, top):
          writer.writerow([name, *(v for i in best for v in (class_names[i], f"{row[i]:.6f}"))])
        count += len(batch)
    os.replace(partial, output)
  finally:
    decoded.close()  # stops the decoding threads when a bad file stopped the run
    if os.path.exists(partial):
      os.remove(partial)
  bad.report()
  seconds = time.perf_counter() - start
  skipped = f", skipped {len(bad.skipped)} unreadable" if bad.skipped else ""
  print(
      f"wrote {count} predictions to {output}{skipped} in {seconds:.1f} s "
      f"({count / max(seconds, 1e-9):,.0f} images/s)",
      flush=True,
  )
  return output
