"""report.html: one self-contained page per run (image, text, audio, segmentation), escaped, and
rendered by a real headless browser when chromium is installed."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import wave

import numpy as np
import pytest

from tlmulti.reports.html import write_report

CLASSES = ["cat", "dog", "bird"]
SCRIPT = "<script>alert(1)</script>"


def _classification(rng, classes=CLASSES, groups=False):
    n = len(classes)
    cm = rng.integers(0, 20, (n, n)) + np.eye(n, dtype=int) * 50
    per = {c: {"precision": 0.8 - 0.1 * i, "recall": 0.7 + 0.05 * i, "f1": 0.75 - 0.1 * i,
               "support": int(cm[i].sum())} for i, c in enumerate(classes)}
    out = {"accuracy": 0.8123, "loss": 0.5432, "macro_f1": 0.7788, "n": int(cm.sum()),
           "per_class": per, "confusion_matrix": cm.tolist()}
    if groups:
        out.update({"group_by": "accent",
                    "by_group": {"us": {"accuracy": 0.9, "n": 40}, "scottish": {"accuracy": 0.55, "n": 12}},
                    "worst_group": {"group": "scottish", "accuracy": 0.55},
                    "groups": {"speaker_age": {"by_group": {"young": {"accuracy": 0.85, "n": 30},
                                                            "old": {"accuracy": 0.7, "n": 22}},
                                               "worst_group": {"group": "old", "accuracy": 0.7}}}})
    return out


def _history(metric="accuracy"):
    rows = []
    for e, phase in enumerate(["head", "head", "head", "top<blocks>", "top<blocks>"], start=1):
        rows.append({"phase": phase, "epoch": e, "loss": 1.0 / e, "val_loss": 1.1 / e + 0.02,
                     metric: 0.5 + 0.08 * e, f"val_{metric}": 0.48 + 0.07 * e})
    return rows


def _metrics(val, test):
    return {
        "val": val, "test": test,
        "timing": {"phase_seconds": [3.2, 8.75], "train_seconds": 12.5, "total_seconds": 14.0},
        "phases": [
            {"name": "head", "epochs_planned": 3, "epochs_run": 3, "learning_rate": 1e-3,
             "unfrozen_groups": [], "batchnorm": "frozen", "feature_cache": True, "seconds": 3.2},
            {"name": "top<blocks>", "epochs_planned": 2, "epochs_run": 2, "learning_rate": 1e-4,
             "unfrozen_groups": ["block5", "block6"], "batchnorm": "frozen", "feature_cache": False,
             "seconds": 8.75},
        ],
        "data": {"train": 300, "val": 60, "test": 90, "classes": 3},
    }


def _summary(inputs):
    return {"splits": {s: {"n": n, "per_class": {c: n // 3 for c in CLASSES}}
                       for s, n in (("train", 300), ("val", 60), ("test", 90))},
            "warnings": ["Classes with fewer than 5 training examples: bird & <friends>"],
            "inputs": inputs}


def _examples(kind, rng, n=4, **media):
    out = []
    for i in range(n):
        ex = {"name": f"{kind}_{i}.dat", "true": CLASSES[i % 3], "predicted": CLASSES[(i + 1) % 3],
              "probability": 0.9 - 0.1 * i, "loss": 2.5 - 0.3 * i, "kind": kind,
              "image": None, "text": None, "audio": None, "sample_rate": None}
        ex.update({k: (v(i) if callable(v) else v) for k, v in media.items()})
        out.append(ex)
    return out


@pytest.fixture(scope="module")
def image_report(tmp_path_factory):
    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("image_run")
    examples = _examples("image", rng, n=5, image=lambda i: rng.integers(0, 255, (28, 28) if i % 2 else (20, 24, 3),
                                                                         dtype=np.uint8))
    examples.append({**examples[0], "name": "big.png", "image": rng.integers(0, 255, (400, 300, 3), dtype=np.uint8)})
    path = write_report(
        run, title="shapes / tiny_cnn", headline="Test accuracy 81.2% after 2 phases",
        task="image_classification", metrics=_metrics(_classification(rng), _classification(rng, groups=True)),
        history=_history(), classes=CLASSES, examples=examples,
        summary=_summary({"image_sizes": {"28x28": 250, "20x24": 50}, "channels": {"1": 250, "3": 50}}))
    return path


def _imgs(page):
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def _assert_self_contained(page):
    assert 'src="http' not in page and "href=\"http" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    imgs = _imgs(page)
    assert page.count("<img") == len(imgs)
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    for src in imgs:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "could not be shown" not in page


def test_image_report(image_report):
    assert image_report.name == "report.html" and image_report.exists()
    page = image_report.read_text()
    _assert_self_contained(page)
    assert "Test accuracy 81.2% after 2 phases" in page
    for c in CLASSES:
        assert c in page
    assert "bird &amp; &lt;friends&gt;" in page  # the warning, escaped
    assert "scottish" in page and "Worst group" in page and "old" in page  # by_group and groups
    assert "top&lt;blocks&gt;" in page and "top<blocks>" not in page
    assert "block5, block6" in page and "12.5 s" in page
    assert len(_imgs(page)) >= 2 + 6  # curves, confusion matrix, thumbnails
    # thumbnails: tiny ones upscaled to >= 96 px, big ones down to <= 160 px on the longer side
    from PIL import Image

    sizes = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).size for s in _imgs(page)]
    thumbs = sizes[-6:]
    assert all(96 <= max(s) <= 160 for s in thumbs), thumbs


def test_text_report_escapes(tmp_path):
    rng = np.random.default_rng(1)
    long_text = "x" * 2000
    examples = _examples("text", rng, n=3, text=lambda i: f"Hello {SCRIPT} & bye" if i == 0 else long_text)
    path = write_report(
        tmp_path, title="spam <b>", headline="Macro F1 0.78", task="text_classification",
        metrics=_metrics({}, _classification(rng)), history=_history(), classes=CLASSES, examples=examples,
        summary=_summary({"text_tokens": {"median": 80, "p95": 300, "truncated": 12, "sequence_length": 128}}))
    page = path.read_text()
    _assert_self_contained(page)
    assert SCRIPT not in page and "<script" not in page
    assert "Hello &lt;script&gt;alert(1)&lt;/script&gt; &amp; bye" in page
    assert "spam &lt;b&gt;" in page
    assert "x" * 400 in page and "x" * 401 not in page  # cut to 400 characters
    assert "text_tokens.sequence_length" in page and "128" in page


def test_audio_report_wav(tmp_path):
    rng = np.random.default_rng(2)
    rate = 16000
    t = np.arange(int(0.5 * rate)) / rate
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    examples = _examples("audio", rng, n=2, audio=sine, sample_rate=rate)
    path = write_report(
        tmp_path, title="commands", headline="Worst accent: scottish", task="speech_classification",
        metrics=_metrics(_classification(rng, groups=True), {}), history=_history(), classes=CLASSES,
        examples=examples, summary=_summary({"audio_seconds": {"median": 0.8, "p95": 1.2, "clip_seconds": 1.0,
                                                               "cropped": 3}}))
    page = path.read_text()
    _assert_self_contained(page)
    srcs = re.findall(r'<audio[^>]*\ssrc="([^"]*)"', page)
    assert len(srcs) == 2 and all(s.startswith("data:audio/wav;base64,") for s in srcs)
    with wave.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, rate, len(t))
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert abs(pcm.max() / 32767 - 0.5) < 0.01
    assert "scottish" in page and "validation" in page  # no test set: val is shown


def test_segmentation_report(tmp_path):
    from tlmulti.evaluation import segmentation_metrics
    from tlmulti.reports.overlays import class_colours, overlay_panel

    rng = np.random.default_rng(3)
    classes = ["background", "nucleus", "membrane"]
    cm = rng.integers(0, 1000, (3, 3)) + np.diag([50000, 8000, 3000])
    seg = segmentation_metrics(cm, classes)
    colours = class_colours(classes)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    truth = rng.integers(0, 3, (32, 32))
    panel = np.asarray(overlay_panel(image, rng.integers(0, 3, (32, 32)), truth, colours))
    examples = _examples("overlay", rng, n=2, image=panel)
    for ex in examples:
        ex.update(true="", predicted="", probability=None)
    history = [{k.replace("accuracy", "iou"): v for k, v in r.items()} for r in _history()]
    from tlmulti.tasks.segmentation import Segmentation

    path = write_report(tmp_path, title="nuclei", headline="Mean Dice 0.71", task="segmentation",
                        view=Segmentation.report_view,
                        metrics=_metrics(seg, seg), history=history, classes=classes, examples=examples,
                        summary={"splits": {"train": {"n": 20}, "val": {"n": 4}}, "warnings": [],
                                 "inputs": {"tile": [256, 256]}})
    page = path.read_text()
    _assert_self_contained(page)
    assert "mean Dice" in page and "pixel accuracy" in page and "Pixel confusion matrix" in page
    assert "membrane" in page and "accuracy</th>" not in page.split("Per class")[1].split("</table>")[0]
    assert 'class="overlay"' in page


def test_missing_parts(tmp_path):
    path = write_report(tmp_path / "new", title="t", headline="nothing yet", task="image_classification",
                        metrics={"val": {}, "test": {}}, history=[])
    page = path.read_text()
    assert "nothing yet" in page and "<img" not in page and "could not be shown" not in page

    odd = write_report(tmp_path, title="t", headline="odd", task="text_classification",
                       metrics={"test": {"accuracy": 0.5, "per_class": "?", "confusion_matrix": [1, 2]}},
                       history=[{"phase": "head"}], summary={"warnings": []},
                       examples=[{"kind": "image", "image": None, "name": "gone.png"}, "not a dict"])
    page = odd.read_text()
    assert "odd" in page and "gone.png" in page and "<img" not in page


def test_adaptation_candidates_table(tmp_path):
    adaptation = {"method": "auto", "chosen": "adabn", "target_examples": 200, "criterion": "entropy and balance",
                  "guard": {"metric": "accuracy", "margin": 0.02, "source_only": 0.9},
                  "candidates": {"none": {"source_val": 0.9, "target_entropy": 0.4, "target_balance_kl": 0.2,
                                          "score": -0.6},
                                 "adabn": {"source_val": 0.89, "target_entropy": 0.2, "target_balance_kl": 0.05,
                                           "score": -0.25, "guard": "ok"},
                                 "dann": {"skipped": "no <layer> group trains"}}}
    page = write_report(tmp_path, title="t", headline="h", task="image_classification",
                        metrics={"test": {"accuracy": 0.8}, "timing": {"train_seconds": 3.0},
                                 "adaptation": adaptation}, history=[]).read_text()
    assert "kept <b>adabn</b>" in page and "source-only" in page and "-0.25" in page
    assert "not applicable: no &lt;layer&gt; group trains" in page


CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_renders(image_report, tmp_path):
    from PIL import Image

    url = image_report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile1'}",
                             f"--screenshot={shot}", "--window-size=1200,2000", url],
                            check=False, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert shot.exists()
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2000, 1200) and pixels.std() > 0

    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url],
                            check=False, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    dom = result.stdout.decode()
    assert "Test accuracy 81.2% after 2 phases" in dom and "scottish" in dom
