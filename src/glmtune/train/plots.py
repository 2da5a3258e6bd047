"""Loss curves from ``trainer_log.jsonl`` (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curve(steps: list[int], values: list[float], title: str, out: Path) -> Path | None:
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(title)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_losses(output_dir: Path) -> list[Path]:
    """``loss.png`` and ``eval_loss.png`` in ``output_dir`` (each only when there are points)."""
    records = read_log(output_dir / "trainer_log.jsonl")
    written = []
    for key, name in (("loss", "loss.png"), ("eval_loss", "eval_loss.png")):
        path = plot_curve(*_series(records, key), key.replace("_", " "), output_dir / name)
        if path is not None:
            written.append(path)
    return written
