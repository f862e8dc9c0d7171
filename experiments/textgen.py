"""textgen: a GPT language model; the flagship experiment.

  python run.py --experiment=textgen                 # CPU, ~6 minutes on 2 cores
  python run.py --experiment=textgen --mode=sample --config.sample.prompt="def "
  python run.py --experiment=textgen --mode=eval

Offline default: a byte-level corpus of the Python standard library's own source files on this
machine. Expect a validation loss of about 1.70 nats/byte after the default preset (1.709 at
step 1000 in a fresh run, 5 min 8 s on 2 cores), and samples with Python's indentation, keywords
and identifiers.

Presets (`--experiment=textgen:<preset>`):
  tiny       a few seconds; used by tests
  gpt2_124m  GPT-2 small (12 x 768, context 1024, 50257-piece vocabulary), weight-compatible with
             Hugging Face's gpt2 (init_from=hf:<dir>); bf16 compute with f32 weights, one GPU/TPU VM
  llama_1b   Llama-3.2-1B's shapes (16 x 2048, GQA 32/8 heads, SwiGLU 8192, RMSNorm, rope_theta
             500000 with Llama-3 scaling, tied, 128256 vocabulary): init_from=hf:<Llama-3.2-1B>
  1b         ~1.0B parameters (18 x 2048, context 2048), meant for parallel.strategy=mesh with fsdp
  7b         6.6B parameters (32 x 4096, context 2048), mesh with fsdp over all devices
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

# model.name can be any of these; config.model starts from their defaults (models/<name>.py).
MODELS = ("gpt",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="lm")

  c.data = ml_collections.ConfigDict()
  c.data.source = "pystdlib"  # | text_files:<glob> | tfds:<name>
  c.data.tfds_data_dir = ""  # "" -> TFDS's default for tfds:, our cache for local corpora
  c.data.text_key = ""  # tfds feature holding the text; "" -> the only Text feature
  c.data.val_percent = 5
  c.data.tokenizer = "byte"  # | sentencepiece
  c.data.vocab_size = 256  # sentencepiece only; byte is always 256
  c.data.spm_model_type = "bpe"  # | unigram

  c.model = models.default_config(*MODELS)
  c.model.vocab_multiple = 64  # pad the embedding table for faster matmuls

  c.train.steps = 1000
  c.train.batch_size = 16
  c.train.learning_rate = 2e-3
  c.train.eval_batches = 20
  c.checkpoint.every_steps = 250
  c.parallel.cpu_devices = -1  # on a CPU: one data-parallel device per core (1.2-1.5x faster)

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "def "
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8
  c.sample.top_k = 0
  c.sample.top_p = 0.95
  c.sample.seed = 0
  c.sample.num_samples = 2
  return config_lib.apply_preset(c, arg, PRESETS)


PRESETS = {
    "tiny": {
        "data.val_percent": 20,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.embed_dim": 32,
        "model.block_size": 32,
        "train.steps": 40,
        "train.batch_size": 8,
        "train.warmup_steps": 5,
        "train.log_every": 10,
        "train.eval_every": 20,
        "train.eval_batches": 2,
        "checkpoint.every_steps": 20,
        "sample.max_new_tokens": 24,
        "sample.num_samples": 1,
    },
    "gpt2_124m": {
        "data.tokenizer": "sentencepiece",
        "data.vocab_size": 50257,
        "model.num_layers": 12,
        "model.num_heads": 12,
        "model.embed_dim": 768,
        "model.block_size": 1024,
        "model.dtype": "bfloat16",
        "model.vocab_multiple": 1,  # 50257 rows, as GPT-2's checkpoint
        "train.steps": 20000,
        "train.batch_size": 64,
        "train.learning_rate": 6e-4,
        "train.warmup_steps": 1000,
        "train.b2": 0.95,
        "train.eval_every": 1000,
        "train.log_every": 100,
        "checkpoint.every_steps": 1000,
        "sample.max_new_tokens": 256,
    },
    "1b": {
        "data.tokenizer": "sentencepiece",
        "data.vocab_size": 50257,
        "model.num_layers": 18,
        "model.num_heads": 16,
        "model.embed_dim": 2048,
        "model.mlp_dim": 8192,
        "model.block_size": 2048,
        "model.positions": "rotary",
        "model.use_bias": False,
        "model.dtype": "bfloat16",
        "model.vocab_multiple": 128,
        "model.remat": "full",
        "train.steps": 50000,
        "train.batch_size": 256,
        "train.learning_rate": 3e-4,
        "train.warmup_steps": 2000,
        "train.b2": 0.95,
        "train.eval_every": 1000,
        "train.log_every": 100,
        "checkpoint.every_steps": 1000,
        "parallel.strategy": "mesh",
        "parallel.fsdp": -1,
    },
}
# Llama-3.2-1B's architecture (its config.json); 1.24B parameters. Fine-tune from its weights with
# --config.init_from=hf:<folder>, which also brings its tokenizer.
PRESETS["llama_1b"] = {
    **PRESETS["1b"],
    "data.vocab_size": 128256,
    "model.num_layers": 16,
    "model.num_heads": 32,
    "model.num_kv_heads": 8,
    "model.embed_dim": 2048,
    "model.mlp_dim": 8192,
    "model.norm": "rmsnorm",
    "model.norm_eps": 1e-5,
    "model.mlp_type": "swiglu",
    "model.rope_theta": 500000.0,
    "model.rope_scaling": (32.0, 1.0, 4.0, 8192.0),
    "model.vocab_multiple": 1,
    "train.learning_rate": 2e-5,  # fine-tuning a pretrained model, not pretraining
    "train.steps": 2000,
    "train.batch_size": 64,
    "train.warmup_steps": 100,
}
# Llama-7B-like depth and width, with a 4x GELU MLP: 6.6B parameters; otherwise as 1b.
PRESETS["7b"] = {
    **PRESETS["1b"],
    "model.num_layers": 32,
    "model.num_heads": 32,
    "model.embed_dim": 4096,
    "model.mlp_dim": 16384,
    "train.steps": 100000,
    "train.batch_size": 512,
}
