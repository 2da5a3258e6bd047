"""`glmtune serve` under load: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients.

Three servers on the same random model (greedy, every reply ``--new-tokens`` long unless a stop id
comes first), each in its own process so the clients do not share its interpreter:

* ``stdlib (before)``: the standard-library server glmtune shipped before issue 12
  (``git show REV:src/glmtune/infer/server.py``, one request decoded at a time under a lock);
* ``batched --max-batch 1``: the new FastAPI server decoding one request at a time;
* ``batched --max-batch 32``: the new server batching every request in flight.

    .venv/bin/python bench/bench_serve.py --shape small --new-tokens 32 --requests 48
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "27a4d5d"  # the last commit of the standard-library server
PROMPTS = ["who are you", "tell me a story about a tiny robot", "what is the weather like in Paris today",
           "ping", "write a poem", "explain attention in one sentence", "hello", "list three colours"]


def prepare(folder: Path, shape: str) -> None:
    """A random model of ``shape`` + a small trained tokenizer, saved as a model folder."""
    from importlib import resources

    from glmtune import load_model, save_model
    from glmtune.tokenizer import train_tokenizer

    raw = resources.files("glmtune.resources").joinpath("self_cognition.json").read_text(encoding="utf-8")
    texts = [m["content"] for r in json.loads(raw) for m in r["conversations"]] + PROMPTS
    tok = train_tokenizer(texts * 4, folder, vocab_size=1000)
    save_model(load_model(shape, dtype="fp32", vocab_size=tok.vocab_size, seed=0), folder)


def old_server_module(rev: str):
    """The server module as it was at ``rev``, imported inside glmtune.infer (its relative imports work)."""
    source = subprocess.check_output(["git", "show", f"{rev}:src/glmtune/infer/server.py"], cwd=ROOT, text=True)
    spec = importlib.util.spec_from_loader("glmtune.infer._server_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "glmtune.infer"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:src/glmtune/infer/server.py", "exec"), module.__dict__)  # noqa: S102 (our own git)
    return module


def child(args) -> None:
    """Serve ``args.folder`` with the chosen server; print the port on stdout, then serve until killed."""
    import torch

    from glmtune import load_model, load_tokenizer
    from glmtune.infer.sampling import SamplingConfig

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.folder, dtype="fp32").eval(), load_tokenizer(args.folder)
    defaults = SamplingConfig(temperature=0, max_new_tokens=args.new_tokens)
    if args.child == "stdlib":
        server = old_server_module(args.old_rev).make_server(model, tok, port=0, name="bench", defaults=defaults)
    else:
        from glmtune.infer.server import make_server

        server = make_server(model, tok, port=0, name="bench", defaults=defaults, max_batch=int(args.child))
    print(server.server_address[1], flush=True)
    server.serve_forever()


def ask(port: int, prompt: str, new_tokens: int) -> tuple[float, int] | None:
    """(seconds, completion tokens) of one plain request; None when the connection was refused or reset."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": new_tokens})
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
    except OSError:  # the stdlib server's listen backlog (5) overflows under load
        return None
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data}")
    return time.perf_counter() - start, data["usage"]["completion_tokens"]


def load(port: int, clients: int, requests: int, new_tokens: int) -> dict:
    lock, index, results = threading.Lock(), [0], []

    def client() -> None:
        while True:
            with lock:
                if index[0] >= requests:
                    return
                i = index[0]
                index[0] += 1
            results.append(ask(port, PROMPTS[i % len(PROMPTS)], new_tokens))

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    failed = sum(r is None for r in results)
    results = [r for r in results if r is not None]
    latencies = sorted(r[0] for r in results)
    return {"rps": len(results) / wall, "tokens_s": sum(r[1] for r in results) / wall, "failed": failed,
            "p50": statistics.median(latencies), "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def start_server(kind: str, args) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, __file__, "--child", kind, "--folder", str(args.folder), "--new-tokens",
           str(args.new_tokens), "--threads", str(args.threads), "--old-rev", args.old_rev]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(args.threads)}  # the servers' own threads too, not only the main one
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    port = int(proc.stdout.readline())
    load(port, 2, 4, args.new_tokens)  # warm-up
    return proc, port


def run_all(servers: list[tuple[str, str]], args) -> None:
    """Every server runs at once (idle ones cost nothing); each level is measured on each in turn, so a
    busy moment on a shared machine hits all of them alike."""
    started = []
    try:
        for kind, label in servers:
            started.append((label, *start_server(kind, args)))
        for clients in args.clients:
            for label, _, port in started:
                runs = sorted((load(port, clients, args.requests, args.new_tokens) for _ in range(args.rounds)),
                              key=lambda r: r["rps"])
                r = runs[len(runs) // 2]  # the median round by throughput
                failed = f"   {r['failed']} connections reset" if r["failed"] else ""
                print(f"{label:<26} clients {clients:>3}   {r['rps']:7.2f} req/s   {r['tokens_s']:8.1f} tokens/s   "
                      f"p50 {r['p50'] * 1000:8.0f} ms   p95 {r['p95'] * 1000:8.0f} ms{failed}", flush=True)
    finally:
        for _, proc, _ in started:
            proc.kill()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="small", help="named model shape (random weights; default small)")
    p.add_argument("--new-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level (default 48)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--rounds", type=int, default=3, help="rounds per level; the median by req/s is shown")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server process (default 1)")
    p.add_argument("--old-rev", default=OLD_REV, help=f"git revision of the stdlib server (default {OLD_REV})")
    p.add_argument("--skip-old", action="store_true", help="do not run the stdlib server")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="glmtune-bench-serve-") as tmp:
        args.folder = Path(tmp)
        prepare(args.folder, args.shape)
        print(f"shape {args.shape}, {args.new_tokens} new tokens (greedy), {args.requests} requests per level "
              f"(median of {args.rounds} rounds), torch threads {args.threads}, CPU", flush=True)
        servers = [("stdlib", f"stdlib (before, {args.old_rev})"), ("1", "batched --max-batch 1"),
                   ("32", "batched --max-batch 32")]
        run_all(servers[1 if args.skip_old else 0:], args)


if __name__ == "__main__":
    main()
