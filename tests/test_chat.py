"""Chat rendering: the text transformers' apply_chat_template gives; assistant turns marked."""

import pytest

from bigmodel_jax.data import chat
from bigmodel_jax.errors import UsageError

CONVERSATION = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 4+4?"},
    {"role": "assistant", "content": "8"},
]
# A Llama-3-style template (with bos_token and a trailing generation prompt), as tokenizer folders
# ship them in tokenizer_config.json.
LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def hf_tokenizer():
  tokenizers = pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  model = tokenizers.models.WordLevel({"<unk>": 0, "<s>": 1}, unk_token="<unk>")
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizers.Tokenizer(model), bos_token="<s>", unk_token="<unk>"
  )


@pytest.mark.parametrize("template", [None, LLAMA3_STYLE], ids=["default", "llama3_style"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_render_matches_transformers_apply_chat_template(hf_tokenizer, template, generation_prompt):
  expected = hf_tokenizer.apply_chat_template(
      CONVERSATION,
      chat_template=template or chat.DEFAULT_TEMPLATE,
      tokenize=False,
      add_generation_prompt=generation_prompt,
  )
  ours = chat.render(CONVERSATION, template, generation_prompt, bos_token="<s>")
  assert ours == expected


@pytest.mark.parametrize("template", [None, LLAMA3_STYLE], ids=["default", "llama3_style"])
def test_segments_join_to_the_rendering_and_mark_only_assistant_turns(template):
  pieces = chat.segments(CONVERSATION, template, bos_token="<s>")
  assert "".join(text for text, _ in pieces) == chat.render(CONVERSATION, template, bos_token="<s>")
  learned = [text for text, is_assistant in pieces if is_assistant]
  end = chat.DEFAULT_END if template is None else "<|eot_id|>"
  assert learned == [f"5{end}\n" if template is None else f"5{end}", *learned[1:]]
  assert len(learned) == 2 and learned[1].startswith("8")
  # The prompt for the next turn is exactly the text before the last assistant piece.
  before_last = "".join(text for text, _ in pieces[: pieces.index((learned[1], True))])
  assert chat.prompt(CONVERSATION[:4], template, bos_token="<s>") == before_last


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "robot", "content": "hi"}], "role='robot' is not valid; valid: system, user"),
        ([{"role": "user"}], r"messages\[0\] must be an object with a string 'content'"),
    ],
)
def test_bad_conversations_are_one_line_errors(messages, match):
  with pytest.raises(UsageError, match=match):
    chat.render(messages)


def test_a_conversation_without_an_assistant_turn_has_nothing_to_learn():
  with pytest.raises(UsageError, match="no assistant message"):
    chat.segments([{"role": "user", "content": "hi"}])


def test_a_template_that_raises_is_a_one_line_error():
  refusing = "{{ raise_exception('roles must alternate') }}"
  with pytest.raises(UsageError, match="refused the conversation: roles must alternate"):
    chat.render(CONVERSATION, refusing)
