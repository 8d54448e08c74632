"""The RNN architecture sweep's pure parts: the variants (the paper's Table I or a product grid), the choice
of the best (validation split only), the SVM row, and the table written as reports/sweep.csv and sweep.md.

Table I (spatial stream, UCF101 split 1): 17 plain variants, then the best (*) with an attention layer after
the input, then the best with a linear SVM on its video embeddings in place of the softmax.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from multistream.config import Config, FusionConfig, RNNConfig, TuneConfig
from multistream.fuse.svm import FusionModel, choose_c
from multistream.store import runinfo, storage
from multistream.store.layout import RunRoot
from multistream.train.loop import EpochLoop
from multistream.train.rnn.model import SequenceClassifier
from multistream.train.rnn.recipe import embed
from multistream.train.steps import top_ks, topk_accuracy

GRID = ("cell", "bidirectional", "layers", "hidden", "attention")
# (cell, bidirectional, layers, hidden units, paper top-1 %, paper top-5 %), in the paper's order
TABLE_I = [
    ("lstm", False, 1, 256, 76.24, 93.49), ("lstm", False, 1, 512, 77.09, 93.09),
    ("lstm", False, 1, 1024, 77.07, 93.62), ("lstm", False, 1, 2048, 76.22, 93.62),
    ("gru", False, 1, 512, 77.83, 93.88), ("gru", False, 1, 1024, 77.81, 93.17),
    ("lstm", True, 1, 512, 77.36, 93.41), ("lstm", True, 1, 1024, 75.93, 93.49),
    ("gru", True, 1, 512, 77.33, 93.46), ("gru", True, 1, 1024, 77.52, 93.41),
    ("lstm", False, 2, 512, 74.71, 92.80), ("lstm", False, 2, 1024, 76.80, 94.09),
    ("gru", False, 2, 512, 77.09, 93.03), ("gru", False, 2, 1024, 77.22, 93.25),
    ("gru", True, 2, 512, 78.34, 93.51), ("gru", True, 2, 1024, 77.15, 93.17),
    ("lstm", True, 2, 512, 74.50, 92.77),
]
PAPER_ATTENTION, PAPER_SVM = (75.03, 92.89), (79.40, 90.84)  # S. BiGRU 512 + attention, + SVM
COLUMNS = ["model", "best", *GRID, "head", "paper_hidden", "val_top1", "val_top5", "test_top1", "test_top5",
           "paper_top1", "paper_top5", "best_val_loss", "best_epoch", "epochs", "stopped_by", "seed"]


def model_name(cell: str, bidirectional: bool, layers: int, attention: bool = False, head: str = "softmax",
               **_) -> str:
    """Table I naming: "S. BiGRU + attention" (S. = two stacked layers, Bi = bidirectional)."""
    stacked = "S. " if layers == 2 else f"{layers}x " if layers > 2 else ""
    suffix = " + attention" if attention else " + SVM" if head == "svm" else ""
    return f"{stacked}{'Bi' if bidirectional else ''}{cell.upper()}{suffix}"


def variants(tune: TuneConfig) -> list[dict]:
    """The plain variants to train first: {cell, bidirectional, layers, hidden, attention, paper_hidden,
    paper_top1, paper_top5} (paper_* None outside Table I)."""
    if tune.grid == "table1":
        return [{"cell": c, "bidirectional": b, "layers": n, "hidden": max(1, round(h * tune.hidden_scale)),
                 "attention": False, "paper_hidden": h, "paper_top1": p1, "paper_top5": p5}
                for c, b, n, h, p1, p5 in TABLE_I]
    paper = {(c, b, n, h): (p1, p5) for c, b, n, h, p1, p5 in TABLE_I}
    rows = []
    for c, b, n, h, a in itertools.product(tune.cells, tune.bidirectional, tune.layers, tune.hidden, tune.attention):
        p1, p5 = paper.get((c, b, n, h), (None, None)) if not a else (None, None)
        rows.append({"cell": c, "bidirectional": b, "layers": n, "hidden": h, "attention": a,
                     "paper_hidden": h if p1 is not None else None, "paper_top1": p1, "paper_top5": p5})
    return rows


def best_row(rows: list[dict]) -> dict:
    """The best plain variant by validation only: highest val top-1, then lowest best val loss, then order."""
    plain = [r for r in rows if not r["attention"] and r["head"] == "softmax" and not math.isnan(r["val_top1"])]
    if not plain:
        raise RuntimeError("no sweep trial finished: nothing to choose the best variant from")
    return min(plain, key=lambda r: (-r["val_top1"], r["best_val_loss"]))


def paper_extra(row: dict, kind: str) -> dict:
    """Paper figures of the best variant's attention / SVM row, where the best is Table I's S. BiGRU 512."""
    marked = (row["cell"], row["bidirectional"], row["layers"], row.get("paper_hidden")) == ("gru", True, 2, 512)
    p1, p5 = (PAPER_ATTENTION if kind == "attention" else PAPER_SVM) if marked else (None, None)
    return {"paper_top1": p1, "paper_top5": p5}


def attention_variant(best: dict, index: int) -> dict:
    """The best plain variant with an attention layer after the input: the second phase's one variant."""
    return {**{k: best[k] for k in (*GRID, "paper_hidden")}, "attention": True, "index": index,
            **paper_extra(best, "attention")}


