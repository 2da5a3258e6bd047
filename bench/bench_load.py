"""Loading benchmark: glmtune.load_model vs a plain safetensors read of the same bytes.

Generates (once, cached) a ~1B-parameter ChatGLM3-layout checkpoint with random
fp16 weights in official-style shards, then measures, each in a fresh process
with a warm page cache, wall time and peak RSS of:

  plain:   safetensors.torch.load_file on every shard, keeping all tensors,
           each copied out of the mapping (load_file maps lazily)
  glmtune: glmtune.load_model(dir, dtype=bf16)  (convert + cast, shard by shard)

Usage: python bench/bench_load.py [--shape chatglm3-1b] [--dir /tmp/glmtune-bench] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Peak RSS from /proc (VmHWM): ru_maxrss would include the parent's peak, inherited across fork.
HWM = """
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""

PLAIN = HWM + """
import sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file
base = hwm()
t = time.perf_counter()
tensors = {}
for f in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    tensors.update(load_file(str(f)))
# load_file maps the file lazily: copy every tensor out so the bytes are really read.
tensors = {k: torch.empty_like(v).copy_(v) for k, v in tensors.items()}
wall = time.perf_counter() - t
print(wall, base, hwm())
"""

GLMTUNE = HWM + """
import sys, time
import torch, glmtune
base = hwm()
t = time.perf_counter()
model = glmtune.load_model(sys.argv[1], dtype=torch.bfloat16)
wall = time.perf_counter() - t
assert next(model.parameters()).dtype == torch.bfloat16
print(wall, base, hwm())
"""


def make_checkpoint(shape: str, out: Path) -> Path:
    import torch

    import glmtune

    if (out / "config.json").is_file():
        return out
    print(f"generating {shape} checkpoint in {out} ...", flush=True)
    model = glmtune.load_model(shape, dtype=torch.float16)
    glmtune.save_model(model, out, layout="chatglm3", max_shard_bytes=1024**3)
    return out


def run(code: str, folder: Path) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", code, str(folder)], check=True, capture_output=True, text=True)
    wall, base, peak = out.stdout.split()
    return float(wall), int(base) / 1024, int(peak) / 1024  # VmHWM is in kB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="chatglm3-1b")
    ap.add_argument("--dir", default="/tmp/glmtune-bench")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    folder = make_checkpoint(args.shape, Path(args.dir) / f"{args.shape}-chatglm3-fp16")
    shards = sorted(folder.glob("*.safetensors"))
    size_mb = sum(f.stat().st_size for f in shards) / 1024**2
    for f in shards:  # warm the page cache so both sides read from memory
        f.read_bytes()
    results: dict[str, list[tuple[float, float, float]]] = {"plain": [], "glmtune": []}
    for _ in range(args.repeats):
        results["plain"].append(run(PLAIN, folder))
        results["glmtune"].append(run(GLMTUNE, folder))
    summary = {"checkpoint_mb": round(size_mb), "shards": len(shards)}
    for name, rows in results.items():
        summary[name] = {
            "wall_s": round(statistics.median(r[0] for r in rows), 2),
            "peak_rss_mb": round(max(r[2] for r in rows)),
            "peak_rss_over_imports_mb": round(max(r[2] - r[1] for r in rows)),
        }
    g, p = summary["glmtune"], summary["plain"]
    summary["time_ratio"] = round(g["wall_s"] / p["wall_s"], 2)
    summary["peak_rss_over_checkpoint"] = round(g["peak_rss_mb"] / size_mb, 2)
    summary["loaded_bytes_rss_over_checkpoint"] = round(g["peak_rss_over_imports_mb"] / size_mb, 2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"(bench took {time.time() - t0:.0f}s)")
