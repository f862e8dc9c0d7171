"""translate: an encoder-decoder Transformer, trained with teacher forcing, decoded by beam search.

  python run.py --experiment=translate                 # CPU, ~70 s on 2 cores (69 s last run)
  python run.py --experiment=translate --mode=eval     # loss, accuracy; test BLEU, exact match
  python run.py --experiment=translate --mode=translate --config.decode.input="Mar 3, '21"
  python run.py --experiment=translate --mode=translate --config.decode.input=new.csv
  python run.py --experiment=translate --config.data.pack=true   # several pairs per training row

Offline default: dates written 23 ways ("3rd of March 2021", "Mar 3, '21", "03/03/2021",
"Wednesday, March 3, 2021", "2021.03.03", ...) -> ISO 8601 "2021-03-03", byte-level
(bigmodel_jax/data/dates.py lists the forms and their conventions). Expect a test exact match
of about 99.7% and BLEU about 99.9 after the default preset (1200 steps, a 2+2 x 64 Transformer),
and a showcase of source / reference / hypothesis triples, with a few of the mistakes.
Validation reports teacher-forced loss, token and sequence accuracy; the final eval decodes up to
decode.eval_examples test sources with beam search (beam 4, length penalty 0.6).

Packing (data.pack=true): training rows of 64 + 48 tokens hold 3.77 pairs (padding 43.1% ->
15.6%). Default run, shared 2-core machine: validation loss at steps 400 / 1200 0.0136 / 0.0003
packed against 0.0560 / 0.0014 unpacked, test exact match 100% against 99.7%, but 786 s against
344 s wall and 396 against 438 pairs/s; so unpacked by default (README: "Sequence packing").

Your own pairs: data.source=csv:<glob>, tsv:<glob> or jsonl:<glob>, columns data.source_column and
data.target_column (names, keys, or 0-based positions with data.header=false). Held out:
data.validation_source, or data.val_percent% of the rows by a hash of the source text; the held-out
rows are halved into validation and test (both all of them if they cannot be halved).
--mode=translate with decode.input naming .csv/.tsv/.jsonl files translates every row's source
column into decode.output (default <workdir>/translations.csv): the row, then `translation`,
streamed in batches of decode.batch_size.

Presets (`--experiment=translate:<preset>`):
  tiny          a few seconds; used by tests
  ted_pt_en     tfds:ted_hrlr_translate/pt_to_en (Portuguese -> English TED talks), shared 8k BPE,
                a 6+6 x 512 Transformer (Vaswani base); prepare the data first with
                `tfds build ted_hrlr_translate/pt_to_en --file_format=array_record`; GPU/TPU
  opus_medical  tfds:opus/medical (EMEA, German -> English), same model; GPU/TPU
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import models

# model.name can be any of these; config.model starts from their defaults (models/<name>.py).
MODELS = ("seq2seq",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base_config(task="translate")

  c.data = ml_collections.ConfigDict()
  c.data.source = "dates"  # | tfds:<name> with a Translation feature | csv:/tsv:/jsonl:<glob>
  c.data.tfds_data_dir = ""
  c.data.source_lang = ""  # tfds: the source language; "" -> the dataset's supervised source
  c.data.target_lang = ""
  c.data.train_examples = 30000  # dates: how many to generate; tfds: a cap (0 = whole split)
  c.data.eval_examples = 1000  # dates: validation and test sizes; tfds: a cap (0 = all)
  c.data.holdout_percent = 1  # tfds without validation/test splits: % of train held out for each
  # csv/tsv/jsonl (and decode.input files): the columns by name, or by 0-based position when
  # data.header=false (JSON lines: keys).
  c.data.source_column = "source"
  c.data.target_column = "target"
  c.data.header = True  # csv/tsv: the first row names the columns
  c.data.validation_source = ""  # csv/tsv/jsonl: held-out rows (halved into validation, test)
  c.data.val_percent = 10  # ... else this % of rows, by a hash of the source text, is held out
  c.data.seed = 0  # dates: train seed (validation seed + 1, test seed + 2)
  c.data.tokenizer = "byte"  # | sentencepiece (trained on the training split, saved in workdir)
  c.data.vocab_size = 8000  # sentencepiece only
  c.data.spm_model_type = "bpe"  # | unigram
  c.data.shared_vocab = True  # one tokenizer and embedding table for both sides
  c.data.max_source_len = 32  # tokens, EOS included
  c.data.max_target_len = 12
  # Training rows hold several pairs each (segment ids keep them apart; validation, BLEU and
  # decoding stay one pair per row), sources in rows of packed_source_len tokens and their
  # targets in rows of packed_target_len (0 = data.max_source_len / max_target_len).
  c.data.pack = False
  c.data.packed_source_len = 64  # dates: ~4 sources of 14 tokens (EOS included) on average
  c.data.packed_target_len = 48  # dates: 4 targets of 11 tokens

  c.model = models.default_config(*MODELS)
  c.model.vocab_multiple = 8  # pad embedding tables (259 byte ids + specials -> 264)

  c.train.steps = 1200
  c.train.batch_size = 64
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.01
  c.train.label_smoothing = 0.0
  c.train.eval_every = 400
  c.train.log_every = 100
  c.checkpoint.every_steps = 400

  c.decode = ml_collections.ConfigDict()
  c.decode.beam_size = 4  # 1 = greedy
  c.decode.length_penalty = 0.6  # GNMT alpha; 0 = plain log-probability
  c.decode.max_len = 12  # tokens per hypothesis, EOS included
  c.decode.eval_examples = 1000  # test examples decoded at the final eval (0 = all)
  c.decode.batch_size = 250
  c.decode.show = 5  # showcase triples (plus up to 3 mistakes)
  # --mode=translate: a text to translate ("" -> test sources), or .csv/.tsv/.jsonl file(s) (or
  # csv:/tsv:/jsonl:<glob>) whose every row's data.source_column is translated into decode.output
  c.decode.input = ""
  c.decode.output = ""  # "" -> <workdir>/translations.csv; a name ending .jsonl writes JSON lines
  # An input longer than data.max_source_len tokens: warn (translate its first tokens and say so
  # on stderr) | error (refuse it: a translation of part of a text reads as a whole one).
  c.decode.on_long_input = "warn"
  return config_lib.apply_preset(c, arg, PRESETS)


_BASE = {
    "data.tokenizer": "sentencepiece",
    "data.vocab_size": 8000,
    "data.train_examples": 0,
    "data.eval_examples": 0,
    "data.max_source_len": 128,
    "data.max_target_len": 128,
    "data.packed_source_len": 0,
    "data.packed_target_len": 0,
    "model.num_encoder_layers": 6,
    "model.num_decoder_layers": 6,
    "model.num_heads": 8,
    "model.embed_dim": 512,
    "model.mlp_dim": 2048,
    "model.dropout": 0.1,
    "train.label_smoothing": 0.1,
    "train.steps": 30000,
    "train.batch_size": 128,
    "train.learning_rate": 7e-4,
    "train.warmup_steps": 4000,
    "train.b2": 0.98,
    "train.eval_every": 2000,
    "train.log_every": 200,
    "checkpoint.every_steps": 2000,
    "checkpoint.best_metric": "loss",
    "decode.max_len": 128,
    "decode.eval_examples": 0,
    "decode.batch_size": 64,
}

PRESETS = {
    "tiny": {
        "data.train_examples": 512,
        "data.eval_examples": 32,
        "model.num_encoder_layers": 1,
        "model.num_decoder_layers": 1,
        "model.num_heads": 2,
        "model.embed_dim": 32,
        "train.steps": 40,
        "train.batch_size": 16,
        "train.warmup_steps": 5,
        "train.log_every": 10,
        "train.eval_every": 20,
        "checkpoint.every_steps": 20,
        "decode.beam_size": 2,
        "decode.eval_examples": 16,
        "decode.batch_size": 16,
        "decode.show": 2,
    },
    "ted_pt_en": {"data.source": "tfds:ted_hrlr_translate/pt_to_en", **_BASE},
    "opus_medical": {
        "data.source": "tfds:opus/medical",
        "data.source_lang": "de",
        "data.target_lang": "en",
        **_BASE,
    },
}
