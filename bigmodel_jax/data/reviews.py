"""An offline, generated corpus of labelled movie reviews whose label needs word order and negation.

Every review is built from clauses "<subject> <verb> [<negator>] [<intensifier>] <adjective>",
e.g. "the pacing was hardly very gripping", or the bare form "[<negator>] <adjective>" ("not bad").
A clause's polarity is its adjective's polarity, flipped by a negator ("not", "hardly", "never",
"far from", "not at all"). A review is (with an optional neutral opening sentence, e.g. "We watched
it last night."):

  single clause       "The plot was not bad."                         label = the clause
  A but B             "The plot was good, but the acting was slow."   label = B (after "but")
  although A, B       "Although it was not bad, the cast was dull."   label = B (the main clause)
  B, even though A    "It was fun, even though the plot was slow."    label = B (the main clause,
                                                                        here the first one)

Forms are drawn with FORM_PROBS (40% single, 20% each contrast) and labels uniformly. Each clause
is negated with probability NEGATION_PROB (0.35) and its adjective is then drawn from the word list
that gives the clause the polarity it needs.

In the two-clause forms the clauses always have opposite polarities (a contrast), so the main
clause's adjective agrees with the label exactly as often as the other clause's disagrees with it:
the counts of positive words, negative words, negators and connectives have the same distribution
for both labels. A bag of words cannot tell "good, but slow" (negative) from "slow, but good"
(positive), nor "not bad, but not great" from "not great, but not bad". In a single clause the
adjective agrees with the label 65% of the time: that word-level signal is what lets a model start
learning (a linear bag of words can use it too, but cannot compute adjective XOR negator). On the
test split a bag-of-words logistic regression scores about 50%.

`generate(n, seed)` is deterministic for a seed; `splits(num_train, num_test, seed)` draws the test
split with a different seed (seed + 1) and drops test reviews whose text is also in train (so
short single-clause reviews, of which there are few distinct ones, are rarer in test).
"""

import numpy as np

CLASS_NAMES = ("negative", "positive")

POSITIVE = (
    "good",
    "great",
    "brilliant",
    "fun",
    "gripping",
    "charming",
    "clever",
    "moving",
    "superb",
    "enjoyable",
    "funny",
    "beautiful",
)
NEGATIVE = (
    "bad",
    "boring",
    "dull",
    "slow",
    "awful",
    "weak",
    "clumsy",
    "predictable",
    "tedious",
    "bland",
    "messy",
    "forgettable",
)
NEGATORS = ("not", "hardly", "never", "far from", "not at all")
INTENSIFIERS = ("", "", "", "very", "really", "quite", "truly")
SUBJECTS = (
    "the movie",
    "the film",
    "the plot",
    "the acting",
    "the pacing",
    "the ending",
    "the soundtrack",
    "the dialogue",
    "the cast",
    "the story",
    "the script",
    "the camera work",
    "it",
)
VERBS = ("was", "is", "felt", "seemed")
OPENINGS = (
    "We watched it last night.",
    "I saw this one on a Sunday.",
    "My friend picked it.",
    "I went in with no expectations.",
    "Two hours of my weekend.",
    "Seen at a festival.",
)
# Hand-written pairs that only word order or negation tells apart, for the showcase.
PROBES = (
    ("Good, but slow.", 0),
    ("Slow, but good.", 1),
    ("Not bad.", 1),
    ("Hardly great.", 0),
    ("Although the plot was not bad, the acting was dull.", 0),
    ("The acting was dull, even though the plot was not bad.", 0),
    ("The plot was not bad, even though the acting was dull.", 1),
)
FORMS = ("single", "but", "although", "even_though")
FORM_PROBS = (0.4, 0.2, 0.2, 0.2)
NEGATION_PROB = 0.35


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
  return words[rng.integers(len(words))]


def _clause(rng: np.random.Generator, polarity: int, bare: bool) -> str:
  """A clause of the given polarity (1 positive, 0 negative)."""
  negated = rng.random() < NEGATION_PROB
  adjective = _pick(rng, POSITIVE if polarity != negated else NEGATIVE)
  words = [_pick(rng, NEGATORS)] if negated else []
  words += [_pick(rng, INTENSIFIERS), adjective]
  if not bare:
    words = [_pick(rng, SUBJECTS), _pick(rng, VERBS)] + words
  return " ".join(w for w in words if w)


def _review(rng: np.random.Generator, label: int) -> str:
  form = FORMS[rng.choice(len(FORMS), p=FORM_PROBS)]
  bare = rng.random() < 0.25  # "not bad, but slow"
  main = _clause(rng, label, bare)
  other = _clause(rng, 1 - label, bare)
  if form == "single":
    text = main
  elif form == "but":
    text = f"{other}, but {main}"
  elif form == "although":
    text = f"although {other}, {main}"
  else:
    text = f"{main}, even though {other}"
  text = text[0].upper() + text[1:] + "."
  if rng.random() < 0.3:
    text = f"{_pick(rng, OPENINGS)} {text}"
  return text


def _stream(seed: int):
  rng = np.random.default_rng(seed)
  while True:
    label = int(rng.integers(2))
    yield _review(rng, label), label


def generate(num_examples: int, seed: int) -> tuple[list[str], np.ndarray]:
  """(texts, int32 labels) of `num_examples` reviews, deterministic for `seed`."""
  stream = _stream(seed)
  pairs = [next(stream) for _ in range(num_examples)]
  return [t for t, _ in pairs], np.asarray([y for _, y in pairs], np.int32).reshape(-1)


def splits(num_train: int, num_test: int, seed: int = 0) -> dict[str, tuple[list[str], np.ndarray]]:
  """{"train": (texts, labels), "test": (texts, labels)}: the test split is drawn with seed + 1
  and skips any review whose text is also in train, so all `num_test` are unseen."""
  train = generate(num_train, seed)
  seen = set(train[0])
  pairs = []
  for text, label in _stream(seed + 1):
    if len(pairs) == num_test:
      break
    if text not in seen:
      pairs.append((text, label))
  test = ([t for t, _ in pairs], np.asarray([y for _, y in pairs], np.int32).reshape(-1))
  return {"train": train, "test": test}