def variant_model(weights: dict[str, torch.Tensor], variant: dict, rnn: RNNConfig, input_dim: int,
                  num_classes: int) -> SequenceClassifier:
    """A trial's best weights in its variant's network, in eval mode."""
    model = SequenceClassifier.from_config(dataclasses.replace(rnn, **{k: variant[k] for k in GRID}), input_dim,
                                           num_classes)
    model.load_state_dict(weights)
    return model.eval()


def trial_metrics(loop: EpochLoop, metrics: dict) -> dict:
    """What a trial reports for an epoch: the head's metrics, its best epoch so far and why it may stop."""
    return {**metrics, "best_epoch": loop.best_epoch, "early_stopped": loop.stopping.should_stop,
            "best_val_loss": loop.stopping.best}


def split_scores(logits: np.ndarray, targets: np.ndarray, prefix: str) -> dict:
    """{prefix_top1, prefix_top5} (top-5 NaN where there are 5 classes or fewer)."""
    ks = top_ks(logits.shape[1])
    return {f"{prefix}_top1": topk_accuracy(logits, targets, 1),
            f"{prefix}_top5": topk_accuracy(logits, targets, 5) if 5 in ks else float("nan")}


def svm_scores(train: tuple[np.ndarray, np.ndarray], evaluated: dict[str, tuple[np.ndarray, np.ndarray]],
               num_classes: int, fusion: FusionConfig) -> dict:
    """The linear SVM of the fusion (hinge, L2) fitted on train embeddings (N, E) and targets (N,), scored on
    each of `evaluated` ({"val": (embeddings, targets), "test": ...}) → {val_top1, val_top5, test_top1, ...}.
    `fusion.C: auto` chooses its C on "val" (`svm.choose_c`)."""
    names = [str(i) for i in range(num_classes)]
    c = None
    if fusion.C == "auto":
        val_x, val_y = evaluated["val"]
        c, _ = choose_c({"x": train[0]}, [names[t] for t in train[1]], {"x": val_x}, [names[t] for t in val_y],
                        fusion, ("x",))
    model = FusionModel.fit({"x": train[0]}, [names[t] for t in train[1]], fusion, streams=("x",), c=c)
    order = [model.classes.index(n) if n in model.classes else None for n in names]
    scores = {}
    for split, (x, y) in evaluated.items():
        margins = model.decision_scores({"x": x})
        full = np.full((len(x), num_classes), -np.inf)
        for i, j in enumerate(order):
            if j is not None:
                full[:, i] = margins[:, j]
        scores.update(split_scores(full, y, split))
    return scores


def trial_row(variant: dict, seed: int, metrics: dict, errored: bool, model, splits: dict, batch_size: int,
              max_epochs: int | None) -> dict:
    """A trial's row: its variant, val and test scored once with its best weights `model` (None: the trial left
    none; kept in the row as "weights" for the SVM row), its last `metrics` and why it stopped.

    splits: {"val": Sequences, "test": Sequences}; `metrics` as the trial last reported."""
    row = {"model": model_name(**variant), **variant, "head": "softmax", "seed": seed}
    if model is None:
        return {**row, "val_top1": float("nan"), "best_val_loss": float("nan"), "stopped_by": "error"}
    row["weights"] = model
    for split in ("val", "test"):
        row.update(split_scores(embed(model, splits[split], batch_size)[1], splits[split].targets, split))
    epochs = int(metrics.get("epoch", 0))
    row.update(best_val_loss=metrics.get("best_val_loss"), best_epoch=metrics.get("best_epoch"), epochs=epochs,
               stopped_by="error" if errored else "early stop" if metrics.get("early_stopped")
               else "max epochs" if max_epochs is not None and epochs >= max_epochs else "ASHA")
    return row


