"""Source-only against every adaptation method and ``auto`` on one adaptation recipe, over seeds.

The recipe names labelled source data (``data.train``), unlabelled target data
(``adaptation.target_data``) and a labelled target test set (``data.test``). For each seed the
source phases are trained once; then the adaptation stage runs with ``method: auto`` and every
candidate it tries (source-only included) is scored on the labelled target test set, which the
adaptation itself never sees. ``auto`` is the candidate the label-free criterion kept. Printed:
the target metric per method as mean ± standard deviation (and min..max) over seeds, the number
of seeds where the guard tripped, and ``auto``'s loss or gain against source-only.

    python benchmarks/adaptation.py recipes/vision/fashion_scanner_shift.yaml --seeds 0 1 2
    python benchmarks/adaptation.py recipes/audio/adapt_flite.yaml --seeds 0 1 2
    python benchmarks/adaptation.py recipes/vision/nuclei_stain_shift.yaml --metric mean_dice
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def one_seed(recipe_path: str, seed: int, metric: str, overrides: list[str]) -> dict:
    import keras

    import tlmulti
    from tlmulti import runs
    from tlmulti.tasks import make_task
    from tlmulti.training.adaptation import adapt
    from tlmulti.training.trainer import fine_tune

    recipe = tlmulti.load_recipe(recipe_path, overrides=["callbacks.verbose=0", f"seed={seed}",
                                                         "adaptation.method=auto", *overrides])
    recipe = runs.absolute_paths(recipe)
    keras.utils.set_random_seed(seed)
    task = make_task(recipe)
    task.derive_defaults()
    train, val, test = task.load_splits()
    task.classes = train.classes
    parts = task.build(train.classes)
    t0 = time.perf_counter()
    fine_tune(parts, task, train, val, recipe)
    source_seconds = time.perf_counter() - t0
    scores: dict[str, float] = {}

    def each(name):
        model = parts.assemble(backbone_training=False, augment=False)
        scores[name] = float(task.evaluate(model, test)[metric])

    t0 = time.perf_counter()
    report = adapt(parts, task, train, val, recipe, each=each)
    return {"seed": seed, "scores": scores, "chosen": report["chosen"], "candidates": report["candidates"],
            "source_seconds": round(source_seconds, 1), "adapt_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--metric", default="accuracy", help="test metric to report (accuracy, mean_dice, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", help="also write every seed's record to this file")
    args = parser.parse_args()

    import numpy as np

    records = []
    for seed in args.seeds:
        r = one_seed(args.recipe, seed, args.metric, args.overrides)
        records.append(r)
        line = ", ".join(f"{n} {v:.4f}" for n, v in r["scores"].items())
        print(f"seed {seed}: {line}; auto kept {r['chosen']} (source {r['source_seconds']} s, "
              f"adaptation {r['adapt_seconds']} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)

    names = list(records[0]["candidates"])
    print(f"\n{'method':<16}{args.metric + ' mean ± sd':>26}{'min..max':>18}  guard tripped")
    rows = {n: np.array([r["scores"][n] for r in records if n in r["scores"]]) for n in names}
    rows["auto"] = np.array([r["scores"][r["chosen"]] for r in records])
    for name, v in rows.items():
        label = "source-only" if name == "none" else name
        if not len(v):
            reason = records[0]["candidates"][name].get("skipped", "")
            print(f"{label:<16}not applicable: {reason}")
            continue
        tripped = sum(r["candidates"].get(name, {}).get("guard") == "tripped" for r in records)
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        print(f"{label:<16}{v.mean():>17.4f} ± {sd:.4f}{v.min():>10.4f}..{v.max():.4f}  "
              f"{tripped if name != 'auto' else ''}")
    gain = rows["auto"] - rows["none"]
    print(f"\nauto - source-only per seed: {', '.join(f'{g:+.4f}' for g in gain)}; kept: "
          f"{', '.join(r['chosen'] for r in records)}")


if __name__ == "__main__":
    main()
