"""The segmentation default before and after it fits its decoder to the data, on four kinds of data.

Every row is the default CLI run (``tlmulti vision train --task segmentation --data ...``, the
U-Net over EfficientNet-Lite0, no recipe) on a built-in dataset, run twice in this process:

* ``before``: the decoder phase sized as a classifier's head, about 300 optimizer steps (10 to
  50 epochs), and no foreground sampling (``data.foreground_sampling=0``);
* ``after``: the default as it is now: the decoder phase aims at 1,000 steps (20 to 200 epochs,
  early stopping on the validation loss) and rare-foreground tiles are sampled up to a third.

and the classic baseline of the same run (per-pixel Gaussian classes on intensity and its blur).

Rows (``--rows``): ``nuclei`` (binary, 16-bit fluorescence, the set the earlier defaults were
tuned on), ``nuclei-boundary`` (the same with a third, boundary class), ``phantom-tissue``
(background / grey / white by intensity, 8-bit), ``phantom-lesions`` (one lesion under 0.22%
of a 16-bit image). Printed: test mean foreground Dice and per-class Dice, the training Dice
(does the default fit its own data?), seconds, and the time ratio after / before.

    python benchmarks/segmentation_defaults.py                       # all rows, about 50 min on 2 cores
    python benchmarks/segmentation_defaults.py --rows phantom-tissue --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROWS = {
    "nuclei": [],
    "nuclei-boundary": [],
    "phantom-tissue": ["data.classes=[background, grey, white]"],
    "phantom-lesions": ["data.classes=[background, lesion]"],
}
CLASSIFIER_STEPS = {"frozen": (300, 10, 50), "trained": (150, 3, 15)}


def _recipe(name: str, extra):
    import tlmulti

    sets = [f"data.train=dataset:{name}/train", f"data.val=dataset:{name}/val", f"data.test=dataset:{name}/test",
            "callbacks.verbose=0"] + list(ROWS[name]) + list(extra)
    return tlmulti.load_recipe(task="segmentation", overrides=sets)


def _before_epochs(name: str) -> list[str]:
    """The decoder phase's epochs under the classifier's step targets, on this data's tiles."""
    from tlmulti.tasks import make_task
    from tlmulti.training.trainer import derive_phase_lengths

    recipe = _recipe(name, [])
    task = make_task(recipe)
    task.derive_defaults()
    train, _, _ = task.load_splits()
    derive_phase_lengths(recipe, len(train), CLASSIFIER_STEPS)
    return [f"phases.{i}.epochs={p.epochs}" for i, p in enumerate(recipe.phases)] + ["data.foreground_sampling=0"]


def _one(name: str, config: str, out) -> dict:
    import keras

    import tlmulti
    from tlmulti.tasks import make_task

    extra = _before_epochs(name) if config == "before" else []
    keras.backend.clear_session()
    t0 = time.perf_counter()
    run = tlmulti.train(_recipe(name, extra), out=out)
    seconds = time.perf_counter() - t0
    task = make_task(run.recipe)
    train, _, _ = task.load_splits()
    fit = task.evaluate(run.model, train)
    m = run.metrics
    return {"row": name, "config": config, "test_dice": m["test"]["mean_dice"],
            "per_class": {c: v["dice"] for c, v in m["test"]["per_class"].items() if c != "background"},
            "train_dice": fit["mean_dice"], "val_dice": m["val"]["mean_dice"], "seconds": round(seconds, 1),
            "decoder_epochs": [p["epochs_run"] for p in m["phases"]],
            "baseline_test_dice": (m.get("baseline") or {}).get("test", {}).get("mean_dice")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--json", dest="json_path", help="write the results here")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            for config in ("before", "after"):
                results.append(_one(name, config, os.path.join(tmp, f"{name}-{config}")))
                r = results[-1]
                print(f"{name} {config}: test Dice {r['test_dice']:.4f} (training {r['train_dice']:.4f}), "
                      f"{r['seconds']:.0f} s, epochs {r['decoder_epochs']}", flush=True)
                if args.json_path:
                    with open(args.json_path, "w") as f:
                        json.dump(results, f, indent=2)
    print("\n| data | before: test Dice (training) | after: test Dice (training) | per class after (before) "
          "| classic baseline | seconds before -> after |")
    print("|---|---|---|---|---|---|")
    for name in args.rows:
        b, a = (next(r for r in results if r["row"] == name and r["config"] == c) for c in ("before", "after"))
        per = ", ".join(f"{c} {a['per_class'][c]:.3f} ({b['per_class'][c]:.3f})" for c in a["per_class"])
        base = f"{a['baseline_test_dice']:.4f}" if a["baseline_test_dice"] is not None else "-"
        print(f"| {name} | {b['test_dice']:.4f} ({b['train_dice']:.4f}) | {a['test_dice']:.4f} ({a['train_dice']:.4f}) "
              f"| {per} | {base} | {b['seconds']:.0f} -> {a['seconds']:.0f} ({a['seconds'] / b['seconds']:.2f}x) |")


if __name__ == "__main__":
    main()
