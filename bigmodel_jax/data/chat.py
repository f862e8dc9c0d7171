"""Chat conversations -> text, with the assistant's part marked (for SFT loss masks and serving).

A conversation is a list of {"role": "system" | "user" | "assistant", "content": str}, rendered
with a Jinja chat template: the tokenizer folder's own (Hugging Face tokenizer_config.json's
"chat_template", rendered the way `transformers` does: sandboxed, trim_blocks, lstrip_blocks), or,
when it has none, DEFAULT_TEMPLATE, a ChatML layout that any tokenizer can spell:

  <|im_start|>user
  What is 2+3?<|im_end|>
  <|im_start|>assistant
  5<|im_end|>

`segments` splits a conversation into (text, is_assistant) pieces by rendering growing prefixes,
so a trainer can put the loss on what the assistant writes (its content and end marker) and on
nothing else; `prompt` renders the conversation so far plus the opening of the assistant's turn,
for serving.
"""

from collections.abc import Mapping, Sequence
import functools

import jinja2
from jinja2 import sandbox

from bigmodel_jax.errors import UsageError

ROLES = ("system", "user", "assistant")
DEFAULT_END = "<|im_end|>"  # where an assistant turn of DEFAULT_TEMPLATE ends: a stop string
DEFAULT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def check_messages(messages, where: str = "messages") -> list[dict]:
  """The conversation as a list of {"role", "content"} dicts, or a one-line UsageError."""
  if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
    raise UsageError(f"{where} must be a non-empty list of {{role, content}} objects")
  checked = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
      raise UsageError(f"{where}[{i}] must be an object with a string 'content'; got {m!r:.80}")
    if m.get("role") not in ROLES:
      raise UsageError(
          f"{where}[{i}].role={m.get('role')!r} is not valid; valid: {', '.join(ROLES)}"
      )
    checked.append({"role": m["role"], "content": m["content"]})
  return checked


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

  def raise_exception(message):  # templates call this on conversations they refuse
    raise UsageError(f"the chat template refused the conversation: {message}")

  env.globals["raise_exception"] = raise_exception
  try:
    return env.from_string(template)
  except jinja2.TemplateError as e:
    raise UsageError(f"the chat template is not valid Jinja: {e}") from None


def render(
    messages, template: str | None = None, add_generation_prompt: bool = False, **special_tokens
) -> str:
  """The conversation as text. `special_tokens` (bos_token="<s>", ...) are template variables."""
  return _render(check_messages(messages), template, add_generation_prompt, special_tokens)


def _render(messages: list[dict], template, add_generation_prompt, special_tokens) -> str:
  try:
    return _compile(template or DEFAULT_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens
    )
  except jinja2.TemplateError as e:
    raise UsageError(f"the chat template failed on this conversation: {e}") from None


def prompt(messages, template: str | None = None, **special_tokens) -> str:
  """What a model continues to write the next assistant turn."""
  return render(messages, template, add_generation_prompt=True, **special_tokens)


def segments(messages, template: str | None = None, **special_tokens) -> list[tuple[str, bool]]:
  """[(text, is_assistant)] whose texts join to render(messages): each assistant turn (after its
  opening, which the template writes as the generation prompt) is one True piece.

  Works for any template that renders a conversation as a prefix of its continuations, which
  chat templates do; one that does not is a one-line UsageError.
  """
  messages = check_messages(messages)
  if not any(m["role"] == "assistant" for m in messages):
    raise UsageError("the conversation has no assistant message to learn from")
  pieces, done = [], ""
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    opening = _render(messages[:i], template, True, special_tokens)
    full = _render(messages[: i + 1], template, False, special_tokens)
    if not (opening.startswith(done) and full.startswith(opening)):
      raise UsageError(
          "the chat template does not render a conversation as a prefix of its continuations, "
          "so the assistant's turns cannot be marked"
      )
    pieces += [(opening[len(done) :], False), (full[len(opening) :], True)]
    done = full
  rest = _render(messages, template, False, special_tokens)[len(done) :]
  if rest:
    pieces.append((rest, False))
  return [(text, is_assistant) for text, is_assistant in pieces if text]
