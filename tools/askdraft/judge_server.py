"""The judge's server side: `askdraft judge --serve` runs `transformers serve` for the duration of
a run, and the API key comes only from the environment."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from askdraft.io import InputError

PLACEHOLDER_KEY = "no-key-needed"  # sent to servers that need no key (vLLM, transformers serve)


class JudgeError(RuntimeError):
    """A configuration problem that stops the run before any call (e.g. no API key)."""


@contextlib.contextmanager
def served(model_dir, log_path, startup_timeout=300):
    """`transformers serve MODEL_DIR` on a free localhost port while the block runs; yields
    its /v1 base URL. The server's output goes to log_path (quoted on a failed start)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise InputError(model_dir, None, "model directory not found (no config.json)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
                                 "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise JudgeError(f"transformers serve {model_dir} did not start; its log "
                                         f"({log_path}):\n{Path(log_path).read_text()[-2000:]}") from None
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def api_key(env_var=None, base_url=None):
    """The key from the environment; a placeholder for a custom server when none is set."""
    key = os.environ.get(env_var or "OPENAI_API_KEY")
    if key:
        return key
    if env_var or base_url is None:
        raise JudgeError(f"environment variable {env_var or 'OPENAI_API_KEY'} is not set "
                         "(the judge's API key is read only from the environment)")
    return PLACEHOLDER_KEY
