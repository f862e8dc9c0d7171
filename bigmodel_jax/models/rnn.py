"""A recurrent text classifier: embeddings -> stacked LSTM or GRU layers -> final state -> head.

Input: int32 tokens (B, T) where 0 is padding, padding only at the end (as for text_encoder).
Output: float32 logits (B, num_classes).

Each layer is flax's `nn.RNN` over `nn.OptimizedLSTMCell` or `nn.GRUCell` (`model.cell`), or, with
`model.bidirectional`, an `nn.Bidirectional` pair whose outputs are concatenated. Every RNN is given
the real lengths (`seq_lengths`), so the final state is the state after each sequence's last real
token (not after the padding), and the backward direction starts at that token. The classifier
reads the last layer's final hidden state (both directions' when bidirectional).

Parameter tree:

  embed/embedding                                  (vocab, embed)  vocab: a multiple of 64
  layer_{i}/cell/...                               unidirectional
  layer_{i}/{forward_rnn,backward_rnn}/cell/...     bidirectional
      LSTM: i{i,f,g,o}/kernel (in, hidden); h{i,f,g,o}/kernel (hidden, hidden), bias (hidden,)
      GRU:  i{r,z,n}/kernel (in, hidden), bias (hidden,); h{r,z,n}/kernel (hidden, hidden),
            hn/bias (hidden,)
  head/kernel                                      (2 x hidden if bidirectional, classes)
"""

from typing import Any

from flax import linen as nn
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.errors import UsageError
from bigmodel_jax.models.layers import dropout_and_dtypes, positive_int, shared_config
from bigmodel_jax.models.text_encoder import padded_vocab

CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


def _partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


class RNNClassifier(nn.Module):
  """tokens int32 (B, T), 0 = padding -> logits float32 (B, num_classes)."""

  # Set by `make` from config.model (default_config says what each is), dtypes as jnp types.
  vocab_size: int  # including the padding id 0
  num_classes: int
  cell: str  # "lstm" | "gru"
  num_layers: int
  embed_dim: int
  hidden_dim: int
  bidirectional: bool
  dropout: float
  dtype: Any
  param_dtype: Any

  def _cell(self):
    return CELLS[self.cell](
        self.hidden_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", "mlp")),
        recurrent_kernel_init=_partitioned(nn.initializers.orthogonal(), (None, "mlp")),
        bias_init=_partitioned(nn.initializers.zeros_init(), ("mlp",)),
        parent=None,
    )

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    # An empty text reads the state after one padding token, whatever the padded length.
    lengths = jnp.maximum((tokens > 0).sum(-1), 1).astype(jnp.int32)  # (B,)
    x = nn.Embed(
        self.vocab_size,
        self.embed_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        embedding_init=_partitioned(nn.initializers.normal(0.1), ("vocab", "embed")),
        name="embed",
    )(
        tokens
    )  # (B, T, E)
    for i in range(self.num_layers):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      if self.bidirectional:
        layer = nn.Bidirectional(
            nn.RNN(self._cell(), parent=None), nn.RNN(self._cell(), parent=None), name=f"layer_{i}"
        )
      else:
        layer = nn.RNN(self._cell(), name=f"layer_{i}")
      carry, x = layer(x, seq_lengths=lengths, return_carry=True)  # x (B, T, H or 2H)
    carries = carry if self.bidirectional else (carry,)
    # An LSTM's carry is (c, h); a GRU's is h.
    final = jnp.concatenate([c[1] if self.cell == "lstm" else c for c in carries], -1)
    final = nn.Dropout(self.dropout, deterministic=not train)(final)  # (B, H or 2H)
    logits = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", None)),
        bias_init=_partitioned(nn.initializers.zeros_init(), (None,)),
        name="head",
    )(final)
    return logits.astype(jnp.float32)  # (B, num_classes)


def default_config() -> ml_collections.ConfigDict:
  """config.model's fields for an RNNClassifier and their defaults (max_len is the task's)."""
  c = shared_config("max_len", "dropout", "dtype", "param_dtype")
  # Recurrent cell: lstm | gru.
  c.cell = "lstm"
  # Stacked RNN layers: > 0.
  c.num_layers = 1
  # Width of the token embedding: > 0.
  c.embed_dim = 64
  # State width of each cell (per direction): > 0.
  c.hidden_dim = 128
  # A backward RNN beside each forward one, outputs concatenated: True | False.
  c.bidirectional = True
  return c


def make(cfg, vocab_size: int, num_classes: int) -> RNNClassifier:
  """Builds an RNNClassifier from `config.model` (cell, num_layers, embed_dim, hidden_dim,
  bidirectional, dropout, dtype, param_dtype); vocab_size counts the padding id 0 (the table is
  padded as text_encoder's)."""
  cell = cfg.cell
  if cell not in CELLS:
    raise UsageError(f"model.cell={cell!r} is unknown; valid: {', '.join(CELLS)}")
  ints = {k: positive_int(cfg, k) for k in ("num_layers", "embed_dim", "hidden_dim")}
  return RNNClassifier(
      vocab_size=padded_vocab(vocab_size, num_classes),
      num_classes=num_classes,
      cell=cell,
      bidirectional=bool(cfg.bidirectional),
      **ints,
      **dropout_and_dtypes(cfg),
  )
