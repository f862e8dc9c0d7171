"""sft: supervised fine-tuning of a textgen GPT on answers it can be checked on exactly.

  python run.py --experiment=textgen --workdir=runs/textgen          # pretrain (~5-6 min)
  python run.py --experiment=sft --workdir=runs/sft_full --config.init_from=runs/textgen
  python run.py --experiment=sft:lora --workdir=runs/sft_lora --config.init_from=runs/textgen
  python run.py --experiment=sft:before --workdir=runs/sft_before --config.init_from=runs/textgen

Offline default data (`pystrings`): Python interpreter exchanges such as `>>> 'lamp'[::-1]`
answered `'pmal'`, on random words, with `.upper()`, `[::-1]`, `len()` and `'-'.join()`; Python
computes every answer, so exact match is exact. The loss is on the answer (and its end newline)
only, and examples are packed several to a row (`data.pack`). Your own data:
`--config.data.source='jsonl:data/*.jsonl'` with {"prompt", "completion"} or chat {"messages"}
lines. Without init_from it trains from scratch (a baseline, not fine-tuning).

Presets (`--experiment=sft:<preset>`):
  tiny    seconds; used by tests
  lora    LoRA rank 8 on every attention and MLP kernel; only the adapters train
  before  the pretrained model as it is (learning rate 0, one step): exact match before tuning

Measured with the commands above (textgen's default run: 1,000 steps, validation loss 1.709
nats/byte; 2 CPU cores shared with other jobs), exact match on 200 validation exchanges: before
0.0%; full fine-tuning (858,880 trainable) 46.0%, validation loss 0.579, 185 s wall / 120 s CPU;
LoRA rank 8 (73,728 trainable) 15.5%, loss 1.453, 191 s wall / 124 s CPU.
Packing cuts the padding of the training rows from 89.6% (one exchange per row) to 5.4%.
"""

import ml_collections

from bigmodel_jax import config as config_lib
from experiments import textgen

MODELS = textgen.MODELS  # the model is textgen's: init_from's parameters must fit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = textgen.get_config(None)  # textgen's default model: init_from's parameters must fit
  c.task = "sft"
  c.data.source = "pystrings"  # | jsonl:<glob> (data/instructions.py)
  c.data.validation_source = ""  # jsonl:<glob> of validation examples; "" -> val_percent held out
  c.data.end = "\n"  # written after each prompt/completion answer: where generation stops
  c.data.num_examples = 20000  # pystrings: generated training exchanges
  c.data.num_val_examples = 500  # pystrings: generated validation exchanges
  c.data.seed = 0  # pystrings: which exchanges (validation uses seed + 1)
  c.data.pack = True  # several examples per row with segment ids; False: one per row, padded
  c.data.eval_examples = 200  # validation examples scored by exact match (0: all)

  c.train.steps = 150
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 20
  c.train.weight_decay = 0.0
  c.train.log_every = 25
  c.train.eval_every = 50
  c.train.eval_batches = 0  # all validation rows
  c.checkpoint.every_steps = 50

  c.sample.prompt = ">>> 'hello'[::-1]\n"
  c.sample.max_new_tokens = 16
  c.sample.temperature = 0.0
  c.sample.num_samples = 1
  return config_lib.apply_preset(c, arg, PRESETS)


PRESETS = {
    "tiny": {
        "data.num_examples": 200,
        "data.num_val_examples": 20,
        "data.eval_examples": 8,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.embed_dim": 32,
        "model.block_size": 64,
        "train.steps": 4,
        "train.batch_size": 8,
        "train.warmup_steps": 1,
        "train.log_every": 2,
        "train.eval_every": 2,
        "checkpoint.every_steps": 2,
        "sample.max_new_tokens": 8,
        "sample.num_samples": 0,
    },
    "lora": {
        "model.lora.rank": 8,
        "train.learning_rate": 3e-3,
    },
    "before": {
        "train.steps": 1,
        "train.learning_rate": 0.0,
        "train.warmup_steps": 0,
    },
}
