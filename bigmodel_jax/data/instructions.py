"""Supervised fine-tuning examples: generated string exercises or your own JSONL files.

An example is a list of (text, is_target) pieces; the loss goes on the target pieces only.

- `pystrings` (the offline default): Python interpreter exchanges whose answers Python itself
  computes, e.g. the prompt `>>> 'lamp'[::-1]\\n` with the completion `'pmal'` (then the end
  string). Four operations on random lowercase words of 3-8 letters: `.upper()`, `[::-1]`,
  `len(...)` and `'-'.join(...)`; every answer is `repr(eval(prompt))`, so exact match is exact.
- `jsonl:<glob>`: one JSON object per line, either {"prompt": str, "completion": str} (the
  completion and `data.end` are the target) or {"messages": [{"role", "content"}, ...]} rendered
  with the tokenizer's chat template or `chat.DEFAULT_TEMPLATE` (every assistant turn, with its
  end marker, is the target).

Validation: `data.validation_source` (same formats), or `data.val_percent`% of the examples held
out by a hash of their text (files.held_out: stable as files grow).
"""

from collections.abc import Sequence
import json
import os
import random
from typing import NamedTuple

from bigmodel_jax.data import chat, files
from bigmodel_jax.errors import UsageError

SOURCES_HELP = "pystrings (generated), jsonl:<glob>"
OPERATIONS = ("{w!r}.upper()", "{w!r}[::-1]", "len({w!r})", "'-'.join({w!r})")

Pieces = list[tuple[str, bool]]  # (text, is_target)


class Example(NamedTuple):
  pieces: Pieces  # the whole example; the loss is on the target pieces
  prompt: str  # what a model is given to answer
  answer: str  # what it should write before `stop` (for exact match)
  stop: str  # where its answer ends: data.end, or a ChatML turn's end marker


def generated(n: int, seed: int, end: str) -> list[Example]:
  """`n` pystrings exchanges, the same for a seed."""
  r = random.Random(seed)
  examples = []
  for _ in range(n):
    word = "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(3, 8)))
    expression = r.choice(OPERATIONS).format(w=word)
    prompt, answer = f">>> {expression}\n", repr(eval(expression))  # pylint: disable=eval-used
    examples.append(Example([(prompt, False), (answer + end, True)], prompt, answer, end))
  return examples


def _from_record(record, where: str, end: str, template: str | None) -> Example:
  if not isinstance(record, dict):
    raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if "messages" in record:
    pieces = chat.segments(chat.check_messages(record["messages"], f"{where}: messages"), template)
    messages = record["messages"]
    # Exact match asks for the last assistant turn given the conversation before it.
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = chat.prompt(messages[:last], template) if last else chat.prompt([], template)
    stop = chat.DEFAULT_END if template is None else end
    return Example(pieces, prompt, messages[last]["content"], stop)
  prompt, completion = record.get("prompt"), record.get("completion")
  if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
    raise UsageError(
        f"{where}: needs string fields 'prompt' and 'completion' (non-empty), or 'messages'; "
        f"has {', '.join(sorted(record)) or 'no fields'}"
    )
  return Example([(prompt, False), (completion + end, True)], prompt, completion, end)


def read_jsonl(pattern: str, end: str, template: str | None) -> list[Example]:
  """The examples of every file matching `pattern`, in path order; errors name file and line."""
  paths = files.match(os.path.expanduser(pattern)).paths
  if not paths:
    raise UsageError(f"data.source=jsonl:{pattern} matches no files")
  examples = []
  for path in paths:
    with open(path, encoding="utf-8", errors="strict") as f:
      try:
        lines = f.readlines()
      except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UsageError(f"{where}: not a JSON line ({e.msg})") from None
      examples.append(_from_record(record, where, end, template))
  if not examples:
    raise UsageError(f"data.source=jsonl:{pattern}: the files hold no examples")
  return examples


def load(source: str, data, template: str | None) -> dict[str, list[Example]]:
  """{"train": [...], "validation": [...]} for config.data `data`."""
  end = data.end
  if source == "pystrings":
    # Distinct seeds per split; an exchange in both would be rare and harmless (the same question).
    return {
        "train": generated(data.num_examples, data.seed, end),
        "validation": generated(data.num_val_examples, data.seed + 1, end),
    }
  kind, _, pattern = source.partition(":")
  if kind != "jsonl" or not pattern:
    raise UsageError(f"data.source={source!r} is not valid; valid: {SOURCES_HELP}")
  examples = read_jsonl(pattern, end, template)
  if data.validation_source:
    kind, _, val_pattern = data.validation_source.partition(":")
    if kind != "jsonl" or not val_pattern:
      raise UsageError(
          f"data.validation_source={data.validation_source!r} is not valid; valid: jsonl:<glob>"
      )
    return {"train": examples, "validation": read_jsonl(val_pattern, end, template)}
  return split(examples, data.val_percent)


def split(examples: Sequence[Example], val_percent: int) -> dict[str, list[Example]]:
  keys = ["".join(text for text, _ in e.pieces) for e in examples]
  if len(set(keys)) < 2:
    raise UsageError(
        "the data has fewer than 2 distinct examples, so no validation split can be held out"
    )
  val = files.held_out(keys, val_percent)
  return {
      "train": [e for e, v in zip(examples, val) if not v],
      "validation": [e for e, v in zip(examples, val) if v],
  }
