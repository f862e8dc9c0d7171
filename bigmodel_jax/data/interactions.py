"""User-item interactions for recommendation: loading, the leave-last-out split, id maps.

`load(d)` reads `config.data` into `Interactions`: the generated offline default
(`synthetic_interactions.py`) or the user's own file, `csv:<path>` / `tsv:<path>` (one row per
interaction; columns named by data.user_column, data.item_column, data.rating_column and
data.time_column, or 0-based positions with data.header=false, so both MovieLens layouts work:
`ratings.csv` with its header, and the tab-separated, headerless `u.data`).

Feedback is implicit: a row is one positive interaction. Rows whose rating is below data.min_rating
are dropped (MovieLens' stars become "liked" at e.g. 4); a (user, item) pair that occurs more than
once counts once, at its latest time. User and item ids are any text; indices follow sorted order
(numerically when every id is an integer), so the same data give the same indices.

`leave_last_out(x, n)` holds out each user's last n interactions by time (file order breaks ties
and stands in for time without a time column). A user with n or fewer interactions stays whole in
training and is not evaluated, since held out there would leave nothing to learn that user from.
"""

import dataclasses
import math
import os

import numpy as np

from bigmodel_jax.data import records
from bigmodel_jax.errors import UsageError

SOURCES_HELP = "synthetic, csv:<path>, tsv:<path>"


@dataclasses.dataclass
class Interactions:
  users: np.ndarray  # int32 (N,) index into user_ids
  items: np.ndarray  # int32 (N,) index into item_ids
  times: np.ndarray  # float64 (N,): a later interaction has a larger time
  user_ids: list[str]
  item_ids: list[str]
  description: str  # what the data are, for the log
  user_features: np.ndarray | None = None  # float32 (U, Fu), when the source has them
  item_features: np.ndarray | None = None  # float32 (I, Fi)

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)


@dataclasses.dataclass
class Split:
  """Leave-last-out: the training pairs and, per evaluated user, the held-out items."""

  train_users: np.ndarray  # int32 (N_train,)
  train_items: np.ndarray  # int32 (N_train,)
  eval_users: np.ndarray  # int32 (E,) the users with held-out items
  targets: np.ndarray  # int32 (E, holdout) their held-out items
  seen_indptr: np.ndarray  # int64 (U + 1,): user u's training items are
  seen_items: np.ndarray  # seen_items[seen_indptr[u]:seen_indptr[u + 1]] (CSR)

  def seen(self, user: int) -> np.ndarray:
    return self.seen_items[self.seen_indptr[user] : self.seen_indptr[user + 1]]

  def seen_mask(self, users: np.ndarray, num_items: int) -> np.ndarray:
    """bool (len(users), num_items): True where the user has the item in training."""
    mask = np.zeros((len(users), num_items), bool)
    for row, u in enumerate(users):
      mask[row, self.seen(u)] = True
    return mask

  def popularity(self, num_items: int) -> np.ndarray:
    """float32 (num_items,): each item's number of training users (the popular baseline)."""
    return np.bincount(self.train_items, minlength=num_items).astype(np.float32)


def load(d) -> Interactions:
  if d.source == "synthetic":
    from bigmodel_jax.data import synthetic_interactions  # pylint: disable=g-import-not-at-top

    return synthetic_interactions.generate(d)
  scheme, _, path = d.source.partition(":")
  if scheme not in ("csv", "tsv") or not path:
    raise UsageError(f"data.source={d.source!r} is not valid; valid: {SOURCES_HELP}")
  return read_file(os.path.expanduser(path), scheme, d)


def read_file(path: str, scheme: str, d) -> Interactions:
  """One CSV/TSV file of interactions (see module doc); every data error is a UsageError."""
  if not os.path.isfile(path):
    raise UsageError(f"data.source={scheme}:{path}: no such file")
  columns = {"data.user_column": d.user_column, "data.item_column": d.item_column}
  if d.rating_column:
    columns["data.rating_column"] = d.rating_column
  if d.time_column:
    columns["data.time_column"] = d.time_column
  users, items, times, kept, dropped = [], [], [], 0, 0
  for row in records.read(path, scheme, columns, header=d.header, required=columns):
    rating = _number(row.values[2], path, row.line, "data.rating_column") if d.rating_column else 1
    if d.rating_column and rating < d.min_rating:
      dropped += 1
      continue
    users.append(row.values[0])
    items.append(row.values[1])
    times.append(
        _number(row.values[-1], path, row.line, "data.time_column") if d.time_column else 0
    )
    kept += 1
  if not kept:
    why = f" (all {dropped} are below data.min_rating={d.min_rating})" if dropped else ""
    raise UsageError(f"data.source={scheme}:{path} has no interactions{why}")
  user_ids, user_index = _index(users)
  item_ids, item_index = _index(items)
  filtered = f", {dropped} below data.min_rating={d.min_rating} dropped" if dropped else ""
  return dedupe(
      Interactions(
          users=user_index,
          items=item_index,
          times=np.asarray(times, np.float64),
          user_ids=user_ids,
          item_ids=item_ids,
          description=f"{path}: {kept} interactions{filtered}",
      )
  )


def _number(text: str, path: str, line: int, setting: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise UsageError(
        f"{path} line {line}: {text!r} ({setting}) is not a number; ratings, weights and "
        "timestamps must be numbers (e.g. 4, 3.5, 964982703)"
    )
  return value


def _index(ids: list[str]) -> tuple[list[str], np.ndarray]:
  """-> (the distinct ids in order, int32 index of each id); integers sort as numbers."""
  distinct = set(ids)
  numeric = all(i.lstrip("-").isdigit() for i in distinct)
  order = sorted(distinct, key=(lambda i: (int(i), i)) if numeric else None)
  position = {i: n for n, i in enumerate(order)}
  return order, np.fromiter((position[i] for i in ids), np.int32, len(ids))


def dedupe(x: Interactions) -> Interactions:
  """Keeps each (user, item) pair once, at its latest time (and, among equal times, the last row),
  and sorts the interactions by (user, time, row)."""
  order = np.lexsort((np.arange(len(x.users)), x.times, x.users))  # last key is the primary one
  users, items, times = x.users[order], x.items[order], x.times[order]
  pair = users.astype(np.int64) * x.num_items + items
  # A row is kept when no later row (in this order) has the same pair.
  _, last_from_end = np.unique(pair[::-1], return_index=True)
  keep = np.sort(len(pair) - 1 - last_from_end)
  return dataclasses.replace(x, users=users[keep], items=items[keep], times=times[keep])


def leave_last_out(x: Interactions, holdout: int) -> Split:
  """Holds out each user's last `holdout` interactions (x is sorted by user, then time)."""
  counts = np.bincount(x.users, minlength=x.num_users)
  starts = np.concatenate([[0], np.cumsum(counts)])
  position = np.arange(len(x.users)) - starts[x.users]  # 0-based within the user's history
  evaluated = counts > holdout
  held = evaluated[x.users] & (position >= counts[x.users] - holdout)
  train_users, train_items = x.users[~held], x.items[~held]
  eval_users = np.flatnonzero(evaluated).astype(np.int32)
  targets = x.items[held].reshape(len(eval_users), holdout)
  seen_counts = np.bincount(train_users, minlength=x.num_users)
  return Split(
      train_users=train_users,
      train_items=train_items,
      eval_users=eval_users,
      targets=targets,
      seen_indptr=np.concatenate([[0], np.cumsum(seen_counts)]),
      seen_items=train_items,  # already grouped by user, in user order
  )
