"""The PyTorch reference that `python -m bigmodel_jax.bench --sections=torch` trains side by side.

A nanoGPT-style GPT (fused qkv projection, `F.scaled_dot_product_attention`, `torch.compile`)
of the same model and recipe as ours at a given config: learned positions, tied embedding,
pre-LayerNorm (eps model.norm_eps), tanh GELU, biases as model.use_bias, N(0, 0.02) weights with
the residual projections at 0.02 / sqrt(2 * num_layers), AdamW (train.b1, b2, weight_decay on the
matrices only, as train.no_decay's default leaves it), global-norm clipping at train.grad_clip,
our learning-rate schedule, and bfloat16 autocast when model.dtype or model.matmul_dtype is
bfloat16.

torch is a requirements-dev dependency: bench.py imports this module only when torch is
installed. `load_params` copies one of our GPT's parameter trees in, so tests can check that both
compute the same losses from the same weights.
"""

import math
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):

  def __init__(self, width: int, heads: int, hidden: int, bias: bool, eps: float):
    super().__init__()
    self.heads = heads
    self.ln_1 = nn.LayerNorm(width, eps=eps, bias=bias)
    self.qkv = nn.Linear(width, 3 * width, bias=bias)  # query, key, value stacked on the output
    self.attn_out = nn.Linear(width, width, bias=bias)
    self.ln_2 = nn.LayerNorm(width, eps=eps, bias=bias)
    self.fc = nn.Linear(width, hidden, bias=bias)
    self.proj = nn.Linear(hidden, width, bias=bias)

  def forward(self, x):  # x (B, T, C)
    B, T, C = x.shape
    q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
    q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
    x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, C))
    return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
  """tokens int64 (B, T) -> logits float32 (B, T, vocab)."""

  def __init__(self, model, vocab: int):
    """`model` is our GPT module (models/gpt.GPT): the shapes are read from it."""
    super().__init__()
    width, hidden = model.embed_dim, model.mlp_dim or 4 * model.embed_dim
    self.wte = nn.Embedding(vocab, width)
    self.wpe = nn.Embedding(model.block_size, width)
    self.h = nn.ModuleList(
        Block(width, model.num_heads, hidden, model.use_bias, model.norm_eps)
        for _ in range(model.num_layers)
    )
    self.ln_f = nn.LayerNorm(width, eps=model.norm_eps, bias=model.use_bias)
    residual_std = 0.02 / math.sqrt(2 * model.num_layers)
    for name, p in self.named_parameters():
      if name.endswith("bias"):
        nn.init.zeros_(p)
      elif p.ndim == 2:
        std = residual_std if name.endswith(("attn_out.weight", "proj.weight")) else 0.02
        nn.init.normal_(p, 0.0, std)

  def forward(self, tokens):
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    x = self.wte(tokens) + self.wpe(positions)
    for block in self.h:
      x = block(x)
    return F.linear(self.ln_f(x).float(), self.wte.weight.float())  # tied head, in float32


def supported(model) -> str | None:
  """Why the reference can't mirror `model` (None when it can)."""
  for field, want in (("positions", "learned"), ("norm", "layernorm"), ("mlp_type", "gelu")):
    if getattr(model, field) != want:
      return f"model.{field}={getattr(model, field)!r} (the reference has only {want!r})"
  if not model.tie_embeddings or (model.num_kv_heads or model.num_heads) != model.num_heads:
    return "untied heads or grouped-query attention (the reference has neither)"
  return None


