"""The zero-flag CLI (no recipe: only --data / --val-data / --test-data) against a classic
baseline on the same data, in one script, on small public sets available offline.

| data | tlmulti command | baseline |
|---|---|---|
| Fashion-MNIST, 1,000 train images (100 per class), 2,000 test | ``tlmulti vision train`` | logistic regression on the raw pixels |
| SpamAssassin, 500 mails as a plain ``text,label`` CSV, 1,000 test | ``tlmulti text train`` | TF-IDF + logistic regression |
| fortunes: 24 noisy categories of quotes (Debian ``fortunes``), 720 train, 720 test | ``tlmulti text train`` | TF-IDF + logistic regression |
| packages: Debian package one-line summaries, 21 archive sections, 630 train, 630 test | ``tlmulti text train`` | TF-IDF + logistic regression |
| synthesised commands: espeak-ng accents to train, flite voices to test | ``tlmulti audio train`` | logistic regression on log-mel mean/std |
| nuclei: train region / val region / test region | ``tlmulti vision train --task segmentation`` | Otsu threshold (foreground Dice) |

The data are written as a user would have them (class folders, a CSV with one text column, a
manifest), then each command runs in a subprocess; wall times include start-up and data reading.

Each tlmulti command runs once per arm: ``auto`` (zero flags: the default recipes say ``strategy:
auto``, so depths, rates, input sizes, flips and pooling are compared on the validation split
first, see ``tlmulti.training.strategy``) and ``fixed`` (the same command with ``--strategy
fixed``: the default recipe's phases as written); the auto row names the strategy it kept and the
wall time against the fixed run. Two more classification rows far
from ImageNet: ``digits`` (scikit-learn's 8 x 8 grey digits, 800 training images, 997 test) and
``patches`` (nuclei patches, 16-bit-like microscopy crops, region-split test; AUROC).

    python benchmarks/defaults_vs_baselines.py [--only digits images patches text fortunes packages speech nuclei]
        [--arms fixed auto tune] [--json out.json]

``--arms tune`` adds the same command with ``--tune 20`` (an Optuna study of 20 trials, then the
best trained in full; not run by default: twenty trainings per row).
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


ARMS = {"fixed": ["--strategy", "fixed"], "auto": [], "tune": ["--tune", "20"]}
CHOSEN_ARMS = ["fixed", "auto"]


class _Runs(dict):
    """arm -> (metrics.json, wall seconds) of one tlmulti command run once per chosen arm."""

    def value(self, key: str) -> dict:
        return {arm: m["test"][key] for arm, (m, _) in self.items()}

    def seconds(self) -> dict:
        return {arm: s for arm, (_, s) in self.items()}

    def strategy(self) -> dict:
        return {arm: m.get("strategy", {}).get("chosen") for arm, (m, _) in self.items()}

    def tune(self) -> dict:
        return {arm: (m["tune"].get("best") or {}).get("params") for arm, (m, _) in self.items() if "tune" in m}

    def candidates(self) -> dict:
        return {arm: m["strategy"]["candidates"] for arm, (m, _) in self.items() if "strategy" in m}


def _cli(args, out: Path) -> _Runs:
    runs = _Runs()
    for arm in CHOSEN_ARMS:
        t = time.perf_counter()
        folder = out.with_name(f"{out.name}_{arm}")
        proc = subprocess.run(TLMULTI + args + ARMS[arm] + ["--out", str(folder), "--set", "callbacks.verbose=0"],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        runs[arm] = (json.loads((folder / "metrics.json").read_text()), seconds)
        print(f"  {' '.join(args[:2])} {arm}: {seconds:.0f} s", flush=True)
    return runs


def _row(data: str, metric: str, runs: _Runs, key: str, baseline: str, value: float, seconds: float) -> dict:
    return {"data": data, "metric": metric, "tlmulti": runs.value(key), "tlmulti_s": runs.seconds(),
            "strategy": runs.strategy(), "candidates": runs.candidates(), "tune": runs.tune(), "baseline": baseline,
            "baseline_value": value, "baseline_s": seconds}


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
    runs = _cli(["vision", "train", "--data", str(folder), "--test-data",
                 str(_dataset("dataset:fashion-mnist/test"))], tmp / "run_images")
    t = time.perf_counter()
    x = lambda rs: np.stack([np.asarray(Image.open(r["path"]), np.float32).ravel() for r in rs])  # noqa: E731
    scaler = StandardScaler().fit(x(train))
    lr = LogisticRegression(max_iter=2000).fit(scaler.transform(x(train)), [r["label"] for r in train])
    base = lr.score(scaler.transform(x(test)), [r["label"] for r in test])
    return _row("Fashion-MNIST 1,000 / 2,000", "accuracy", runs, "accuracy", "logistic regression on pixels", base,
                time.perf_counter() - t)


def digits(tmp: Path) -> dict:
    """scikit-learn's 8 x 8 digits (grey, 17 levels) as PNG class folders: 80 per class to train."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, seen = [], {}
    for i in order:
        if seen.get(y[i], 0) < 80:
            seen[y[i]] = seen.get(y[i], 0) + 1
            train.append(i)
    test = sorted(set(range(len(y))) - set(train))
    for split, idx in (("train", train), ("test", test)):
        for i in idx:
            folder = tmp / f"digits_{split}" / f"d{y[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    runs = _cli(["vision", "train", "--data", str(tmp / "digits_train"), "--test-data", str(tmp / "digits_test")],
                tmp / "run_digits")
    t = time.perf_counter()
    scaler = StandardScaler().fit(x[train])
    base = LogisticRegression(max_iter=3000).fit(scaler.transform(x[train]), y[train]).score(
        scaler.transform(x[test]), y[test])
    return _row(f"digits 8 x 8 grey, {len(train)} / {len(test)}", "accuracy", runs, "accuracy",
                "logistic regression on pixels", base, time.perf_counter() - t)


