"""Serving a GPT (task lm): OpenAI-compatible completions and chat completions.

  POST /v1/completions       prompt (a string, strings, or token ids), max_tokens, temperature,
                             top_p, n, stop, seed, stream (server-sent events, one per token)
  POST /v1/chat/completions  messages, rendered by data/chat.py with the tokenizer's
                             chat_template or the default ChatML one (whose end marker stops)
  GET  /v1/models            the one model served

Requests become `engine.Request`s (one per choice); tokens come back on the engine's thread and
are handed to the request's event loop. Text is decoded from all tokens so far, so a UTF-8
character split over byte tokens comes out whole; text that could be the start of a stop
string is held back until it is not.
"""

import asyncio
import json
import secrets
import time
import uuid

from fastapi import responses
import numpy as np
import pydantic

from bigmodel_jax.data import chat
from bigmodel_jax.errors import UsageError
from bigmodel_jax.serve import app as app_lib
from bigmodel_jax.serve import engine as engine_lib

MAX_STOPS = 4  # as OpenAI's API
SEED_RANGE = 2**32


class _Body(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore", strict=True)
  model: str
  max_tokens: int | None = None
  temperature: float | None = None
  top_p: float | None = None
  n: int | None = None
  stop: str | list[str] | None = None
  seed: int | None = None
  stream: bool | None = None


class CompletionBody(_Body):
  prompt: str | list[str] | list[int]


class ChatBody(_Body):
  messages: list[dict]
  max_completion_tokens: int | None = None


class _Choice:
  """One choice's tokens and the text already sent."""

  def __init__(self, index, tokenizer, stops):
    self.index, self.tokenizer, self.stops = index, tokenizer, stops
    self.ids, self.text, self.sent, self.reason = [], "", "", None
    self.request = None

  def add(self, token: int) -> str:
    """The text this token makes safe to send ('' while held back); may finish the choice."""
    self.ids.append(token)
    self.text = self.tokenizer.decode(self.ids)
    cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
    if cut >= 0:
      self.text, self.reason = self.text[:cut], "stop"
      self.request.cancel()
      return self._flush()
    safe = self.text.rstrip("\ufffd")  # a character whose bytes have not all come yet
    hold = max((k for s in self.stops for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
    return self._flush(safe[: len(safe) - hold])

  def finish(self, reason: str) -> str:
    self.reason = self.reason or reason
    return self._flush()

  def _flush(self, upto=None) -> str:
    upto = self.text if upto is None else upto
    delta, self.sent = upto[len(self.sent) :], upto
    return delta


class TextgenService(app_lib.Service):

  def __init__(self, programs, params, tokenizer, serve_config, name: str):
    self.name, self.tokenizer = name, tokenizer
    self.engine = engine_lib.Engine(
        programs, params, tokenizer.vocab_size, serve_config.max_batch, serve_config.max_queue
    )
    self.context = programs.context
    self.template = getattr(tokenizer, "chat_template", None)
    self.metrics = None

  def warm_up(self):
    self.engine.warm_up()
    self.engine.start()

  def close(self):
    self.engine.stop()

  def routes(self, app, metrics):
    self.metrics = metrics
    e = self.engine
    metrics.watch(lambda: len(e.waiting), lambda: e.free_slots, lambda: e.compiles)
    e.on_step = metrics.batch.observe

    @app.get("/v1/models")
    async def models():
      card = {"id": self.name, "object": "model", "created": 0, "owned_by": "bigmodel_jax"}
      return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
      prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
      if prompts and all(isinstance(p, int) for p in prompts):
        prompts = [prompts]  # one prompt as token ids
      if not prompts:
        raise app_lib.ApiError(400, "prompt is empty", "invalid_prompt", "prompt")
      ids = [self._encode(p) for p in prompts]
      return await self._respond(body, ids, body.max_tokens or 16, [], "text_completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
      try:
        text = chat.prompt(body.messages, self.template)
      except UsageError as e:
        raise app_lib.ApiError(400, str(e), "invalid_messages", "messages") from None
      ids = [self._encode(text)]
      stops = [] if self.template else [chat.DEFAULT_END]
      limit = body.max_completion_tokens or body.max_tokens or (self.context - len(ids[0]))
      return await self._respond(body, ids, limit, stops, "chat.completion")

  # --- requests ------------------------------------------------------------------------------

  def _encode(self, prompt) -> list[int]:
    if isinstance(prompt, str):
      ids = [int(i) for i in self.tokenizer.encode(prompt)]
    else:
      ids = list(prompt)
      if any(not 0 <= i < self.tokenizer.vocab_size for i in ids):
        raise app_lib.ApiError(
            400, f"prompt token ids must be in [0, {self.tokenizer.vocab_size})", "invalid_prompt"
        )
    if not ids:
      raise app_lib.ApiError(400, "prompt is empty", "invalid_prompt", "prompt")
    if len(ids) >= self.context:
      raise app_lib.ApiError(
          400,
          f"the prompt is {len(ids)} tokens; this model's context is {self.context} tokens, "
          "including the completion",
          "context_length_exceeded",
          "prompt",
      )
    return ids

  def _check(self, body, ids, max_tokens, stops):
    n = 1 if body.n is None else body.n
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    most = self.engine.max_batch
    problems = [
        (not 1 <= n <= most, "n", f"n={n} must be in [1, {most}] (serve.max_batch)"),
        (not 0 <= temperature <= 2, "temperature", f"temperature={temperature} must be in [0, 2]"),
        (not 0 < top_p <= 1, "top_p", f"top_p={top_p} must be in (0, 1]"),
        (len(stop) > MAX_STOPS or "" in stop, "stop", f"stop: <= {MAX_STOPS} non-empty strings"),
        (body.seed is not None and not 0 <= body.seed < SEED_RANGE, "seed",
         f"seed={body.seed} must be in [0, {SEED_RANGE})"),
    ]  # fmt: skip
    longest = max(len(i) for i in ids)
    if max_tokens < 1 or longest + max_tokens > self.context:
      problems.append((
          True, "max_tokens",
          f"max_tokens={max_tokens} with a {longest}-token prompt does not fit the context of "
          f"{self.context} tokens; use 1 <= max_tokens <= {self.context - longest}",
      ))  # fmt: skip
    for bad, param, message in problems:
      if bad:
        code = "context_length_exceeded" if param == "max_tokens" else "invalid_value"
        raise app_lib.ApiError(400, message, code, param)
    if not self.ready:
      raise app_lib.ApiError(503, "the model is still warming up; see /health", "not_ready")
    seed = secrets.randbelow(SEED_RANGE) if body.seed is None else body.seed
    return n, temperature, top_p, stop + stops, seed

  async def _respond(self, body, ids, max_tokens, stops, kind):
    if body.model != self.name:
      raise app_lib.ApiError(
          404, f"model {body.model!r} is not served here; GET /v1/models lists {self.name!r}",
          "model_not_found", "model",
      )  # fmt: skip
    n, temperature, top_p, stops, seed = self._check(body, ids, max_tokens, stops)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    choices, submitted = [], time.perf_counter()
    try:
      for p, prompt in enumerate(ids):
        for j in range(n):
          c = _Choice(len(choices), self.tokenizer, stops)

          def put(*event, i=c.index):  # from the engine's thread to this request's loop
            loop.call_soon_threadsafe(events.put_nowait, (i, *event))

          c.request = engine_lib.Request(
              prompt=np.asarray(prompt, np.int32), max_tokens=max_tokens,
              temperature=temperature, top_p=top_p, seed=seed, sample_index=p * n + j,
              on_token=lambda t, put=put: put("token", t),
              on_done=lambda r, put=put: put("done", r),
          )  # fmt: skip
          choices.append(c)
          self.engine.submit(c.request)
    except engine_lib.QueueFull:
      for c in choices:
        c.request.cancel()
      message = "too many requests are waiting; retry later"
      raise app_lib.ApiError(429, message, "overloaded") from None
    stream = _stream(self, choices, events, submitted)
    meta = {"id": f"{'chatcmpl' if kind[0] == 'c' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()), "model": self.name}  # fmt: skip
    chat_mode = kind == "chat.completion"
    if body.stream:
      return responses.StreamingResponse(
          _sse(stream, meta, kind, chat_mode, choices), media_type="text/event-stream"
      )
    async for _ in stream:
      pass
    if any(c.reason == "error" for c in choices):
      raise app_lib.ApiError(500, "generation failed; see the server log", "server_error")
    out = []
    for c in choices:
      item = {"index": c.index, "finish_reason": c.reason}
      if chat_mode:
        item["message"] = {"role": "assistant", "content": c.text}
      else:
        item.update(text=c.text, logprobs=None)
      out.append(item)
    prompt_tokens = sum(len(i) for i in ids)
    completion_tokens = sum(len(c.ids) for c in choices)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
    return {**meta, "object": kind, "choices": out, "usage": usage}


async def _stream(service, choices, events, submitted):
  """(choice, text delta, finish_reason or None) as tokens arrive; cancels what is left when
  the consumer stops early (a client that disconnected)."""
  pending = set(range(len(choices)))
  try:
    while pending:
      index, what, value = await events.get()
      if index not in pending:
        continue  # ended by a stop string; the engine frees its slot at the next step
      c = choices[index]
      if what == "token":
        service.metrics.tokens.inc()
        if len(c.ids) == 0:
          service.metrics.ttft.observe(time.perf_counter() - submitted)
        delta = c.add(value)
        if c.reason is None:
          yield c, delta, None
          continue
      else:
        delta = c.finish(value)  # length | error | cancelled (the server is stopping)
      pending.discard(index)
      yield c, delta, c.reason
  finally:
    for c in choices:
      c.request.cancel()


async def _sse(stream, meta, kind, chat_mode, choices):
  """Server-sent events in OpenAI's chunk format, then [DONE]."""
  obj = "chat.completion.chunk" if chat_mode else kind
  async for c, delta, reason in stream:
    if chat_mode:
      piece = {"index": c.index, "delta": {"role": "assistant", "content": delta}}
    else:
      piece = {"index": c.index, "text": delta, "logprobs": None}
    piece["finish_reason"] = reason
    yield f"data: {json.dumps({**meta, 'object': obj, 'choices': [piece]})}\n\n"
  del choices
  yield "data: [DONE]\n\n"


def make_service(task, variables, config) -> TextgenService:
  """The registry's hook (serve/__init__.py): a restored lm task -> its service."""
  name = config.experiment.split(":")[0]
  programs = engine_lib.gpt_programs(task.model)
  return TextgenService(programs, variables["params"], task.tokenizer, config.serve, name)
