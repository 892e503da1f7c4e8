"""What a run records: JSON lines, TensorBoard event files (tensorboardX), a learning-curve PNG, a summary.

Only the process that owns the writer (process 0 in a multi-process run) writes anything.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without importing torch.

    tensorboardX imports torch whenever it is installed (only to accept torch tensors); the trainer
    logs Python floats, so torch is hidden from that import to keep it out of training processes.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends ``{"step", "kind", ...metrics}`` lines to ``metrics.jsonl`` and scalars to ``tb/``.

    Args:
      workdir: the run's directory.
      enabled: False on processes other than 0: every method is then a no-op.
      tensorboard: False: ``metrics.jsonl`` only (tensorboardX is not imported). Without tensorboardX
        installed the writer warns once and writes ``metrics.jsonl`` only.
      resume_step: the step the run continues from: rows of later steps (written before an interrupt,
        and about to be written again) are dropped from ``metrics.jsonl``.
    """

    def __init__(
        self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0
    ):
        self.enabled = enabled
        self.workdir = Path(workdir)
        self._tb = None
        if enabled:
            keep_rows_up_to(self.workdir / "metrics.jsonl", resume_step)
            if tensorboard:
                try:
                    self._tb = _summary_writer_class()(str(self.workdir / "tb"))
                except ImportError as err:
                    log.warning("No TensorBoard event files (%s): metrics go to metrics.jsonl only.", err)
            self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, step: int, kind: str, metrics: dict[str, float]) -> None:
        """Record ``metrics`` (floats) of ``kind`` ('train', 'validation', 'test', 'epoch') at ``step``."""
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, **{k: _json_float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            return
        for name, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(f"{kind}/{name}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def keep_rows_up_to(path: Path, step: int) -> None:
    """Rewrite ``path`` (atomically) with its rows of steps ``<= step``, one per (step, kind): the last."""
    if not path.exists():
        return
    rows: dict[tuple[int, str], str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if row.get("step", 0) <= step:
            rows.pop((row.get("step"), row.get("kind")), None)
            rows[(row.get("step"), row.get("kind"))] = line
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in rows.values()), encoding="utf-8")
    tmp.replace(path)


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Both reporting protocols over per-epoch records ``{'epoch', 'validation_accuracy', 'test_accuracy'}``.

    * ``test_at_best_validation``: test accuracy of the (first) epoch with the best validation accuracy;
    * ``max_test_over_epochs``: the paper's protocol, the best test accuracy of any epoch.
    Accuracies are fractions in [0, 1]; a protocol whose split was not evaluated is None. Runs with an
    EMA of the weights get the same fields for it, prefixed ``ema_``.
    """
    summary: dict[str, Any] = {"epochs": len(history)}
    summary.update(_protocols(history, ""))
    if any("ema_validation_accuracy" in h or "ema_test_accuracy" in h for h in history):
        summary.update(_protocols(history, "ema_"))
    return summary


def _protocols(history: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    val, test = f"{prefix}validation_accuracy", f"{prefix}test_accuracy"
    with_val = [h for h in history if h.get(val) is not None]
    with_test = [h for h in history if h.get(test) is not None]
    if with_val:
        best = max(with_val, key=lambda h: h[val])  # max keeps the first of ties
        out.update(
            {
                f"{prefix}best_epoch": best["epoch"],
                f"{prefix}best_validation_accuracy": best[val],
                f"{prefix}test_at_best_validation": best.get(test),
            }
        )
    if with_test:
        top = max(with_test, key=lambda h: h[test])
        out.update({f"{prefix}max_test_over_epochs": top[test], f"{prefix}max_test_epoch": top["epoch"]})
    return out


def plot_learning_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch (train, validation, test) into a PNG at ``path`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "validation", "test"):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            values = [h.get(f"{split}_{metric}") for h in history]
            points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
