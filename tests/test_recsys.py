"""recsys: ranking metrics against sklearn, both MovieLens file layouts, leave-last-out by time,
the popular baseline against a direct count, recommend mode, ALS scored as implicit ranks it, and
bad input as one-line errors. One tiny training run is shared by the tests that need a model."""

import contextlib
import io
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from bigmodel_jax import config as config_lib
from bigmodel_jax import parallel, ranking, tasks, trainer
from bigmodel_jax.data import interactions
from bigmodel_jax.errors import RunError, UsageError
from tests.helpers import read_metrics, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (user, item, rating, timestamp), not in time order; user 7 rates item 30 twice.
RATINGS = [
    (7, 10, 4.0, 500),
    (7, 20, 5.0, 100),
    (10, 20, 3.0, 50),
    (7, 30, 2.0, 300),
    (10, 30, 4.5, 70),
    (2, 10, 5.0, 10),
    (7, 30, 4.0, 200),
    (10, 10, 1.0, 60),
]


def _data_config(**values):
  c = config_lib.load_experiment("recsys:tiny")
  config_lib.set_values(c, {f"data.{k}": v for k, v in values.items()}, "test")
  return c.data


def _write(path, rows, header, delimiter):
  with open(path, "w") as f:
    if header:
      f.write(delimiter.join(header) + "\n")
    for row in rows:
      f.write(delimiter.join(f"{v:g}" if isinstance(v, float) else str(v) for v in row) + "\n")
  return str(path)


def test_ranking_metrics_match_sklearn_ndcg_and_direct_counts():
  rng = np.random.default_rng(0)
  b, n = 8, 40
  scores = rng.normal(size=(b, n)).astype(np.float32)  # distinct: no ties to break
  seen = rng.random((b, n)) < 0.3
  targets = np.full((b, 3), -1)
  for row in range(b):
    unseen = np.flatnonzero(~seen[row])
    targets[row, : 1 + row % 3] = rng.choice(unseen, 1 + row % 3, replace=False)
  got = jax.tree.map(np.asarray, ranking.top_k_metrics(scores, seen, targets))
  for row in range(b):
    candidates = ~seen[row]
    relevant = np.isin(np.arange(n), targets[row])[candidates]
    score = scores[row][candidates]
    top = np.argsort(-score)[:10]
    assert got["ndcg_at_10"][row] == pytest.approx(
        sk_metrics.ndcg_score([relevant], [score], k=10), abs=1e-6
    )
    assert got["recall_at_10"][row] == pytest.approx(relevant[top].sum() / relevant.sum())
    assert got["hit_rate_at_10"][row] == float(relevant[top].any())
  assert 0 < got["ndcg_at_10"].mean() < 1  # the case has both hits and misses


def test_ratings_csv_and_u_data_layouts_read_alike_and_hold_out_the_latest(tmp_path):
  csv = _write(tmp_path / "ratings.csv", RATINGS, ("userId", "movieId", "rating", "timestamp"), ",")
  tsv = _write(tmp_path / "u.data", RATINGS, None, "\t")
  a = interactions.load(_data_config(source=f"csv:{csv}"))
  b = interactions.load(
      _data_config(
          source=f"tsv:{tsv}",
          header=False,
          user_column="0",
          item_column="1",
          rating_column="2",
          time_column="3",
      )
  )
  for x in (a, b):
    assert x.user_ids == ["2", "7", "10"] and x.item_ids == ["10", "20", "30"]  # numeric order
    pairs = {(x.user_ids[u], x.item_ids[i], t) for u, i, t in zip(x.users, x.items, x.times)}
    assert ("7", "30", 300) in pairs and ("7", "30", 200) not in pairs  # a repeat counts once
    assert len(pairs) == 7
  split = interactions.leave_last_out(a, 1)
  # User 2 has one interaction: kept for training, not evaluated. The others lose their latest.
  assert [a.user_ids[u] for u in split.eval_users] == ["7", "10"]
  assert [a.item_ids[i] for i in split.targets[:, 0]] == ["10", "30"]
  assert sorted(a.item_ids[i] for i in split.seen(1)) == ["20", "30"]
  two = interactions.leave_last_out(a, 2)  # the last two, in time order
  assert [[a.item_ids[i] for i in row] for row in two.targets] == [["30", "10"], ["10", "30"]]
  liked = interactions.load(_data_config(source=f"csv:{csv}", min_rating=4.0))
  assert len(liked.users) == 5  # ratings >= 4, user 7's item 30 kept at its 4.0 (time 200)