def patches(tmp: Path) -> dict:
    """The nuclei patches (does a 32 px patch hold a nucleus centre?), test regions unseen."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from tlmulti.data.manifest import rows_from

    refs = {s: _dataset(f"dataset:nuclei-patches/{s}") for s in ("train", "test")}
    runs = _cli(["vision", "train", "--data", str(refs["train"]), "--test-data", str(refs["test"]),
                 "--split-by", "region", "--set", "data.positive_class=nucleus"], tmp / "run_patches")
    t = time.perf_counter()
    rows = {s: rows_from(refs[s], (".png", ".tif", ".tiff")) for s in refs}
    x = {s: np.stack([np.asarray(Image.open(r["path"]).convert("L").resize((16, 16)), np.float32).ravel()
                      for r in rows[s]]) for s in rows}
    y = {s: np.array([r["label"] == "nucleus" for r in rows[s]]) for s in rows}
    scaler = StandardScaler().fit(x["train"])
    lr = LogisticRegression(max_iter=3000).fit(scaler.transform(x["train"]), y["train"])
    base = roc_auc_score(y["test"], lr.predict_proba(scaler.transform(x["test"]))[:, 1])
    return _row("nuclei patches 588 / 196 (unseen regions)", "AUROC", runs, "auroc",
                "logistic regression on 16 x 16 pixels", base, time.perf_counter() - t)


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
    runs = _cli(["text", "train", "--data", str(tmp / "mails_train.csv"), "--test-data",
                 str(tmp / "mails_test.csv")], tmp / "run_text")
    t = time.perf_counter()
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))
    lr = LogisticRegression(max_iter=2000, C=10.0).fit(vec.fit_transform([r["text"] for r in train]),
                                                       [r["label"] for r in train])
    base = lr.score(vec.transform([r["text"] for r in test]), [r["label"] for r in test])
    return _row("SpamAssassin 500 / 1,000", "accuracy", runs, "accuracy", "TF-IDF + logistic regression", base,
                time.perf_counter() - t)


def _text_set(tmp: Path, name: str, label: str) -> dict:
    """The zero-flag text command on built-in dataset ``name`` against TF-IDF n-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_csv, test_csv = _dataset(f"dataset:{name}/train"), _dataset(f"dataset:{name}/test")
    runs = _cli(["text", "train", "--data", str(train_csv), "--test-data", str(test_csv)], tmp / f"run_{name}")
    t = time.perf_counter()
    read = lambda path: list(csv.DictReader(open(path, newline="", encoding="utf-8")))  # noqa: E731
    train, test = read(train_csv), read(test_csv)
    vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
    lr = LogisticRegression(max_iter=2000, C=10.0).fit(vec.fit_transform([r["text"] for r in train]),
                                                       [r["label"] for r in train])
    base = lr.score(vec.transform([r["text"] for r in test]), [r["label"] for r in test])
    return _row(label, "accuracy", runs, "accuracy", "TF-IDF + logistic regression", base, time.perf_counter() - t)


