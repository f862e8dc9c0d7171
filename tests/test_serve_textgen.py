"""--mode=serve for textgen, driven by the official `openai` client and by httpx: completions
(plain, streamed, n=2, stop strings), chat, bad input, a client leaving mid-stream, 200
simultaneous connections, and SIGTERM draining. One trained workdir and one server for all."""

import asyncio
import json
import signal
import subprocess
import sys

import httpx
import openai
import pytest

from bigmodel_jax import trainer
from bigmodel_jax.data import chat
from tests.helpers import tiny_config
from tests.serve_helpers import REPO, Server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT, SLOTS = 64, 8
SHAPE = {"model__block_size": CONTEXT}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("serve")
  data, workdir = str(root / "tfds"), str(root / "run")
  steps = dict(train__steps=4, train__eval_every=4, checkpoint__every_steps=4, **SHAPE)
  trainer.run(tiny_config(data, **steps), workdir)
  return data, workdir, root


@pytest.fixture(scope="module")
def server(trained):
  data, workdir, root = trained
  args = [
      "--experiment=textgen:tiny", f"--workdir={workdir}", f"--config.data.tfds_data_dir={data}",
      f"--config.model.block_size={CONTEXT}", f"--config.serve.max_batch={SLOTS}",
      "--config.compile_cache_dir=",
  ]  # fmt: skip
  s = Server(args, root / "server.log", env={"BIGMODEL_API_KEY": KEY})
  try:
    s.compiled = s.metric("bigmodel_compilations", AUTH)
    yield s
  finally:
    s.stop()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_models_lists_the_served_model(client):
  assert [m.id for m in client.models.list()] == ["textgen"]


def test_greedy_completion_is_what_sample_mode_writes_and_streams_one_chunk_per_token(
    client, trained
):
  got = client.completions.create(model="textgen", prompt="def ", max_tokens=8, temperature=0)
  text = got.choices[0].text
  assert got.choices[0].finish_reason == "length"
  assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (4, 8)
  # --mode=sample (generate.generate, one sequence with its own cache) is the reference.
  data, workdir, _ = trained
  config = tiny_config(data, **SHAPE, sample__temperature=0.0, sample__num_samples=1,
                       sample__max_new_tokens=8, sample__prompt="def ")  # fmt: skip
  assert trainer.run(config, workdir, "sample") == ["def " + text]

  chunks = list(
      client.completions.create(
          model="textgen", prompt="def ", max_tokens=8, temperature=0, stream=True
      )
  )
  assert [c.choices[0].finish_reason for c in chunks] == [None] * 8 + ["length"]
  assert "".join(c.choices[0].text for c in chunks) == text


def test_n_2_gives_two_seeded_choices(client):
  ask = dict(model="textgen", prompt="import ", max_tokens=6, n=2, seed=11, temperature=1.0)
  first, again = client.completions.create(**ask), client.completions.create(**ask)
  assert [c.index for c in first.choices] == [0, 1]
  assert [c.text for c in first.choices] == [c.text for c in again.choices]
  assert first.usage.completion_tokens == 12


def test_a_stop_string_ends_the_completion_before_it(client):
  ask = dict(model="textgen", prompt="class ", max_tokens=12, temperature=0)
  text = client.completions.create(**ask).choices[0].text
  stop = text[5:7]
  got = client.completions.create(**ask, stop=[stop]).choices[0]
  assert (got.text, got.finish_reason) == (text[: text.find(stop)], "stop")


def test_chat_completion_renders_the_chat_template(client):
  messages = [{"role": "user", "content": "hi"}]
  got = client.chat.completions.create(
      model="textgen", messages=messages, max_tokens=5, temperature=0
  )
  assert got.choices[0].message.role == "assistant"
  assert isinstance(got.choices[0].message.content, str)
  assert got.usage.prompt_tokens == len(chat.prompt(messages).encode())


