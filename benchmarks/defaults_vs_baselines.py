"""The zero-flag CLI (no recipe: only --data / --val-data / --test-data) against a classic
baseline on the same data, in one script, on small public sets available offline.

| data | tlmulti command | baseline |
|---|---|---|
| Fashion-MNIST, 1,000 train images (100 per class), 2,000 test | ``tlmulti vision train`` | logistic regression on the raw pixels |
| SpamAssassin, 500 mails as a plain ``text,label`` CSV, 1,000 test | ``tlmulti text train`` | TF-IDF + logistic regression |
| synthesised commands: espeak-ng accents to train, flite voices to test | ``tlmulti audio train`` | logistic regression on log-mel mean/std |
| nuclei: train region / val region / test region | ``tlmulti vision train --task segmentation`` | Otsu threshold (foreground Dice) |

The data are written as a user would have them (class folders, a CSV with one text column, a
manifest), then each command runs in a subprocess; wall times include start-up and data reading.

    python benchmarks/defaults_vs_baselines.py [--only images text speech nuclei] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TLMULTI = [sys.executable, "-c", "from tlmulti.cli import main; main()"]


def _cli(args, out: Path) -> tuple[dict, float]:
    t = time.perf_counter()
    proc = subprocess.run(TLMULTI + args + ["--out", str(out), "--set", "callbacks.verbose=0"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text()), seconds


def _dataset(ref: str) -> Path:
    from tlmulti.datasets import dataset_path

    return dataset_path(ref)


def images(tmp: Path) -> dict:
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tlmulti.data.manifest import rows_from

    def rows(ref, per_class=None):
        out, seen = [], {}
        for r in rows_from(_dataset(ref), (".png",)):
            if per_class is None or seen.get(r["label"], 0) < per_class:
                seen[r["label"]] = seen.get(r["label"], 0) + 1
                out.append(r)
        return out

    train, test = rows("dataset:fashion-mnist/train", 100), rows("dataset:fashion-mnist/test")
    folder = tmp / "fashion_1000"
    for r in train:
        (folder / r["label"]).mkdir(parents=True, exist_ok=True)
        Image.open(r["path"]).save(folder / r["label"] / Path(r["path"]).name)
    metrics, seconds = _cli(["vision", "train", "--data", str(folder), "--test-data",
                             str(_dataset("dataset:fashion-mnist/test"))], tmp / "run_images")
    t = time.perf_counter()
    x = lambda rs: np.stack([np.asarray(Image.open(r["path"]), np.float32).ravel() for r in rs])  # noqa: E731
    scaler = StandardScaler().fit(x(train))
    lr = LogisticRegression(max_iter=2000).fit(scaler.transform(x(train)), [r["label"] for r in train])
    base = lr.score(scaler.transform(x(test)), [r["label"] for r in test])
    return {"data": "Fashion-MNIST 1,000 / 2,000", "metric": "accuracy", "tlmulti": metrics["test"]["accuracy"],
            "tlmulti_s": seconds, "baseline": "logistic regression on pixels", "baseline_value": base,
            "baseline_s": time.perf_counter() - t}


def text(tmp: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def plain(ref, path):
        with open(_dataset(ref), encoding="utf-8") as f:  # the built dataset: JSONL with subject and body
            rows = [{"text": f"{r['subject']}\n{r['body']}".strip(), "label": r["label"]}
                    for r in map(json.loads, filter(str.strip, f))]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        return rows

    train = plain("dataset:spam-assassin/train500", tmp / "mails_train.csv")
    test = plain("dataset:spam-assassin/test", tmp / "mails_test.csv")
    metrics, seconds = _cli(["text", "train", "--data", str(tmp / "mails_train.csv"), "--test-data",
                             str(tmp / "mails_test.csv")], tmp / "run_text")
    t = time.perf_counter()
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))
    lr = LogisticRegression(max_iter=2000, C=10.0).fit(vec.fit_transform([r["text"] for r in train]),
                                                       [r["label"] for r in train])
    base = lr.score(vec.transform([r["text"] for r in test]), [r["label"] for r in test])
    return {"data": "SpamAssassin 500 / 1,000", "metric": "accuracy", "tlmulti": metrics["test"]["accuracy"],
            "tlmulti_s": seconds, "baseline": "TF-IDF + logistic regression", "baseline_value": base,
            "baseline_s": time.perf_counter() - t}


def speech(tmp: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tlmulti.data.audio import AudioContract, load_clip, log_mel
    from tlmulti.data.manifest import rows_from

    train_csv, test_csv = (_dataset("dataset:speech-commands-synth/espeak"),
                           _dataset("dataset:speech-commands-synth/flite"))
    metrics, seconds = _cli(["audio", "train", "--data", str(train_csv), "--test-data", str(test_csv)],
                            tmp / "run_speech")
    t = time.perf_counter()
    contract = AudioContract(clip_seconds=1.0)

    def feats(path):
        rows = rows_from(path, (".wav",))
        x = []
        for r in rows:
            m = log_mel(load_clip(r["path"], contract), contract)
            x.append(np.concatenate([m.mean(0), m.std(0)]))
        return np.stack(x), [r["label"] for r in rows]

    xtr, ytr = feats(train_csv)
    xte, yte = feats(test_csv)
    scaler = StandardScaler().fit(xtr)
    base = LogisticRegression(max_iter=3000).fit(scaler.transform(xtr), ytr).score(scaler.transform(xte), yte)
    return {"data": "commands: espeak-ng train / flite test", "metric": "accuracy",
            "tlmulti": metrics["test"]["accuracy"], "tlmulti_s": seconds,
            "baseline": "logistic regression on log-mel mean/std", "baseline_value": base,
            "baseline_s": time.perf_counter() - t}


def nuclei(tmp: Path) -> dict:
    from skimage.filters import threshold_otsu

    from tlmulti.data.masks import read_mask
    from tlmulti.data.medical import read_stack
    from tlmulti.evaluation import confusion, segmentation_metrics

    refs = {s: str(_dataset(f"dataset:nuclei/{s}")) for s in ("train", "val", "test")}
    metrics, seconds = _cli(["vision", "train", "--task", "segmentation", "--data", refs["train"], "--val-data",
                             refs["val"], "--test-data", refs["test"], "--set", "data.binarize_masks=true"],
                            tmp / "run_nuclei")
    t = time.perf_counter()
    folder = Path(refs["test"])
    image = read_stack(next((folder / "images").iterdir()))[0][0, ..., 0].astype(np.float64)
    mask = read_mask(next((folder / "masks").iterdir()), binarize=True)[0]
    pred = (image > threshold_otsu(image)).astype(int)
    base = segmentation_metrics(confusion(mask, pred, 2), ["background", "nucleus"])["mean_dice"]
    return {"data": "nuclei (stardist image), test region", "metric": "foreground Dice",
            "tlmulti": metrics["test"]["mean_dice"], "tlmulti_s": seconds, "baseline": "Otsu threshold",
            "baseline_value": base, "baseline_s": time.perf_counter() - t}


RUNS = {"images": images, "text": text, "speech": speech, "nuclei": nuclei}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            rows.append(RUNS[name](Path(tmp)))
            r = rows[-1]
            print(f"{r['data']}: tlmulti {r['tlmulti']:.4f} ({r['tlmulti_s']:.0f} s)  {r['baseline']} "
                  f"{r['baseline_value']:.4f} ({r['baseline_s']:.0f} s)", flush=True)
    print(f"\n| data | metric | tlmulti zero-flag | wall s | baseline | baseline value | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['metric']} | {r['tlmulti']:.3f} | {r['tlmulti_s']:.0f} | {r['baseline']} | "
              f"{r['baseline_value']:.3f} | {r['baseline_s']:.0f} |")
    wins = sum(r["tlmulti"] > r["baseline_value"] for r in rows)
    print(f"\ntransfer wins {wins} of {len(rows)} rows")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