class Trainer:
  """The reference model, its AdamW and one compiled train step on fixed batches."""

  def __init__(self, model, train, vocab: int, batch: dict, schedule=None, compile: bool = True):
    """model: our GPT module; train: config.train; batch: our {"inputs", "targets"} int arrays;
    schedule: step -> learning rate (ours); None keeps train.learning_rate."""
    torch.manual_seed(0)
    self.net = GPT(model, vocab)
    # Ours: bf16 compute (model.dtype) or bf16 matmul operands (model.matmul_dtype), f32 weights.
    dtypes = (model.dtype, model.matmul_dtype or model.dtype)
    self.autocast = "bfloat16" in [np.dtype(d).name for d in dtypes]
    # Decay the matrices but not the embeddings, norms and biases (train.no_decay's default).
    named = list(self.net.named_parameters())
    decays = lambda n, p: p.ndim == 2 and n not in ("wte.weight", "wpe.weight")  # noqa: E731
    decay = [p for n, p in named if decays(n, p)]
    rest = [p for n, p in named if not decays(n, p)]
    self.opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": train.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=train.learning_rate,
        betas=(train.b1, train.b2),
        eps=1e-8,  # optax.adamw's default
    )
    self.clip, self.schedule, self.step_count = train.grad_clip, schedule, 0
    self.forward = torch.compile(self.net) if compile else self.net
    self.set_batch(batch)

  def set_batch(self, batch: dict) -> None:
    self.inputs = torch.from_numpy(np.asarray(batch["inputs"], np.int64))
    self.targets = torch.from_numpy(np.asarray(batch["targets"], np.int64))

  def loss(self):
    with torch.autocast("cpu", torch.bfloat16, enabled=self.autocast):
      logits = self.forward(self.inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), self.targets.flatten())

  def step(self) -> float:
    """One update; returns the loss before it (a float: this syncs, as our bench's chunks do)."""
    if self.schedule is not None:
      for group in self.opt.param_groups:
        group["lr"] = float(self.schedule(self.step_count))
    loss = self.loss()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.clip > 0:
      nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
    self.opt.step()
    self.step_count += 1
    return loss.item()

  def load_params(self, params) -> None:
    """Copies our GPT's (unboxed) parameter tree in: Dense kernels (in, ...) -> Linear (out, in)."""

    def t(x):  # our array -> a torch tensor
      return torch.from_numpy(np.array(x, np.float32))

    sd = {"wte.weight": t(params["wte"]["embedding"]), "wpe.weight": t(params["wpe"]["embedding"])}
    for i in range(len(self.net.h)):
      p, b = params[f"h_{i}"], f"h.{i}."
      a, m = p["attn"], p["mlp"]
      width = a["query"]["kernel"].shape[0]
      qkv = [np.asarray(a[n]["kernel"]).reshape(width, -1) for n in ("query", "key", "value")]
      sd[b + "qkv.weight"] = t(np.concatenate(qkv, axis=1).T)
      sd[b + "attn_out.weight"] = t(np.asarray(a["out"]["kernel"]).reshape(width, width).T)
      sd[b + "fc.weight"] = t(np.asarray(m["fc"]["kernel"]).T)
      sd[b + "proj.weight"] = t(np.asarray(m["proj"]["kernel"]).T)
      for ln in ("ln_1", "ln_2"):
        sd[b + ln + ".weight"] = t(p[ln]["scale"])
        if "bias" in p[ln]:
          sd[b + ln + ".bias"] = t(p[ln]["bias"])
      if "bias" in a["query"]:
        biases = [np.asarray(a[n]["bias"]).reshape(-1) for n in ("query", "key", "value")]
        sd[b + "qkv.bias"] = t(np.concatenate(biases))
        sd[b + "attn_out.bias"] = t(a["out"]["bias"])
        sd[b + "fc.bias"], sd[b + "proj.bias"] = t(m["fc"]["bias"]), t(m["proj"]["bias"])
    sd["ln_f.weight"] = t(params["ln_f"]["scale"])
    if "bias" in params["ln_f"]:
      sd["ln_f.bias"] = t(params["ln_f"]["bias"])
    self.net.load_state_dict(sd, strict=True)


def param_count(trainer: Trainer) -> int:
  return sum(p.numel() for p in trainer.net.parameters())


def compare(ours, batch: dict, repeats: int, max_chunk: int, threads: int = 0) -> dict:
  """Tokens/s of `ours` (a bench.Trainable, not yet compiled) and of this reference of its model
  and config.train on the same host `batch`, timed in alternating chunks (ours, torch, ours, ...;
  one warm-up pair first) so that a shared machine's load changes hit both alike. A chunk is about
  half a second of our steps (at most `max_chunk`). `threads` > 0: torch.set_num_threads.
  ratio: the median over the pairs of our tokens/s over torch's."""
  if threads > 0:
    torch.set_num_threads(threads)
  reference = Trainer(ours.task.model, ours.config.train, ours.vocab, batch)
  start = time.perf_counter()
  reference.step()  # torch.compile traces and compiles here
  torch_compile_s = time.perf_counter() - start
  ours_compile_s = ours.compile_seconds()
  chunk = max(1, min(max_chunk, round(0.5 / ours.chunk_seconds(1))))
  ours_s, torch_s = [], []
  for i in range(repeats + 1):
    a = ours.chunk_seconds(chunk)
    start = time.perf_counter()
    for _ in range(chunk):
      reference.step()
    if i:  # the first pair is warm-up
      ours_s.append(a)
      torch_s.append((time.perf_counter() - start) / chunk)
  ratios = [t / o for o, t in zip(ours_s, torch_s)]
  tokens = ours.tokens_per_step
  return {
      "tokens_per_step": tokens,
      "chunk": chunk,
      "ours_tokens_per_s": tokens / statistics.median(ours_s),
      "torch_tokens_per_s": tokens / statistics.median(torch_s),
      "ratio": statistics.median(ratios),
      "ratio_min": min(ratios),
      "ratio_max": max(ratios),
      "torch_threads": torch.get_num_threads(),
      "ours_compile_s": ours_compile_s,
      "torch_compile_s": torch_compile_s,
  }
