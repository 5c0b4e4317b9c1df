"""Medical imaging: patient-level training on one scanner, clinical metrics, adaptation to another.

Real microscope pixels, offline: the 32x32 patches of the stardist nuclei image
(``dataset:nuclei-patches``; is there a nucleus at the patch centre?), whose sixteen image
regions stand in for patients. The script

1. trains EfficientNet-Lite0 (ImageNet) on scanner A with a patient-level validation split
   (``data.split_by: region``: no region has patches on both sides), from the bundled recipe
   ``recipes/vision/nuclei_patches.yaml``;
2. reports clinical metrics of ``nucleus``: AUROC with its bootstrap 95% interval, AUPRC,
   sensitivity and specificity at the threshold chosen on the validation patients (Youden's J);
3. simulates scanner B with the shift documented in ``tlmulti/datasets/nuclei_shift.py``
   (uneven illumination, gamma, defocus blur, sensor noise) applied to the whole image, then cut
   into the same patches: the training regions as scanner B sees them are the unlabelled target
   data, the four test regions (patients neither training nor adaptation sees) its labelled
   test set;
4. adapts the model to scanner B without labels (``adaptation.method``, default ``adabn``) and
   compares the source-only model with the adapted one on both scanners' test patients, each at
   its own validation threshold.

    python examples/medical_adaptation.py [--out runs/medical] [--method adabn] [--quick]

``--quick`` uses small inputs and few epochs (a smoke test). The nuclei data need the stardist
wheel once (``tlmulti datasets prepare nuclei``; see the README).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

import tlmulti


def make_scanner_b(out: Path) -> tuple[Path, Path]:
    """Scanner B's patches: ``unlabelled/`` (training regions, no labels) and ``test.csv``
    (``path,label,region`` of the test regions). Returns (unlabelled folder, test manifest)."""
    import tifffile

    from tlmulti.datasets.nuclei import load
    from tlmulti.datasets.nuclei_patches import GRID, TEST_REGIONS, patches
    from tlmulti.datasets.nuclei_shift import SHIFT, shift_image

    image, instances = load()  # the stardist image and its nuclei (offline once the wheel is there)
    shifted = shift_image(image, SHIFT["illumination_ramp"], SHIFT["gamma"], SHIFT["blur_sigma"],
                          SHIFT["noise_std"], SHIFT["seed"])
    # back to scanner A's units, so the recipe's fixed intensity window sees the changed contrast
    lo, hi = np.percentile(image, [1.0, 99.8])
    shifted = (lo + shifted.astype(np.float64) / 65535 * (hi - lo)).round().astype(image.dtype)
    test_regions = {f"r{i:02d}" for i in range(GRID * GRID - TEST_REGIONS, GRID * GRID)}
    unlabelled, labelled = out / "unlabelled", out / "test"
    unlabelled.mkdir(parents=True, exist_ok=True)
    labelled.mkdir(parents=True, exist_ok=True)
    rows = []
    for region, y, x, patch, label in patches(shifted, (instances > 0).astype(np.uint8)):
        name = f"{region}_y{y:03d}_x{x:03d}.tif"
        if region in test_regions:
            tifffile.imwrite(str(labelled / name), patch)
            rows.append({"path": f"test/{name}", "label": label, "region": region})
        else:
            tifffile.imwrite(str(unlabelled / name), patch)
    manifest = out / "test.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "region"])
        writer.writeheader()
        writer.writerows(rows)
    return unlabelled, manifest


def validation_manifest(run_dir: Path, out: Path) -> Path:
    """The run's validation patients as a ``path,label,region`` manifest (from ``splits.csv``)."""
    from tlmulti.datasets import prepare

    root = prepare("nuclei-patches")
    with open(root / "train.csv", newline="") as f:
        rows = {str((root / r["path"]).resolve()): r for r in csv.DictReader(f)}
    with open(run_dir / "splits.csv", newline="") as f:
        val = [str(Path(r["path"]).resolve()) for r in csv.DictReader(f) if r["split"] == "val"]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "region"])
        writer.writeheader()
        for path in val:
            writer.writerow({"path": path, "label": rows[path]["label"], "region": rows[path]["region"]})
    return out


def evaluate_model(run_dir: Path, model_file: str, val_csv: Path, test_sets: dict) -> dict:
    """Metrics of one of the run's models on each test set, at the threshold chosen (Youden's J)
    on the validation patients by this model."""
    from tlmulti.runs import load_run

    _, task, model = load_run(run_dir, model_file)
    task.threshold = None
    val = task.evaluate(model, task.read(str(val_csv), classes=task.classes))
    task.threshold = val["threshold"]
    results = {"val": val}
    for name, data in test_sets.items():
        results[name] = task.evaluate(model, task.read(data, classes=task.classes), group_by="region")
    return results


