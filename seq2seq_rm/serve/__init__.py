"""The reward server (``seq2seq-rm serve``): either kind of RM over HTTP with dynamic batching.

* ``config.py``: :class:`ServeConfig`, the options (light: the CLI imports it for ``--help``);
* ``batching.py``: :class:`DynamicBatcher`, requests that arrive together share one forward pass;
* ``app.py``: the FastAPI app, its endpoints (``/token_rewards``, OpenRLHF's ``/get_reward``,
  ``/health``), authentication and limits, and :func:`run_server` (uvicorn).

Import ``seq2seq_rm.serve.app`` for the server itself (it needs ``fastapi`` and ``uvicorn``).
"""