def svm_row(best: dict, splits: dict, cfg: Config, num_classes: int) -> dict:
    """The best variant's embeddings → the fusion's linear SVM (fitted on train) in place of its softmax."""
    embedded = {split: (embed(best["weights"], s, cfg.rnn.batch_size)[0], s.targets) for split, s in splits.items()}
    row = {**{k: best[k] for k in (*GRID, "paper_hidden", "best_val_loss", "best_epoch", "epochs", "seed")},
           "head": "svm", "stopped_by": best["stopped_by"], **paper_extra(best, "svm")}
    row["model"] = model_name(**row)
    row.update(svm_scores(embedded["train"], {s: embedded[s] for s in ("val", "test")}, num_classes, cfg.fusion))
    return row


@dataclass(frozen=True)
class SweepResult:
    table: pd.DataFrame  # sweep.csv: one row per variant in Table I's order (`COLUMNS`)
    best: str  # the variant chosen on val, e.g. "S. BiGRU" (its row has best=True)
    wall_s: float


def write_sweep(run: RunRoot, table: pd.DataFrame, stream: str, counts: dict[str, int], wall_s: float,
                tune: TuneConfig, best: dict) -> None:
    """reports/sweep.csv and sweep.md, and the "sweep" section of the metrics."""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    storage.write_text(run.sweep_csv, buffer.getvalue())
    resources = f"{tune.cpus_per_trial:g} CPU + {tune.gpus_per_trial:g} GPU per trial"
    storage.write_text(run.sweep_md, sweep_markdown(table, stream, counts, wall_s, resources))
    runinfo.update_metrics(run.uri, "sweep", {"stream": stream, "wall_s": wall_s, "trials": len(table) - 1,
                                              "best": best["model"], "best_hidden": best["hidden"],
                                              "resources": resources, "grid": tune.grid})


def sweep_table(rows: list[dict]) -> pd.DataFrame:
    """The rows in the order given (Table I's), with every column of COLUMNS."""
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table:
            table[column] = None
    return table[COLUMNS]


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _paper(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def sweep_markdown(table: pd.DataFrame, stream: str, counts: dict[str, int], wall_s: float, resources: str) -> str:
    lines = [f"# RNN architectures on the {stream} stream (the paper's Table I)", "",
             f"{counts['train']} train / {counts['val']} val / {counts['test']} test videos. Each trial is scored "
             "at its best-validation-loss epoch; ASHA (where tune.scheduler is asha) and the choice of the best "
             "variant (*) read the val split "
             "only, the test split is scored once per row. \"S.\" = two stacked layers, \"Bi\" = bidirectional; "
             "units are per LSTM/GRU cell (the paper's in brackets where this sweep scaled them). Top-5 only "
             "with more than 5 classes.", "",
             f"Sweep wall time {wall_s:.1f} s ({resources}).", "",
             "| Model | Hidden units | Val top-1, % | Val top-5, % | Test top-1, % | Test top-5, % | "
             "Paper top-1, % | Paper top-5, % | Epochs | Stopped by |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in table.itertuples():
        units = f"{r.hidden}" if r.paper_hidden in (None, r.hidden) or pd.isna(r.paper_hidden) else \
            f"{r.hidden} ({int(r.paper_hidden)})"
        star = " (*)" if r.best else ""
        lines.append(f"| {r.model}{star} | {units} | {_pct(r.val_top1)} | {_pct(r.val_top5)} | {_pct(r.test_top1)} | "
                     f"{_pct(r.test_top5)} | {_paper(r.paper_top1)} | {_paper(r.paper_top5)} | {r.epochs} | "
                     f"{r.stopped_by} |")
    return "\n".join(lines) + "\n"