def clinical(m: dict) -> dict:
    ci = (m.get("ci") or {}).get("auroc") or [float("nan"), float("nan")]
    return {"auroc": m["auroc"], "auroc_ci": list(ci), "auprc": m["auprc"], "sensitivity": m["sensitivity"],
            "specificity": m["specificity"], "threshold": m["threshold"], "accuracy": m["accuracy"],
            "ece": m["ece"], "n": m["n"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / f"medical-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="folder for scanner B's data and the run folder")
    parser.add_argument("--method", default="adabn",
                        choices=[m for m in tlmulti.registry.adaptation_methods() if m != "none"],
                        help="adaptation method from tlmulti's registry (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small inputs and few epochs (for tests)")
    args = parser.parse_args(argv)
    out = args.out
    run_dir = out / "run"
    if run_dir.exists():
        print(f"'{run_dir}' exists; give another --out.", file=sys.stderr)
        return 2
    try:
        target_dir, target_test = make_scanner_b(out / "scanner_b")
    except tlmulti.TlmultiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from tlmulti.recipe import recipes_dir

    size, head_epochs, finetune_epochs, bootstrap = (32, 6, 1, 200) if args.quick else (96, 30, 5, 1000)
    recipe = tlmulti.load_recipe(recipes_dir() / "vision" / "nuclei_patches.yaml", overrides=[
        f"data.image_size=[{size}, {size}]",
        f"phases.0.epochs={head_epochs}",
        f"phases.1.epochs={finetune_epochs}",
        f"adaptation.method={args.method}",
        f"adaptation.target_data={target_dir}",
        f"evaluation.bootstrap={bootstrap}",
    ])
    print(f"patient column: data.split_by={recipe.data.split_by}; positive class: {recipe.data.positive_class}; "
          f"adaptation: {recipe.adaptation.method} to {target_dir}")
    t0 = time.perf_counter()
    run = tlmulti.train(recipe, out=run_dir)
    seconds = time.perf_counter() - t0

    val_csv = validation_manifest(run.dir, out / "val.csv")
    test_sets = {"scanner_a": "dataset:nuclei-patches/test", "scanner_b": str(target_test)}
    source_only = evaluate_model(run.dir, "source_only.keras", val_csv, test_sets)
    adapted = evaluate_model(run.dir, "model.keras", val_csv, test_sets)
    adaptation = run.metrics["adaptation"]
    chosen = adaptation["chosen"]
    record = adaptation["candidates"].get(chosen, {})

    print(f"\nrun folder: {run.dir}  ({seconds:.1f} s)")
    print(f"adaptation '{args.method}': kept '{chosen}', guard {record.get('guard', '—')} "
          f"(source validation {adaptation['guard']['metric']} {adaptation['guard']['source_only']:.3f} "
          f"before, {record.get('source_val', float('nan')):.3f} after"
          + ("; the guard put weights back, see the warning above)" if record.get("guard") == "tripped" else ")"))
    print("\nnucleus vs background, test patients (threshold: Youden's J on the validation patients)")
    print(f"{'model':<20}{'test set':<11}{'AUROC [95% CI]':<24}{'AUPRC':>7}{'sens':>7}{'spec':>7}{'acc':>7}{'ECE':>7}")
    summary = {"run_dir": str(run.dir), "seconds": round(seconds, 1), "method": args.method, "chosen": chosen,
               "guard": record.get("guard"), "split_by": recipe.data.split_by, "models": {}}
    for label, results in (("source-only", source_only), (f"adapted ({chosen})", adapted)):
        summary["models"][label] = {name: clinical(results[name]) for name in ("val", *test_sets)}
        for name in test_sets:
            c = clinical(results[name])
            print(f"{label:<20}{name:<11}{c['auroc']:.3f} [{c['auroc_ci'][0]:.3f}, {c['auroc_ci'][1]:.3f}]"
                  f"{'':<4}{c['auprc']:>7.3f}{c['sensitivity']:>7.3f}{c['specificity']:>7.3f}"
                  f"{c['accuracy']:>7.3f}{c['ece']:>7.3f}")
    before, after = source_only["scanner_b"]["auroc"], adapted["scanner_b"]["auroc"]
    print(f"\nscanner B AUROC: source-only {before:.3f} -> adapted {after:.3f} ({after - before:+.3f})")
    a_before, a_after = source_only["scanner_a"]["auroc"], adapted["scanner_a"]["auroc"]
    if a_after < a_before:
        print(f"scanner A AUROC: source-only {a_before:.3f}, adapted {a_after:.3f}: the adapted model's BatchNorm "
              "statistics are scanner B's, so scanner A keeps the source-only model")
    worst = adapted["scanner_b"].get("worst_group")
    if worst:
        print(f"worst scanner B patient after adaptation: {worst['group']} (accuracy {worst['accuracy']:.3f})")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
