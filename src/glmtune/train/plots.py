"""Loss curves from ``trainer_log.jsonl`` (matplotlib, Agg backend: no display needed).

One figure is what people read: raw training loss (thin), its smoothed
curve (TensorBoard's debiased exponential moving average), eval loss on the
same axes, and the learning rate on a second axis, titled with the run's
name. The run writes it as ``loss.png`` (also when it was stopped early);
the web UI draws the same figure live from the growing log.
"""

from __future__ import annotations

import json
from pathlib import Path

SMOOTHING = 0.6
"""Weight of the moving average (TensorBoard's default slider value)."""


def read_log(path: Path) -> list[dict]:
    """The log's records; a line still being written (a live run) or damaged is skipped, not fatal."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` where the record has it as a number."""
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's scalar smoothing): no drag towards 0 at the start."""
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = last * weight + (1 - weight) * value
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def loss_figure(records: list[dict], title: str):
    """The matplotlib Figure of a run's log, or None while it has no loss point yet."""
    steps, loss = series(records, "loss")
    eval_steps, eval_loss = series(records, "eval_loss")
    if not steps and not eval_steps:
        return None
    import matplotlib  # heavy dependency: only when a plot is drawn

    matplotlib.use("Agg")
    # deferred: matplotlib is heavy; only drawing a plot needs it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=100)  # not pyplot: no global state, safe in a UI's threads
    ax = fig.add_subplot()
    marker = "o" if len(steps) < 30 else None
    if steps:
        ax.plot(steps, loss, color="tab:blue", alpha=0.35, linewidth=1.0, marker=marker, markersize=3,
                label="train loss")
        ax.plot(steps, smooth(loss), color="tab:blue", linewidth=2.0, label=f"train loss (smoothed {SMOOTHING})")
    if eval_steps:
        ax.plot(eval_steps, eval_loss, color="tab:orange", linewidth=2.0, marker="s", markersize=4, label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lr_steps, lr = series(records, "learning_rate")
    if lr_steps:
        ax2 = ax.twinx()
        ax2.plot(lr_steps, lr, color="tab:green", linestyle="--", linewidth=1.2, label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    last = f"step {steps[-1]}, loss {loss[-1]:.4f}" if steps else f"step {eval_steps[-1]}"
    ax.set_title(f"{title} ({last})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_losses(output_dir: Path, title: str | None = None) -> list[Path]:
    """``loss.png`` in ``output_dir`` (train, smoothed and eval loss, learning rate), when there are points."""
    fig = loss_figure(read_log(output_dir / "trainer_log.jsonl"), title or output_dir.resolve().name)
    if fig is None:
        return []
    path = output_dir / "loss.png"
    fig.savefig(path)
    return [path]
