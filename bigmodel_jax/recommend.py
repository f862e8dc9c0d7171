"""What a person sees of a recommender (tasks/recsys.py): the metrics table of the showcase, and
`--mode=recommend`'s list for one user.

Unknown users (recommend.unknown_user): "popular" (the default) recommends the most popular
training items and says so on the first line, since a new user is the everyday case of a
recommender and the popular list is the standard answer to it; "error" makes an unknown id a
one-line UsageError instead, for callers that must not confuse a typo with a new user.
"""

import jax
import numpy as np

from bigmodel_jax import ranking
from bigmodel_jax.errors import UsageError


def _model_scores(task, variables):
  fn = jax.jit(task.scores)
  return lambda users: np.asarray(fn(variables["params"], np.asarray(users, np.int32)))


def showcase(task, variables) -> dict:
  """Prints the model's ranking metrics next to the popular baseline's, and one user's list."""
  ours = task.evaluate(_model_scores(task, variables))
  popular = task.popular_metrics()
  s, d = task.split, task.data
  name = task.config.model.name
  print(
      f"\n{d.description}\n{len(s.eval_users)} users evaluated on their last "
      f"{task.config.data.holdout} interaction(s), ranked among all {task.num_items} items "
      "but their training items:"
  )
  header = "".join(f"{n:>16}" for n in ranking.NAMES)
  print(f"  {'':10}{header}")
  for label, values in ((name, ours), ("popular", popular)):
    print(f"  {label:10}" + "".join(f"{values[n]:16.4f}" for n in ranking.NAMES))
  user = int(s.eval_users[0])
  scores = _model_scores(task, variables)([user])[0]
  seen = s.seen(user)
  candidates = np.setdiff1d(np.arange(task.num_items), seen)
  for target in s.targets[0]:
    rank = 1 + int(np.sum(scores[candidates] > scores[target]))
    print(
        f"  user {d.user_ids[user]}: held-out item {d.item_ids[target]} is number {rank} of "
        f"{len(candidates)} in the model's list"
    )
  print(flush=True)
  return {"model": ours, "popular": popular}


def for_user(task, variables, r) -> list[tuple[str, float]]:
  """The top r.count items for user r.user, printed with scores: (item id, score) pairs."""
  d = task.data
  if not r.user:
    raise UsageError(
        "--mode=recommend needs --config.recommend.user=<id>, a user id of the data, e.g. "
        + ", ".join(d.user_ids[:3])
    )
  index = {u: i for i, u in enumerate(d.user_ids)}.get(r.user)
  if index is None:
    if r.unknown_user == "error":
      raise UsageError(
          f"recommend.user={r.user!r} is not a user of data.source={task.config.data.source} "
          f"({d.num_users} users, e.g. {', '.join(d.user_ids[:3])}); "
          "recommend.unknown_user=popular recommends the popular items instead"
      )
    print(
        f"user {r.user!r} is not in the training data ({d.num_users} users); "
        f"recommending the {r.count} most popular items instead"
    )
    scores = task.split.popularity(task.num_items)
    exclude = np.zeros((0,), np.int64)
    what = "training users"
  else:
    scores = _model_scores(task, variables)([index])[0]
    # Everything the user has interacted with in the data, held-out items included: a real
    # recommendation never repeats what the user already has.
    exclude = d.items[d.users == index]
    what = "score"
  scores = np.asarray(scores, np.float64).copy()
  scores[exclude] = -np.inf
  top = np.argsort(-scores, kind="stable")[: min(r.count, task.num_items - len(exclude))]
  if index is not None:
    print(
        f"top {len(top)} items for user {r.user} ({len(exclude)} items they already have left "
        f"out), model {task.config.model.name}:"
    )
  print(f"  {'rank':>4}  {'item':20} {what}")
  for rank, item in enumerate(top, 1):
    value = f"{scores[item]:.0f}" if index is None else f"{scores[item]:.4f}"
    print(f"  {rank:4d}  {d.item_ids[item]:20} {value}")
  return [(d.item_ids[i], float(scores[i])) for i in top]
