"""Source-only against AdaBN, DANN and CORAL on one adaptation recipe, over several seeds.

The recipe names labelled source data (``data.train``), unlabelled target data
(``adaptation.target_data``) and a labelled target test set (``data.test``). Each method is run
with every seed in this process and the script prints the target metric as mean ± standard
deviation (and min..max), source-only first.

    python benchmarks/adaptation.py recipes/audio/adapt_flite.yaml --seeds 0 1 2
    python benchmarks/adaptation.py recipes/vision/nuclei_stain_shift.yaml --metric mean_dice
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["none", "adabn", "dann", "coral"])
    parser.add_argument("--metric", default="accuracy", help="test metric to report (accuracy, mean_dice, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import numpy as np

    import tlmulti

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for seed in args.seeds:
                recipe = tlmulti.load_recipe(args.recipe, overrides=[
                    "callbacks.verbose=0", f"seed={seed}", f"adaptation.method={method}", *args.overrides])
                t0 = time.perf_counter()
                try:
                    run = tlmulti.train(recipe, out=os.path.join(tmp, f"{method}-{seed}"))
                except tlmulti.TlmultiError as exc:
                    print(f"{method} seed {seed}: not applicable ({exc})", flush=True)
                    break
                value = run.metrics["test"][args.metric]
                results.setdefault(method, []).append(value)
                print(f"{method} seed {seed}: {args.metric} {value:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{'method':<12}{args.metric + ' mean ± sd':>24}{'min..max':>18}  seeds")
    for method, values in results.items():
        v = np.array(values)
        print(f"{'source-only' if method == 'none' else method:<12}{v.mean():>15.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}"
              f"{v.min():>10.4f}..{v.max():.4f}  {len(v)}")


if __name__ == "__main__":
    main()