def fortunes(tmp: Path) -> dict:
    """24 noisy categories of fortune-cookie quotes (Debian's fortunes), 30 per class each side."""
    return _text_set(tmp, "fortunes", "fortunes: 24 categories, 720 / 720")


def packages(tmp: Path) -> dict:
    """Debian package one-line summaries, 21 archive sections, 30 per class each side."""
    return _text_set(tmp, "debian-packages", "package summaries: 21 sections, 630 / 630")


def speech(tmp: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tlmulti.data.audio import AudioContract, load_clip, log_mel
    from tlmulti.data.manifest import rows_from

    train_csv, test_csv = (_dataset("dataset:speech-commands-synth/espeak"),
                           _dataset("dataset:speech-commands-synth/flite"))
    runs = _cli(["audio", "train", "--data", str(train_csv), "--test-data", str(test_csv)], tmp / "run_speech")
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
    return _row("commands: espeak-ng train / flite test", "accuracy", runs, "accuracy",
                "logistic regression on log-mel mean/std", base, time.perf_counter() - t)


def nuclei(tmp: Path) -> dict:
    from skimage.filters import threshold_otsu

    from tlmulti.data.masks import read_mask
    from tlmulti.data.medical import read_stack
    from tlmulti.evaluation import confusion, segmentation_metrics

    refs = {s: str(_dataset(f"dataset:nuclei/{s}")) for s in ("train", "val", "test")}
    runs = _cli(["vision", "train", "--task", "segmentation", "--data", refs["train"], "--val-data",
                 refs["val"], "--test-data", refs["test"], "--set", "data.binarize_masks=true"], tmp / "run_nuclei")
    t = time.perf_counter()
    folder = Path(refs["test"])
    image = read_stack(next((folder / "images").iterdir()))[0][0, ..., 0].astype(np.float64)
    mask = read_mask(next((folder / "masks").iterdir()), binarize=True)[0]
    pred = (image > threshold_otsu(image)).astype(int)
    base = segmentation_metrics(confusion(mask, pred, 2), ["background", "nucleus"])["mean_dice"]
    return _row("nuclei (stardist image), test region", "foreground Dice", runs, "mean_dice", "Otsu threshold", base,
                time.perf_counter() - t)


RUNS = {"digits": digits, "images": images, "patches": patches, "text": text, "fortunes": fortunes,
        "packages": packages, "speech": speech, "nuclei": nuclei}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(CHOSEN_ARMS))
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    CHOSEN_ARMS[:] = args.arms
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            rows.append(RUNS[name](Path(tmp)))
            r = rows[-1]
            arms = "  ".join(f"{a} {r['tlmulti'][a]:.4f} ({r['tlmulti_s'][a]:.0f} s)" for a in args.arms)
            print(f"{r['data']}: {arms}  {r['baseline']} {r['baseline_value']:.4f} ({r['baseline_s']:.0f} s)"
                  + (f"  auto kept: {r['strategy'].get('auto')}" if "auto" in args.arms else ""), flush=True)
            if args.json_path:
                Path(args.json_path).write_text(json.dumps(rows, indent=2))
    header = " | ".join(f"tlmulti {a} | wall s" for a in args.arms)
    print(f"\n| data | metric | {header} | baseline | baseline value | wall s |")
    print("|---|---|" + "---|---|" * len(args.arms) + "---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r['tlmulti'][a]:.3f} | {r['tlmulti_s'][a]:.0f}" for a in args.arms)
        print(f"| {r['data']} | {r['metric']} | {cells} | {r['baseline']} | {r['baseline_value']:.3f} | "
              f"{r['baseline_s']:.0f} |")
    for a in args.arms:
        wins = sum(r["tlmulti"][a] > r["baseline_value"] for r in rows)
        print(f"transfer ({a}) wins {wins} of {len(rows)} rows")
    for arm in ("auto", "tune"):
        if arm in args.arms and "fixed" in args.arms:
            for r in rows:
                print(f"{r['data']}: {arm} - fixed {r['tlmulti'][arm] - r['tlmulti']['fixed']:+.3f}, wall time {arm} / "
                      f"fixed {r['tlmulti_s'][arm] / r['tlmulti_s']['fixed']:.2f}x"
                      + (f", kept '{r['strategy'][arm]}'" if arm == "auto" else f", best trial {r['tune'][arm]}"))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
