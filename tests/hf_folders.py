"""Tiny random Hugging Face model folders made with transformers (a test-only reference), and a
small byte-level BPE tokenizer made with the tokenizers library, for tests/test_interop.py."""

import json
import os

TEXT = (
    "def add(a, b):\n    return a + b  # sum\n"
    "日本語のテキストと中文字符，还有表情 🙂🚀 and ASCII words, numbers 12345.\n"
    "class Tokenizer:\n    pass\n"
)
MIXED = (
    "for i in range(10):\n    print(f'{i}: 你好，世界 🌍✨')  # naïve café\n\tx = {'k': [1, 2]}\n"
)
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
VOCAB = 320  # the models' embedding rows; the tokenizer has a few fewer


def write_tokenizer(folder: str) -> None:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=300,
      special_tokens=["<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator([TEXT] * 20, trainer)
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"chat_template": CHAT_TEMPLATE, "eos_token": "<|endoftext|>"}, f)


def gpt2(folder: str):
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel

  torch.manual_seed(0)
  config = GPT2Config(
      vocab_size=VOCAB,
      n_positions=64,
      n_embd=32,
      n_layer=2,
      n_head=4,
      initializer_range=0.3,
      bos_token_id=None,
      eos_token_id=None,
  )
  return _save(GPT2LMHeadModel(config), folder)


def llama(folder: str, rope_scaling=None, tied=False):
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(1)
  rope = {"rope_type": "default", "rope_theta": 50000.0}
  if rope_scaling:
    rope = {"rope_type": "llama3", "rope_theta": 50000.0, **rope_scaling}
  config = LlamaConfig(
      vocab_size=VOCAB,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=128,
      rope_parameters=rope,
      tie_word_embeddings=tied,
      rms_norm_eps=1e-5,
      bos_token_id=None,
      eos_token_id=None,
      pad_token_id=None,
      initializer_range=0.3,
  )
  return _save(LlamaForCausalLM(config), folder)


def _save(model, folder: str):
  import torch

  with torch.no_grad():  # random norms and biases, so that a swapped scale/bias would show
    for name, p in model.named_parameters():
      if "norm" in name or "ln_" in name or name.endswith("bias"):
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
  model.eval()
  model.save_pretrained(folder)
  write_tokenizer(folder)
  return model
