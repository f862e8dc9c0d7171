"""The HTTP server every experiment's service runs in (FastAPI + uvicorn).

What is common to every service lives here: API-key check (constant time), request-body limit,
one log line and the metrics per request, errors as OpenAI-style JSON
({"error": {"message", "type", "code"}}), GET /health (503 until the service's warm-up has
compiled everything) and GET /metrics; and `serve`, which runs uvicorn and, on SIGTERM, stops
accepting, lets in-flight requests finish within serve.drain_s, and returns (exit 0).
"""

import asyncio
import contextlib
import hmac
import json
import os
import signal
import threading
import time

from absl import logging
import fastapi
from fastapi import exceptions, responses
import starlette.exceptions
import uvicorn

from bigmodel_jax.serve import metrics as metrics_lib

API_KEY_ENV = "BIGMODEL_API_KEY"
OPEN_PATHS = ("/health",)  # load balancers probe it without a key


class ApiError(Exception):
  """A request the server refuses: becomes {"error": {...}} with this status."""

  def __init__(self, status: int, message: str, code: str = "invalid_request", param=None):
    super().__init__(message)
    self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: str, param=None) -> dict:
  kind = "invalid_request_error" if status < 500 else "server_error"
  return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Service:
  """What a task serves. Subclasses add their routes; `warm_up` compiles everything."""

  name = "model"  # the model id clients name (GET /v1/models)
  ready = False

  def routes(self, app: fastapi.FastAPI, metrics: metrics_lib.Metrics) -> None:
    raise NotImplementedError

  def warm_up(self) -> None:
    """Compiles every program requests will run; /health turns ready after it."""

  def close(self) -> None:
    """Stops background work after the server has drained."""


def make_app(service: Service, serve_config) -> fastapi.FastAPI:
  metrics = metrics_lib.Metrics()

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    # Warm-up compiles in the background: the port answers (/health says 503) meanwhile.
    warm = threading.Thread(target=_warm_up, args=(service,), name="warm-up", daemon=True)
    warm.start()
    yield
    await asyncio.to_thread(warm.join)
    service.close()

  app = fastapi.FastAPI(title=f"bigmodel_jax: {service.name}", lifespan=lifespan)

  @app.exception_handler(ApiError)
  async def api_error(request, e: ApiError):
    del request
    return responses.JSONResponse(error_body(e.status, e.message, e.code, e.param), e.status)

  @app.exception_handler(starlette.exceptions.HTTPException)
  async def http_error(request, e):  # unknown paths, wrong methods: JSON like every other error
    del request
    body = error_body(e.status_code, str(e.detail), "http_error")
    return responses.JSONResponse(body, e.status_code)

  @app.exception_handler(exceptions.RequestValidationError)
  async def invalid(request, e):
    del request
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "json_invalid":
      message = f"the body is not valid JSON ({first.get('msg', '')})"
    else:
      message = f"{where or 'body'}: {first.get('msg', 'invalid')}"
    return responses.JSONResponse(error_body(400, message, "invalid_body", where or None), 400)

  @app.get("/health")
  async def health():
    if not service.ready:
      return responses.JSONResponse({"status": "warming up"}, 503)
    return {"status": "ok"}

  @app.get("/metrics")
  async def get_metrics():
    return responses.Response(metrics.text(), media_type=metrics_lib.CONTENT_TYPE)

  service.routes(app, metrics)
  known = {route.path for route in app.routes}
  key = serve_config.api_key or os.environ.get(API_KEY_ENV, "")
  limit = int(serve_config.max_body_mb * 2**20)
  return Guard(app, key, limit, metrics, known)


def _warm_up(service: Service) -> None:
  start = time.perf_counter()
  service.warm_up()
  service.ready = True
  logging.info("warm-up done in %.1f s; ready", time.perf_counter() - start)


class _TooLarge(Exception):
  pass


class Guard:
  """ASGI middleware around the app: key check, body limit, per-request log line and metrics.
  (Plain ASGI rather than BaseHTTPMiddleware, so a client leaving mid-stream still cancels the
  streaming handler.)"""

  def __init__(self, app, key: str, limit: int, metrics, known_paths):
    self.app, self.key, self.limit, self.metrics = app, key.encode(), limit, metrics
    self.known = known_paths

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start, status = time.perf_counter(), [0]
    path = scope["path"] if scope["path"] in self.known else "other"

    async def send_status(message):
      if message["type"] == "http.response.start":
        status[0] = message["status"]
      await send(message)

    try:
      await self._guarded(scope, receive, send_status)
    finally:
      seconds = time.perf_counter() - start
      self.metrics.requests.labels(path, str(status[0])).inc()
      self.metrics.latency.labels(path).observe(seconds)
      logging.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], 1e3 * seconds)

  async def _guarded(self, scope, receive, send):
    headers = dict(scope["headers"])
    if self.key and scope["path"] not in OPEN_PATHS:
      given = headers.get(b"authorization", b"")
      token = given[7:] if given[:7].lower() == b"bearer " else b""
      if not hmac.compare_digest(token, self.key):  # constant time: no key guessing by timing
        return await _send_error(send, 401, "missing or wrong API key", "invalid_api_key")
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or int(length) > self.limit:
      return await _send_error(send, 413, self._too_large(), "body_too_large")
    received, started = 0, [False]

    async def limited_receive():
      nonlocal received
      message = await receive()
      received += len(message.get("body", b""))
      if received > self.limit:  # chunked bodies carry no content-length
        raise _TooLarge
      return message

    async def tracking_send(message):
      started[0] = True
      await send(message)

    try:
      await self.app(scope, limited_receive, tracking_send)
    except _TooLarge:
      if not started[0]:
        await _send_error(send, 413, self._too_large(), "body_too_large")

  def _too_large(self) -> str:
    return f"the request body is over serve.max_body_mb ({self.limit / 2**20:g} MB)"


async def _send_error(send, status: int, message: str, code: str) -> None:
  body = json.dumps(error_body(status, message, code)).encode()
  headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
  await send({"type": "http.response.start", "status": status, "headers": headers})
  await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
  """uvicorn re-raises a caught SIGTERM after its graceful shutdown, which would end the process
  by the signal (exit -15); a drained server should exit 0. It also prints the URL."""

  @contextlib.contextmanager
  def capture_signals(self):
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
    try:
      yield
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)

  async def startup(self, sockets=None):
    await super().startup(sockets)
    for server in self.servers:
      for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        print(f"serving on http://{host}:{port} (/health, /metrics, /docs)", flush=True)


def serve(service: Service, serve_config) -> None:
  """Runs the server until SIGTERM/SIGINT; in-flight requests get serve.drain_s to finish."""
  app = make_app(service, serve_config)
  config = uvicorn.Config(
      app,
      host=serve_config.host,
      port=serve_config.port,
      log_level="warning",
      access_log=False,  # Guard writes one line per request
      timeout_graceful_shutdown=serve_config.drain_s,
      backlog=2048,  # bursts of hundreds of connections queue instead of being refused
  )
  _Server(config).run()
