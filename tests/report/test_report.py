from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pytest

from multistream.fuse.run import run_fuse
from multistream.report.page import main, rnn_notation, write_report
from multistream.store import runinfo, schema, storage
from tests.support.fuse import fuse_config, write_synthetic_embeddings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Collects what a page references and the text of its tables."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.links, self.tables, self.open_tags = [], [], 0, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "table":
            self.tables += 1
        if tag in ("section", "table", "details"):
            self.open_tags.append(tag)

    def handle_endtag(self, tag):
        if tag in ("section", "table", "details"):
            assert self.open_tags.pop() == tag


def _history(epochs: int, start: float) -> list[dict]:
    return [{"epoch": e + 1, "lr": 0.01, "train_loss": start / (e + 1), "val_loss": start / (e + 1) + 0.1,
             "train_accuracy": min(1.0, 0.3 + 0.1 * e), "val_accuracy": min(1.0, 0.25 + 0.08 * e)}
            for e in range(epochs)]


def make_run_root(root: str) -> None:
    """A run with extraction, the spatial RNN, the motion CNN, a sweep and fusion done (every model's curves
    in its metrics.json section); no pipeline timings and no benchmark."""
    rows = write_synthetic_embeddings(root)
    run_fuse(fuse_config(root))
    videos = [{"video_id": r["video_id"], "uri": f"/data/{r['video_id']}.mp4", "label": r["label"],
               "split": r["split"], "status": "ok", "error": None, "duration_s": 3.0, "fps": 15.0,
               "has_audio": r["audio"] is not None} for r in rows]
    videos.append({"video_id": "Biking/broken", "uri": "/data/Biking/broken.avi", "label": "Biking",
                   "split": "train", "status": "error", "error": "decode: <moov atom not found> & more"})
    storage.write_part(pa.Table.from_pylist(videos, schema=schema.VIDEOS_SCHEMA), f"{root}/videos", "part-0")
    runinfo.update_metrics(root, "rnn_spatial", {"top1": 0.6, "history": _history(12, 1.2), "n_train": 60,
                                                 "n_val": 30, "n_test": 30})
    runinfo.write_json(root, "models/rnn_spatial/model.json",
                       {"rnn": {"cell": "gru", "bidirectional": True, "layers": 2, "hidden": 128}})
    runinfo.update_metrics(root, "motion_cnn", {"history": _history(8, 2.0)})
    storage.write_text(f"{root}/reports/sweep.csv", "model,hidden,val_accuracy\nS.BiGRU,64,0.71\nLSTM,128,0.65\n")


def test_report_renders_every_available_section_self_contained(tmp_path):
    root = str(tmp_path / "run")
    make_run_root(root)

    uri = write_report(root)

    assert uri == f"{root}/reports/report.html"
    text = Path(uri).read_text()
    page = Page(text)
    assert not page.open_tags
    assert len(page.images) == 5  # confusion, two sets of curves, autoencoder loss, anomaly
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(link.startswith("#") for link in page.links)  # nothing outside the file
    assert page.tables >= 6
    assert "Spatial (S.BiGRU128)" in text and "Spatial + Temporal + Audio (SVM fusion)" in text
    assert "S.BiGRU" in text and "0.71" in text  # the sweep table
    assert "&lt;moov atom not found&gt; &amp; more" in text and "<moov" not in text
    assert "Pipeline timings: not run yet" in text and "Benchmark: not run yet" in text
    assert "top-5, %" not in text and "top-5 is left out" in text  # 3 classes
    assert "calibration (val, out-of-fold (5 folds), normal)" in text and "false-positive rate" in text
    assert "detection rate" in text and "training errors" not in text
    assert "each scored by an autoencoder that was not fitted on it (cross-fitting" in text
    assert "the quantile of a log-normal fitted to their scores" in text
    splits = text.split('id="splits"')[1].split("</section>")[0]
    assert "Spatial RNN" in splits and "val (30): learning-rate schedule" in splits
    assert "Fusion SVM" in splits and "Anomaly autoencoder" in splits
    assert "val, out-of-fold (5 folds) (30): threshold" in splits
    assert "Dataset summary: not run yet" not in text
    figures = sorted(p.name for p in Path(root, "reports/figures").iterdir())
    assert figures == ["anomaly.png", "confusion.png", "curves_autoencoder.png", "curves_motion_cnn.png",
                       "curves_rnn_spatial.png"]
    assert all(Path(root, "reports/figures", name).read_bytes().startswith(PNG_MAGIC) for name in figures)


def test_report_of_an_empty_run_says_what_is_missing(tmp_path, capsys):
    main([str(tmp_path / "nothing")])
    assert capsys.readouterr().out.strip().endswith("reports/report.html")
    text = (tmp_path / "nothing/reports/report.html").read_text()
    assert text.count("not run yet") == 8 and not Page(text).images


def test_report_on_s3_with_pipeline_and_benchmark(s3_bucket):
    root = f"{s3_bucket}/run"
    runinfo.update_metrics(root, "pipeline", {"total_s": 12.5, "steps": [
        {"step": "extract", "status": "ran", "seconds": 10.0}, {"step": "fuse", "status": "skipped", "seconds": 2.5}]})
    runinfo.write_json(root, "reports/benchmark.json", {
        "speedup_vs_sequential": 1.21, "fraction_of_ceiling": 0.83, "startup_s": 4.2,
        "stages": {"decode": {"pipeline": 3.1, "standalone": 3.4, "ratio": 0.91}}, "peak_rss_mb": {"36s": 1800}})

    uri = write_report(root)

    text = storage.read_text(uri)
    assert "speedup_vs_sequential" in text and "1.21" in text and "standalone" in text and "0.91" in text
    assert "skipped" in text and "12.50" in text
    assert text.count("not run yet") == 6


@pytest.mark.parametrize("meta, expected", [
    ({"cell": "gru", "bidirectional": True, "layers": 2, "hidden": 512}, "S.BiGRU512"),
    ({"cell": "lstm", "bidirectional": False, "layers": 1, "hidden": 256, "attention": True}, "LSTM256+att"),
    ({}, ""),
])
def test_rnn_notation_follows_the_paper(meta, expected):
    assert rnn_notation(meta) == expected



def test_class_names_are_drawn_as_text_not_mathtext(tmp_path):
    import numpy as np

    from multistream.report.figures import Figures, confusion_figure

    names = ["A$b$_c^d", "\\frac", "$\\frac$", "x$^$"]  # "$\frac$" is a mathtext syntax error
    fig = confusion_figure(names, np.arange(16).reshape(4, 4))
    tag = Figures(str(tmp_path / "run"))("confusion", fig, "confusion matrix")
    assert tag.startswith('<img alt="confusion matrix" src="data:image/png;base64,')
    assert (tmp_path / "run" / "reports" / "figures" / "confusion.png").read_bytes().startswith(PNG_MAGIC)
    for labels in (fig.axes[0].get_xticklabels(), fig.axes[0].get_yticklabels()):
        assert [label.get_text() for label in labels] == names
        assert not any(label.get_parse_math() or label.get_usetex() for label in labels)
