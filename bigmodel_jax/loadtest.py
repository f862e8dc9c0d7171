"""Load test of a textgen server: `python -m bigmodel_jax.loadtest --url=http://127.0.0.1:8000`.

For each number of concurrent clients in --clients (1 is one-request-at-a-time serving), every
client sends streamed completions back to back for --duration seconds (requests started before
the end are finished) and the run reports, from the client's side:

  req/s      completed requests per second of the run
  tok/s      generated tokens per second (one server-sent chunk per token)
  latency    p50 / p95 / p99 of request start to the last chunk
  TTFT       p50 / p99 time to the first token
  x seq      tok/s as a multiple of the 1-client run's

Prompts differ in length (a few to ~half the budget) so the batch mixes lengths as real traffic
does. --out writes the rows as JSON.
"""

import asyncio
import json
import os
import time

from absl import app, flags
import httpx
import numpy as np

from bigmodel_jax.errors import UsageError

_URL = flags.DEFINE_string(
    "url", "http://127.0.0.1:8000", "The server (python run.py --mode=serve)."
)
_CLIENTS = flags.DEFINE_list("clients", ["1", "4", "16", "64"], "Concurrent clients per run.")
_DURATION = flags.DEFINE_float("duration", 20.0, "Seconds each run starts requests for.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 64, "Tokens each request generates.")
_MODEL = flags.DEFINE_string("model", "", "Model id; '' -> the first of GET /v1/models.")
_API_KEY = flags.DEFINE_string("api_key", "", "Bearer key ('' -> $BIGMODEL_API_KEY).")
_OUT = flags.DEFINE_string("out", "", "Also write the results here as JSON.")

PROMPTS = ("def ", "import os\n", "class Parser:\n    def __init__(self", "for i in range(")


async def _one(client, url, body, record):
  start, first, tokens = time.perf_counter(), None, 0
  async with client.stream("POST", url, json=body) as r:
    if r.status_code != 200:
      await r.aread()
      record["errors"] += 1
      return
    async for line in r.aiter_lines():
      if line.startswith("data: {"):
        chunk = json.loads(line[6:])
        if chunk["choices"][0]["finish_reason"] is None:
          tokens += 1
          first = first or time.perf_counter()
  end = time.perf_counter()
  record["latency"].append(end - start)
  record["ttft"].append((first or end) - start)
  record["tokens"] += tokens


async def run_clients(url, model, clients, duration, max_tokens, headers) -> dict:
  """One run: `clients` loops of back-to-back streamed completions for `duration` seconds."""
  record = {"latency": [], "ttft": [], "tokens": 0, "errors": 0}
  limits = httpx.Limits(max_connections=clients + 1)
  async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:
    start = time.perf_counter()

    async def loop(k):
      i = k
      while time.perf_counter() - start < duration:
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
                "temperature": 0.8, "seed": i, "stream": True}  # fmt: skip
        await _one(client, f"{url}/v1/completions", body, record)
        i += clients

    await asyncio.gather(*(loop(k) for k in range(clients)))
    seconds = time.perf_counter() - start
  ms = lambda xs, q: 1e3 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
  lat, ttft = record["latency"], record["ttft"]
  return {
      "clients": clients, "requests": len(lat), "errors": record["errors"], "seconds": seconds,
      "req_per_s": len(lat) / seconds, "tok_per_s": record["tokens"] / seconds,
      "p50_ms": ms(lat, 50), "p95_ms": ms(lat, 95), "p99_ms": ms(lat, 99),
      "ttft_p50_ms": ms(ttft, 50), "ttft_p99_ms": ms(ttft, 99),
  }  # fmt: skip


def table(rows: list[dict]) -> str:
  base = next((r["tok_per_s"] for r in rows if r["clients"] == 1), None)
  lines = [
      "| clients | requests | req/s | tok/s | p50 / p95 / p99 latency (ms) | TTFT p50 / p99 (ms) "
      "| x seq |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    ratio = f"{r['tok_per_s'] / base:.2f}" if base else "-"
    lines.append(
        f"| {r['clients']} | {r['requests']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | "
        f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f} | "
        f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {ratio} |"
    )
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  try:
    clients = [int(c) for c in _CLIENTS.value]
  except ValueError:
    raise UsageError(f"--clients={','.join(_CLIENTS.value)} must be integers") from None
  if any(c < 1 for c in clients) or _DURATION.value <= 0 or _MAX_TOKENS.value < 1:
    raise UsageError("--clients, --duration and --max_tokens must be positive")
  url = _URL.value.rstrip("/")
  key = _API_KEY.value or os.environ.get("BIGMODEL_API_KEY", "")
  headers = {"Authorization": f"Bearer {key}"} if key else {}
  try:
    models = httpx.get(f"{url}/v1/models", headers=headers).raise_for_status().json()
  except httpx.HTTPError as e:
    raise UsageError(f"--url={url}: no textgen server answers there ({e})") from None
  model = _MODEL.value or models["data"][0]["id"]
  rows = []
  for n in clients:
    rows.append(
        asyncio.run(run_clients(url, model, n, _DURATION.value, _MAX_TOKENS.value, headers))
    )
    print(table(rows).splitlines()[-1], flush=True)
  print(table(rows), flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(rows, f, indent=1)


def _entry(argv):
  try:
    main(argv)
  except UsageError as e:
    print(f"error: {e}")
    raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
  app.run(_entry)