@pytest.mark.parametrize(
    "rows, values, message",
    [
        (
            [("userId", "itemId", "rating", "timestamp"), (1, 2, 3, 4)],
            {},
            "data.item_column='movieId' is not a column",
        ),
        ([("userId", "movieId", "rating", "timestamp"), (1, 2, "five", 3)], {}, "line 2: 'five'"),
    ],
    ids=["missing column", "non-numeric rating"],
)
def test_bad_csv_is_a_one_line_error(tmp_path, rows, values, message):
  path = _write(tmp_path / "bad.csv", rows, None, ",")
  with pytest.raises(UsageError, match=message) as e:
    interactions.load(_data_config(source=f"csv:{path}", **values))
  assert "\n" not in str(e.value)


def test_missing_column_on_the_command_line_exits_2_with_one_line(tmp_path):
  path = _write(tmp_path / "r.csv", [(1, 2, 3)], ("userId", "itemId", "rating"), ",")
  result = subprocess.run(
      [sys.executable, "run.py", "--experiment=recsys:tiny", f"--config.data.source=csv:{path}",
       f"--workdir={tmp_path}/run"],
      cwd=REPO, capture_output=True, text=True, check=False,
  )  # fmt: skip
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: data.item_column='movieId'")
  assert "its columns: userId, itemId, rating" in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("recsys") / "run")
  config = tiny_config("", "recsys:tiny")
  with contextlib.redirect_stdout(io.StringIO()):
    state = trainer.run(config, workdir)
  task = tasks.get("recsys")(config)
  task.setup(workdir, create=False)
  params = parallel.make(config).to_host_layout(state).params
  return config, workdir, task, {"params": params}


def test_model_beats_the_popular_baseline_on_the_same_split(trained):
  _, workdir, _, _ = trained
  final = read_metrics(workdir, "validation")[max(read_metrics(workdir, "validation"))]
  assert final["ndcg_at_10"] > final["popular_ndcg_at_10"] + 0.01
  assert final["hit_rate_at_10"] > final["popular_hit_rate_at_10"]


def test_popular_baseline_matches_a_direct_count(trained):
  _, _, task, _ = trained
  s = task.split
  counts = np.bincount(s.train_items, minlength=task.num_items)
  hits, ndcg = [], []
  for user, (target,) in zip(s.eval_users, s.targets):
    order = [i for i in np.argsort(-counts, kind="stable") if i not in set(s.seen(user))][:10]
    rank = order.index(target) if target in order else None
    hits.append(rank is not None)
    ndcg.append(0.0 if rank is None else 1 / np.log2(rank + 2))
  got = task.popular_metrics()
  assert got["hit_rate_at_10"] == pytest.approx(np.mean(hits))
  assert got["ndcg_at_10"] == pytest.approx(np.mean(ndcg), rel=1e-5)


def test_recommend_lists_unseen_items_by_score_and_unknown_users_get_popular(trained):
  config, _, task, variables = trained
  r = config.recommend
  user = task.data.user_ids[5]
  with config.unlocked():
    r.user = user
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    listed = task.recommend(variables)
  scores = np.asarray(task.scores(variables["params"], np.array([5])))[0]
  mine = set(task.data.items[task.data.users == 5])
  expected = [i for i in np.argsort(-scores, kind="stable") if i not in mine][: r.count]
  assert [item for item, _ in listed] == [task.data.item_ids[i] for i in expected]
  assert f"top {r.count} items for user {user}" in out.getvalue()

  with config.unlocked():
    r.user = "nobody"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    listed = task.recommend(variables)
  assert "'nobody' is not in the training data" in out.getvalue().splitlines()[0]
  counts = task.split.popularity(task.num_items)
  assert [item for item, _ in listed] == [
      task.data.item_ids[i] for i in np.argsort(-counts, kind="stable")[: r.count]
  ]

  with config.unlocked():
    r.unknown_user = "error"
  with pytest.raises(UsageError, match="recommend.user='nobody' is not a user") as e:
    task.recommend(variables)
  assert "\n" not in str(e.value)
  with config.unlocked():
    r.user, r.unknown_user = "", "popular"
  with pytest.raises(UsageError, match="needs --config.recommend.user"):
    task.recommend(variables)


