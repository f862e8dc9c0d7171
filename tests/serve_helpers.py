"""A `--mode=serve` server in a subprocess on a free 127.0.0.1 port, for the serving tests."""

import os
import re
import subprocess
import sys
import time

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
  """Starts `python run.py ... --mode=serve` (port 0: the OS picks a free one), reads the URL it
  prints, and waits for /health to say ready. Always `stop()` it (in a finally)."""

  def __init__(self, args, log_path, env=None, ready_timeout=240):
    self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
    self.proc = subprocess.Popen(
        [sys.executable, "run.py", *args, "--mode=serve", "--config.serve.port=0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    self.url = None
    deadline = time.monotonic() + ready_timeout
    try:
      for line in self.proc.stdout:
        found = re.search(r"serving on (http://\S+)", line)
        if found:
          self.url = found.group(1)
          break
      if self.url is None:
        raise AssertionError(f"the server did not start:\n{self.log_text()[-3000:]}")
      while time.monotonic() < deadline:
        if httpx.get(f"{self.url}/health").status_code == 200:
          return
        time.sleep(0.2)
      raise AssertionError("the server did not become ready")
    except BaseException:
      self.stop()
      raise

  def log_text(self) -> str:
    self.log.flush()
    with open(self.log.name) as f:
      return f.read()

  def metric(self, name: str, headers=None) -> float:
    text = httpx.get(f"{self.url}/metrics", headers=headers).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

  def stop(self) -> int:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.log.close()
    return self.proc.returncode
