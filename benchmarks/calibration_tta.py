"""Temperature scaling and test-time augmentation, measured on the rows of
``benchmarks/defaults_vs_baselines.py`` and on the shifted nuclei segmentation recipe.

Each classification row trains the zero-flag CLI once with ``--calibration temperature``: the
temperature is fitted after training, so the same run gives the ECE and negative log-likelihood
before and after it (validation and test) and the accuracy / AUROC, which temperature scaling
does not change. Image rows are then evaluated on their test set with ``vision evaluate --tta``
(the metric with and without it, and the seconds of each evaluation). The ``stain_shift`` row
trains ``recipes/vision/nuclei_stain_shift.yaml`` (source-only) and evaluates its shifted test
region with and without ``--tta`` (mean Dice); ``detection`` trains
``recipes/vision/nuclei_detection.yaml`` and evaluates its test tiles with and without it (mAP@0.5).

``patches_recipe`` trains ``recipes/vision/nuclei_patches.yaml`` (flips both ways in training, so
the test-time views are ones the model learnt) with temperature scaling.

    python benchmarks/calibration_tta.py [--only digits images patches speech text patches_recipe stain_shift detection]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import defaults_vs_baselines as dvb  # noqa: E402

dvb.ARMS["calibrated"] = ["--calibration", "temperature"]
dvb.CHOSEN_ARMS = ["calibrated"]
ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = {"digits": lambda tmp: tmp / "digits_test", "images": lambda tmp: dvb._dataset("dataset:fashion-mnist/test"),
             "patches": lambda tmp: dvb._dataset("dataset:nuclei-patches/test")}


def _tta(run_dir: Path, data: Path) -> dict:
    proc = subprocess.run(dvb.TLMULTI + ["vision", "evaluate", str(run_dir), "--data", str(data), "--tta", "--json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluate --tta failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def classification_row(name: str, tmp: Path) -> dict:
    row = dvb.RUNS[name](tmp)
    run_dir = tmp / f"run_{name}_calibrated"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cal = metrics.get("calibration", {})
    out = {"data": row["data"], "metric": row["metric"], "value": row["tlmulti"]["calibrated"],
           "temperature": cal.get("temperature"), "val": cal.get("val"), "test": cal.get("test"),
           "train_s": row["tlmulti_s"]["calibrated"]}
    if name in TEST_DATA:
        key = "auroc" if row["metric"] == "AUROC" else "accuracy"
        t = _tta(run_dir, TEST_DATA[name](tmp))
        out["tta"] = {"views": t["tta"]["views"], "without": t["without_tta"][key], "with": t[key],
                      "seconds_without": t["tta"]["seconds_without"], "seconds": t["tta"]["seconds"]}
    return out


def patches_recipe_row(tmp: Path) -> dict:
    """``recipes/vision/nuclei_patches.yaml`` (trained with flips both ways) with temperature scaling."""
    run_dir = tmp / "run_patches_recipe"
    start = time.perf_counter()
    proc = subprocess.run(dvb.TLMULTI + ["run", str(ROOT / "recipes/vision/nuclei_patches.yaml"), "--out", str(run_dir),
                                         "--set", "callbacks.verbose=0", "--set", "output.plots=false",
                                         "--set", "calibration=temperature"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"patches recipe run failed:\n{proc.stderr[-2000:]}")
    seconds = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cal = metrics["calibration"]
    t = _tta(run_dir, dvb._dataset("dataset:nuclei-patches/test"))
    return {"data": "nuclei patches, recipes/vision/nuclei_patches.yaml", "metric": "AUROC",
            "value": metrics["test"]["auroc"], "temperature": cal["temperature"], "val": cal["val"],
            "test": cal["test"], "train_s": seconds,
            "tta": {"views": t["tta"]["views"], "without": t["without_tta"]["auroc"], "with": t["auroc"],
                    "seconds_without": t["tta"]["seconds_without"], "seconds": t["tta"]["seconds"]}}


def _recipe_tta_row(tmp: Path, recipe: str, test: str, key: str, data: str, metric: str) -> dict:
    """Train ``recipe`` as written, then evaluate ``test`` with and without ``--tta``."""
    run_dir = tmp / "run"
    start = time.perf_counter()
    proc = subprocess.run(dvb.TLMULTI + ["run", str(ROOT / recipe), "--out", str(run_dir), "--set",
                                         "callbacks.verbose=0", "--set", "output.plots=false"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} failed:\n{proc.stderr[-2000:]}")
    seconds = time.perf_counter() - start
    t = _tta(run_dir, dvb._dataset(test))
    return {"data": data, "metric": metric, "train_s": seconds,
            "tta": {"views": t["tta"]["views"], "without": t["without_tta"][key], "with": t[key],
                    "seconds_without": t["tta"]["seconds_without"], "seconds": t["tta"]["seconds"]}}


def stain_shift_row(tmp: Path) -> dict:
    return _recipe_tta_row(tmp, "recipes/vision/nuclei_stain_shift.yaml", "dataset:nuclei-shift/test", "mean_dice",
                           "nuclei segmentation, shifted test region", "mean Dice")


def detection_row(tmp: Path) -> dict:
    return _recipe_tta_row(tmp, "recipes/vision/nuclei_detection.yaml", "dataset:nuclei-boxes/test", "map50",
                           "nuclei detection, test tiles", "mAP@0.5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["digits", "images", "patches", "speech", "text", "patches_recipe", "stain_shift", "detection"]
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            print(f"== {name}", flush=True)
            folder = Path(tmp) / name
            folder.mkdir()
            special = {"stain_shift": stain_shift_row, "patches_recipe": patches_recipe_row, "detection": detection_row}
            rows.append(special[name](folder) if name in special else classification_row(name, folder))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| data | metric | value | T | val ECE before -> after | test ECE before -> after | "
          "test NLL before -> after | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "test" in r and r["test"]:
            v, t = r["val"], r["test"]
            temp = r["temperature"] if isinstance(r["temperature"], float) else r["temperature"]
            print(f"| {r['data']} | {r['metric']} | {r['value']:.3f} | {temp:.2f} | {v['ece_before']:.3f} -> "
                  f"{v['ece_after']:.3f} | {t['ece_before']:.3f} -> {t['ece_after']:.3f} | {t['nll_before']:.3f} -> "
                  f"{t['nll_after']:.3f} | {r['train_s']:.0f} |")
    print("\n| data | metric | views | without TTA | with TTA | evaluation s without -> with (ratio) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "tta" in r:
            t = r["tta"]
            print(f"| {r['data']} | {r['metric']} | {t['views']} | {t['without']:.4f} | {t['with']:.4f} | "
                  f"{t['seconds_without']:.1f} -> {t['seconds']:.1f} ({t['seconds'] / t['seconds_without']:.2f}x) |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