def test_unknown_user_with_unknown_user_error_exits_2_with_one_line(trained):
  _, workdir, _, _ = trained
  result = subprocess.run(
      [sys.executable, "run.py", "--experiment=recsys:tiny", f"--workdir={workdir}",
       "--mode=recommend", "--config.recommend.user=nobody",
       "--config.recommend.unknown_user=error"],
      cwd=REPO, capture_output=True, text=True, check=False,
  )  # fmt: skip
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: recommend.user='nobody' is not a user of data.source=synthetic")


def test_data_with_other_ids_than_the_run_is_refused(trained):
  config, workdir, _, _ = trained
  task = tasks.get("recsys")(config)
  task.data.user_ids = task.data.user_ids[::-1]
  with pytest.raises(RunError, match="other users or items than this run was trained on"):
    task.setup(workdir, create=False)


def test_als_scored_by_our_ranking_matches_implicits_own_recommend(trained):
  from bigmodel_jax import bench_recsys  # pylint: disable=g-import-not-at-top

  _, _, task, _ = trained
  model, user_items, _ = bench_recsys.fit_als(task, 0, factors=8, regularization=0.1, alpha=1.0)
  users = task.split.eval_users[:20]
  ids, _ = model.recommend(users, user_items[users], N=10, filter_already_liked_items=True)
  scores = bench_recsys.als_scores(model)(users)
  seen = task.split.seen_mask(users, task.num_items)
  targets = np.asarray(ids)[:, :1]  # implicit's first pick must be our first pick too
  got = np.asarray(ranking.top_k_metrics(scores, seen, targets, k=1)["hit_rate_at_1"])
  assert got.all()
  masked = np.where(seen, -np.inf, scores)
  assert np.sort(masked, 1)[:, ::-1][:, :10] == pytest.approx(np.take_along_axis(masked, ids, 1))


def test_two_tower_feeds_the_side_features_into_its_towers():
  config = config_lib.load_experiment("recsys:tiny")
  config.model.name = "two_tower"
  task = tasks.get("recsys")(config)
  shapes = jax.eval_shape(task.init_variables, jax.random.key(0))["params"]
  topics = config.data.topics
  first = "hidden_0" if config.model.hidden_sizes else "out"
  for tower in ("user", "item"):
    assert shapes[tower][first]["kernel"].shape[0] == config.model.embed_dim + topics


def test_two_tower_with_sampled_softmax_learns_past_the_popular_baseline(tmp_path):
  final = _train_tiny(tmp_path, {"model.name": "two_tower", "loss.num_negatives": 30})
  assert final["ndcg_at_10"] > final["popular_ndcg_at_10"]


def test_bpr_learns_a_ranking_far_better_than_chance(tmp_path):
  final = _train_tiny(tmp_path, {"loss.name": "bpr"})
  # BPR learns popularity slowly (it passes the baseline after ~500 tiny steps, not 150), so
  # against chance: a random list of 10 from n candidates has expected NDCG sum(1/log2(j+2))/n.
  task = tasks.get("recsys")(tiny_config("", "recsys:tiny"))
  n = task.num_items - np.diff(task.split.seen_indptr)[task.split.eval_users]
  chance = np.mean(np.sum(1 / np.log2(np.arange(10) + 2)) / n)
  assert final["ndcg_at_10"] > 3 * chance


def _train_tiny(tmp_path, overrides) -> dict:
  """Trains recsys:tiny with `overrides`; checks the training loss fell; -> the final eval."""
  config = tiny_config("", "recsys:tiny", **{k.replace(".", "__"): v for k, v in overrides.items()})
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.run(config, str(tmp_path / "run"))
  train = read_metrics(str(tmp_path / "run"))
  evals = read_metrics(str(tmp_path / "run"), "validation")
  assert train[config.train.steps]["loss"] < train[config.train.log_every]["loss"]
  return evals[config.train.steps]
