"""Batch translation over CSV/TSV/JSONL files: every row in, the row and its translation out.

`--mode=translate` with `decode.input` naming files (`csv:<glob>`, `tsv:<glob>`, `jsonl:<glob>`,
or a path or glob of existing .csv/.tsv/.jsonl files; see `batch_predict.input_files`) translates
the data.source_column of every row, in input order, in batches of decode.batch_size (the last
one padded, so the model compiles once), into `decode.output` (default
<workdir>/translations.csv; JSON lines when the name ends in .jsonl): the row's fields, then
`translation`. The streaming and the atomic write are `batch_predict.stream`'s: memory is one
batch, and a failure leaves no half-written file. A source longer than data.max_source_len tokens
is cut (counted in one warning) or, with decode.on_long_input=error, refused naming its line.
"""

from collections.abc import Callable, Sequence

import numpy as np

from bigmodel_jax import batch_predict
from bigmodel_jax.data import too_long

KEY = "decode.input"
OUTPUT_KEY = "decode.output"
DEFAULT_OUTPUT = "translations.csv"


def input_files(value: str) -> tuple[str, list[str]] | None:
  """(scheme, real paths) when decode.input names record files; None for a text to translate."""
  return batch_predict.input_files(value, KEY, "translate")


def run(
    scheme: str,
    paths: Sequence[str],
    output: str,
    *,
    source_column: str,
    header: bool,
    translate: Callable[[list[str]], tuple[list[str], np.ndarray]],
    batch_size: int,
    max_source_len: int,
    on_long_input: str,
) -> dict:
  """Translates every row of `paths` into `output` (see module doc); `translate(texts)` gives
  (translations, each source's length in tokens, EOS not counted). Returns {"rows", "seconds",
  "output"}."""
  long = too_long.RowCounter(  # EOS takes one of the max_source_len positions
      max_source_len - 1,
      f"data.max_source_len={max_source_len}, EOS included",
      "decode.on_long_input",
      on_long_input,
  )

  def predict(batch):
    hyps, lengths = translate([row.values[0] for _, row in batch])
    long.check(batch, lengths)
    return [[h] for h in hyps]

  result = batch_predict.stream(
      scheme,
      paths,
      output,
      column=("data.source_column", source_column),
      header=header,
      added=["translation"],
      predict=predict,
      batch_size=batch_size,
      input_key=KEY,
      output_key=OUTPUT_KEY,
  )
  rows, seconds = result["rows"], result["seconds"]
  long.warn(KEY, rows, "sources")
  print(
      f"wrote {rows:,} translations to {output} in {seconds:.1f} s "
      f"({rows / max(seconds, 1e-9):,.1f} rows/s)",
      flush=True,
  )
  return result
