"""Encoding throughput of the data layer on synthetic multi-turn conversations (some with tools).

    .venv/bin/python bench/bench_encode.py [--records 100000] [--model ../shared/fixtures/chatglm3-tiny]

Prints records/s and tokens/s for a cold pass (read, validate, encode, write
cache) and a warm pass (cache hit: the time a training run waits before
its first step), plus a serial cold pass for comparison with --serial.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the model answers questions about weather stock prices travel plans and code "
         "今天 北京 天气 怎么样 请 帮我 查询 一下 股票 价格 谢谢 你好").split()
TOOLS = [{"name": "track", "description": "追踪股票价格", "parameters": {"type": "object", "properties":
          {"symbol": {"description": "股票代码"}}, "required": ["symbol"]}},
         {"name": "weather", "description": "查询天气", "parameters": {"type": "object", "properties":
          {"city": {"description": "城市"}}, "required": ["city"]}}]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def synthetic_record(rng: random.Random) -> dict:
    conv = [{"role": "system", "content": "You are a helpful assistant."}] if rng.random() < 0.3 else []
    for _ in range(rng.randint(1, 4)):
        conv.append({"role": "user", "content": _text(rng, 5, 40)})
        conv.append({"role": "assistant", "content": _text(rng, 10, 80)})
    record = {"conversations": conv}
    if rng.random() < 0.2:  # one in five uses tools
        record["tools"] = TOOLS
        conv[-1:-1] = [{"role": "tool", "name": "track", "parameters": {"symbol": "AAPL"},
                        "observation": {"price": round(rng.uniform(100, 200), 2)}}]
    return record


def write_dataset(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(synthetic_record(rng), ensure_ascii=False) + "\n")


def _cpu_seconds() -> float:
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def timed(cfg, tok):
    """(wall seconds, CPU seconds of this process and its workers, splits)."""
    from glmtune.data import prepare_splits

    start, cpu = time.perf_counter(), _cpu_seconds()
    splits = prepare_splits(cfg, tok)
    return time.perf_counter() - start, _cpu_seconds() - cpu, splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "fixtures" / "chatglm3-tiny"))
    ap.add_argument("--workers", type=int, default=None, help="encoding processes (default: automatic)")
    ap.add_argument("--serial", action="store_true", help="also time a cold pass with one process")
    args = ap.parse_args()

    import os

    from glmtune import load_tokenizer
    from glmtune.data import DataConfig

    tok = load_tokenizer(args.model)
    print(f"load average before: {os.getloadavg()[0]:.1f} (other processes share these CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.jsonl"
        t0 = time.perf_counter()
        write_dataset(data, args.records)
        print(f"wrote {args.records} records ({data.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s; "
              f"{os.cpu_count()} CPUs")
        cfg = DataConfig(train_file=str(data), cache_dir=str(Path(tmp) / "cache"), max_input_length=1024,
                         max_output_length=1024, num_workers=args.workers)
        cold, cpu, splits = timed(cfg, tok)
        tokens = splits.train.num_tokens
        rep = splits.report.splits["train"]
        print(f"cold  (read+validate+encode+cache): {cold:6.2f}s  {args.records / cold:9.0f} records/s  "
              f"{tokens / cold:10.0f} tokens/s  ({tokens} tokens, {rep.tool_calls} tool calls, "
              f"p50/p99 length {rep.length_percentiles['p50']}/{rep.length_percentiles['p99']})")
        print(f"      CPU time {cpu:.1f}s (parent + workers): {cpu / 2:.1f}s of wall on 2 idle cores; "
              f"load average now {os.getloadavg()[0]:.1f}")
        from glmtune.data import cache, make_collator, training_dataset

        cache._file_digest.cache_clear()  # a new run hashes the file again; measure that too
        start = time.perf_counter()
        _, _, again = timed(cfg, tok)
        batch = make_collator(cfg)([training_dataset(again.train, cfg)[i] for i in range(8)])
        warm = time.perf_counter() - start
        assert again.report.from_cache["train"] and len(again.train) == len(splits.train)
        assert batch["input_ids"].shape[0] == 8
        print(f"warm  (from cache to first batch):   {warm:6.2f}s  {args.records / warm:9.0f} records/s  "
              f"{tokens / warm:10.0f} tokens/s")
        if args.serial:
            cfg1 = DataConfig(train_file=str(data), cache=False, max_input_length=1024, max_output_length=1024,
                              num_workers=1)
            serial, _, _ = timed(cfg1, tok)
            print(f"cold, 1 process (no cache write):    {serial:6.2f}s  {args.records / serial:9.0f} records/s  "
                  f"{tokens / serial:10.0f} tokens/s")


if __name__ == "__main__":
    main()