BAD = {
    "malformed JSON": ('{"model": "textgen", "prompt": ', 400),
    "wrong type": ({"model": "textgen", "prompt": "x", "max_tokens": "many"}, 400),
    "missing prompt": ({"model": "textgen"}, 400),
    "prompt over the context": ({"model": "textgen", "prompt": "x" * CONTEXT}, 400),
    "max_tokens 10^9": ({"model": "textgen", "prompt": "x", "max_tokens": 10**9}, 400),
    "n of 0": ({"model": "textgen", "prompt": "x", "n": 0}, 400),
    "negative temperature": ({"model": "textgen", "prompt": "x", "temperature": -1}, 400),
    "unknown model": ({"model": "gpt-4", "prompt": "x"}, 404),
    "20 MB body": ({"model": "textgen", "prompt": "x" * 20_000_000}, 413),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_get_a_json_error_and_the_server_stays_up(server, case):
  body, status = BAD[case]
  content = body if isinstance(body, str) else json.dumps(body)
  headers = {**AUTH, "Content-Type": "application/json"}
  r = httpx.post(f"{server.url}/v1/completions", content=content, headers=headers, timeout=60)
  assert r.status_code == status, r.text
  assert r.json()["error"]["message"]


def test_a_missing_or_wrong_api_key_is_401(server):
  body = {"model": "textgen", "prompt": "x", "max_tokens": 1}
  for headers in ({}, {"Authorization": "Bearer nope"}):
    r = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
  assert httpx.get(f"{server.url}/health").status_code == 200  # no key needed to probe


def _wait_for_free_slots(server):
  for _ in range(100):
    if server.metric("bigmodel_free_kv_slots", AUTH) == SLOTS:
      return True
    asyncio.run(asyncio.sleep(0.1))
  return False


def test_a_client_leaving_mid_stream_frees_its_slot(server):
  body = {"model": "textgen", "prompt": "x", "max_tokens": CONTEXT - 1, "stream": True}
  with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH) as r:
    assert r.status_code == 200
    next(r.iter_lines())  # one token arrived; then the client goes away
  assert _wait_for_free_slots(server)


def test_200_simultaneous_connections_then_no_slot_leaks_and_no_new_compiles(server):
  async def burst():
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=AUTH) as c:
      body = {"model": "textgen", "prompt": "def f", "max_tokens": 4}
      return await asyncio.gather(
          *(c.post(f"{server.url}/v1/completions", json=body) for _ in range(200))
      )

  statuses = [r.status_code for r in asyncio.run(burst())]
  assert set(statuses) <= {200, 429} and statuses.count(200) > 0
  assert _wait_for_free_slots(server)
  assert server.metric("bigmodel_queue_depth", AUTH) == 0
  assert server.metric("bigmodel_compilations", AUTH) == server.compiled
  r = httpx.post(f"{server.url}/v1/completions", json={"model": "textgen", "prompt": "x"},
                 headers=AUTH)  # fmt: skip
  assert r.status_code == 200


def test_the_export_bundle_reproduces_the_live_server_without_model_code(trained, client):
  data, workdir, root = trained
  out = root / "bundle"
  trainer.run(tiny_config(data, **SHAPE, serve__export_dir=str(out)), workdir, "export")
  golden = json.loads((out / "golden.json").read_text())
  # The golden outputs are the live model's: the server gives the same greedy text.
  g = golden[0]
  live = client.completions.create(
      model="textgen", prompt=g["prompt"], max_tokens=g["max_tokens"], temperature=0
  )
  assert live.choices[0].text == bytes(g["tokens"]).decode("utf-8", errors="replace")
  check = subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.serve_bundle", str(out), "--check"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert check.returncode == 0, check.stdout + check.stderr[-2000:]
  assert "model/experiment modules imported: none" in check.stdout
  assert check.stdout.count("ok  ") == len(golden)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(server):  # last: stops the server
  body = {"model": "textgen", "prompt": "x", "max_tokens": CONTEXT - 1, "stream": True}
  with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH) as r:
    lines = r.iter_lines()
    next(lines)
    server.proc.send_signal(signal.SIGTERM)
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
  assert events[-1]["choices"][0]["finish_reason"] == "length"
  assert len(events) == CONTEXT - 1  # the first token came before SIGTERM; the final chunk
  assert server.proc.wait(60) == 0
  with pytest.raises(httpx.ConnectError):
    httpx.get(f"{server.url}/health")
