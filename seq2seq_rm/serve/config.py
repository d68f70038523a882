"""The reward server's options (``seq2seq-rm serve``), checked when they are built.

Kept apart from ``app.py`` so that the command line can show the defaults without importing
FastAPI, uvicorn or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Options, opt
from ..errors import ConfigError


@dataclass
class ServeConfig(Options):
    """Where the server listens, who may use it, and how much work one request or batch may bring."""

    rm: str = opt("", "reward model folder (seq2seq or scalar), written by `seq2seq-rm rm train`")
    host: str = opt("127.0.0.1", "address to bind: 127.0.0.1 (this machine only) unless you mean to expose it")
    port: int = opt(8000, "TCP port (0: any free port, printed at start-up)", ge=0, le=65535)
    api_key_env: str | None = opt(
        None, "environment variable holding the API key; every request must then send "
              "`Authorization: Bearer <key>` (default: no key)")
    max_batch_size: int = opt(32, "most response rows in one forward pass", ge=1, le=4096)
    max_batch_tokens: int = opt(
        16384, "most tokens in one forward pass, padding included (rows x longest row); at least the RM's window",
        ge=1)
    max_wait_ms: float = opt(5.0, "how long a forward pass waits for more rows to join it (milliseconds)",
                             ge=0, le=10000)
    max_request_rows: int = opt(256, "most rows in one request", ge=1)
    max_queue_rows: int = opt(4096, "most rows waiting for a forward pass; more is answered 503 (busy)", ge=1)
    max_body_bytes: int = opt(8 * 1024 * 1024, "largest request body in bytes", ge=1024, le=1024**3)
    max_connections: int = opt(256, "most open connections; more is answered 503", ge=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = opt(
        "float32", "storage dtype of the RM's weights (auto: the checkpoint's own)")
    device: str | None = opt(None, "torch device of the RM (default cpu; e.g. cuda)")
    rm_server: str | None = opt(
        None, "score with a vLLM server (http://HOST:PORT/v1) serving the --rm folder instead of loading its weights "
              "(seq2seq RMs; README, 'The seq2seq RM served by vLLM')")
    rm_server_key_env: str | None = opt(None, "environment variable holding rm_server's API key")

    def check(self) -> None:
        if not self.rm:
            raise ConfigError("--rm is required: a reward model folder")
        if not self.host:
            raise ConfigError("--host must not be empty")
        if self.max_queue_rows < self.max_request_rows:
            raise ConfigError(f"max_queue_rows ({self.max_queue_rows}) must be at least max_request_rows "
                              f"({self.max_request_rows}): a full request must fit the queue")
        if self.api_key_env is not None and not self.api_key_env.strip():
            raise ConfigError("--api-key-env must name an environment variable")
