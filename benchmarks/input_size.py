"""Input size on small images: the zero-flag image command with ``--strategy fixed`` (the default
recipe's phases as written) at the images' native side times 2 and times 4, and at the backbone's
contract (224 px for EfficientNet-Lite0, the default), in one script on the same data and split.

| set | native side | sizes run |
|---|---|---|
| ``digits``: scikit-learn's 8 x 8 grey digits, 800 training images (80 per class), 997 test | 8 | 16, 32, 224 |
| ``fashion``: Fashion-MNIST, 1,000 training images (100 per class), 2,000 test | 28 | 56, 112, 224 |
| ``patches``: the nuclei patches, 588 training patches, 196 test patches of unseen regions | 32 | 64, 128, 224 |

Each row prints the test metric (accuracy; AUROC of ``nucleus`` for the patches), the wall
seconds of the whole command (reading, both phases, evaluation) and its ratio to the run at the
contract, and the seconds per epoch of the fine-tuning phase (from ``metrics.json``).
``strategy: auto`` chooses among 4x and 2x the median side (at least 96 px) itself; this script
shows what each size costs and gives without a search.

    python benchmarks/input_size.py [--only digits fashion patches] [--json out.json]
"""

from __future__ import annotations

import argparse
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
CONTRACT = 224


def _dataset(ref: str) -> Path:
    from tlmulti.datasets import dataset_path

    return dataset_path(ref)


def digits(tmp: Path):
    from PIL import Image
    from sklearn.datasets import load_digits

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
    return 8, ["--data", str(tmp / "digits_train"), "--test-data", str(tmp / "digits_test")], "accuracy"


def fashion(tmp: Path):
    import shutil

    from tlmulti.data.manifest import rows_from

    seen = {}
    for r in rows_from(_dataset("dataset:fashion-mnist/train"), (".png",)):
        if seen.get(r["label"], 0) < 100:
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            (tmp / "fashion" / r["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(r["path"], tmp / "fashion" / r["label"] / Path(r["path"]).name)
    return 28, ["--data", str(tmp / "fashion"), "--test-data", str(_dataset("dataset:fashion-mnist/test"))], "accuracy"


def patches(tmp: Path):
    train, test = _dataset("dataset:nuclei-patches/train"), _dataset("dataset:nuclei-patches/test")
    return 32, ["--data", str(train), "--test-data", str(test), "--split-by", "region",
                "--set", "data.positive_class=nucleus"], "auroc"


SETS = {"digits": digits, "fashion": fashion, "patches": patches}


def run(name: str, tmp: Path) -> list[dict]:
    native, args, metric = SETS[name](tmp)
    rows = []
    for side in (native * 2, native * 4, CONTRACT):
        out = tmp / f"run_{name}_{side}"
        t = time.perf_counter()
        proc = subprocess.run(TLMULTI + ["vision", "train", *args, "--strategy", "fixed", "--set",
                                         f"data.image_size=[{side}, {side}]", "--set", "callbacks.verbose=0",
                                         "--out", str(out)], capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"{name} at {side} px failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        m = json.loads((out / "metrics.json").read_text())
        tuned = [p for p in m.get("phases", []) if p.get("unfrozen_groups")]
        per_epoch = (tuned[-1]["seconds"] - (tuned[-1].get("cut_cache") or {}).get("cache_seconds", 0.0)) / max(
            1, tuned[-1].get("epochs_run") or 1) if tuned else None
        rows.append({"set": name, "side": side, "native": native, "metric": metric,
                     "test": m["test"][metric], "seconds": seconds, "finetune_epoch_s": per_epoch})
        print(f"  {name} {side:>3} px: test {metric} {m['test'][metric]:.4f}, {seconds:.0f} s", flush=True)
    base = rows[-1]["seconds"]
    for r in rows:
        r["time_vs_contract"] = r["seconds"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            folder = Path(tmp) / name
            folder.mkdir()
            rows += run(name, folder)
    print("\n| set | input px (x native) | test metric | wall s | time vs 224 px | fine-tuning s/epoch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        epoch = f"{r['finetune_epoch_s']:.1f}" if r["finetune_epoch_s"] is not None else ""
        print(f"| {r['set']} | {r['side']} ({r['side'] / r['native']:g}x) | {r['metric']} {r['test']:.4f} | "
              f"{r['seconds']:.0f} | {r['time_vs_contract']:.2f}x | {epoch} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
