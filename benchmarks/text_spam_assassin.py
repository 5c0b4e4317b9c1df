"""Transfer vs no transfer on SpamAssassin with 500 labelled e-mails, and what the feature cache buys.

Reads the default text recipe (``recipes/text/spam_assassin.yaml``: 500 labelled e-mails, of
which 100 are held out for validation, and the fixed 1,000-mail test set) and prints, on the
same split:

  (a) frozen MiniLM-L6 + head (the recipe's phase 1, on cached features);
  (b) (a) followed by the recipe's phase 2 (top transformer layers unfrozen);
  (c) the same head on a token-embedding model trained from scratch with MiniLM's tokenizer
      (backbone ``embedding_bag.scratch``, one phase training everything);
  (d) TF-IDF (words and bigrams) + logistic regression, C picked on the validation set;

then fine-tuning throughput (sequences/s at the recipe's length, top layers unfrozen and all
unfrozen, and inference), and the frozen phase's speed-up from the feature cache (the same
frozen epochs without the cache). Times are wall-clock and process CPU seconds; on a shared
machine the CPU seconds are the steadier number.

Run::

    .venv/bin/python benchmarks/text_spam_assassin.py [--json-out results.json] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def scores(task, model, examples) -> dict:
    m = task.evaluate(model, examples)
    return {"accuracy": round(m["accuracy"], 4), "f1_spam": round(m["f1"], 4), "macro_f1": round(m["macro_f1"], 4),
            "by_domain": {k: round(v["accuracy"], 4) for k, v in m.get("by_group", {}).items()}}


def with_phases(recipe, phases):
    r = copy.deepcopy(recipe)
    r.phases = phases
    return r


def transfer(recipe, train, val, test) -> tuple[dict, dict]:
    """(a), (b), throughput and the cache speed-up on one MiniLM model."""
    import keras

    from tlmulti.data.pipeline import make_dataset
    from tlmulti.training.freezing import resolve_unfreeze, set_trainable
    from tlmulti.training.trainer import fine_tune, make_task
    from tlmulti.training.optimizers import make_optimizer

    keras.utils.set_random_seed(recipe.seed)
    task = make_task(recipe)
    task.classes = train.classes
    parts = task.build(train.classes)
    head_phase, tune_phase = recipe.phases[0], recipe.phases[1]
    results, timing = {}, {}

    with Clock() as c:
        _, rec = fine_tune(parts, task, train, val, with_phases(recipe, [head_phase]))
    results["a_frozen_minilm"] = scores(task, parts.assemble(), test)
    epochs = rec[0]["epochs_run"]
    cache = rec[0].get("cache_seconds", 0.0)
    timing["frozen_cached"] = {"epochs": epochs, "phase_wall_s": round(c.wall, 2), "phase_cpu_s": round(c.cpu, 2),
                               "cache_build_wall_s": round(cache, 2),
                               "per_epoch_wall_s": round((c.wall - cache) / max(epochs, 1), 3)}

    # The same frozen phase without the cache, for 2 epochs; the head's weights are put back after.
    saved = parts.head.get_weights()
    probe = copy.deepcopy(head_phase)
    probe.epochs, probe.cache_features = 2, False
    r2 = with_phases(recipe, [probe])
    r2.callbacks.early_stopping.enabled = False
    with Clock() as c:
        fine_tune(parts, task, train, val, r2)
    parts.head.set_weights(saved)
    per_epoch = c.wall / 2
    timing["frozen_uncached"] = {"per_epoch_wall_s": round(per_epoch, 3), "per_epoch_cpu_s": round(c.cpu / 2, 3)}
    cached_epoch = timing["frozen_cached"]["per_epoch_wall_s"]
    timing["cache_speedup_per_epoch"] = round(per_epoch / max(cached_epoch, 1e-9), 1)
    uncached_phase = per_epoch * epochs
    timing["cache_speedup_phase"] = round(uncached_phase / max(timing["frozen_cached"]["phase_wall_s"], 1e-9), 1)
    timing["frozen_phase_uncached_estimate_wall_s"] = round(uncached_phase, 1)

    with Clock() as c:
        _, rec = fine_tune(parts, task, train, val, with_phases(recipe, [tune_phase]))
    results["b_unfrozen_top"] = scores(task, parts.assemble(), test)
    timing["finetune_phase"] = {"epochs": rec[0]["epochs_run"], "wall_s": round(c.wall, 2), "cpu_s": round(c.cpu, 2),
                                "unfrozen": rec[0]["unfrozen_groups"]}

    # Throughput at the recipe's sequence length (batches after a warm-up step).
    batch = recipe.data.batch_size
    texts = train.x[: batch * 6]
    labels = train.y[: batch * 6]
    ds = list(make_dataset(texts, labels, batch))
    for label, unfreeze in (("top", tune_phase.unfreeze), ("all", "all")):
        groups = resolve_unfreeze(unfreeze, list(parts.groups))
        set_trainable(parts.backbone, parts.groups, groups)
        model = parts.assemble(backbone_training=None)
        model.compile(optimizer=make_optimizer(recipe.optimizer, 1e-6), **task.compile_args())
        model.train_on_batch(*ds[0])
        with Clock() as c:
            for xb, yb in ds[1:]:
                model.train_on_batch(xb, yb)
        n = batch * (len(ds) - 1)
        timing[f"train_seq_per_s_{label}"] = round(n / c.wall, 2)
        timing[f"train_seq_per_cpu_s_{label}"] = round(n / c.cpu, 2)
    set_trainable(parts.backbone, parts.groups, [])
    model = parts.assemble()
    model.predict(make_dataset(texts[:batch], None, batch), verbose=0)
    with Clock() as c:
        model.predict(make_dataset(texts, None, batch), verbose=0)
    timing["inference_seq_per_s"] = round(len(texts) / c.wall, 2)
    timing["sequence_length"] = task.sequence_length()
    timing["batch_size"] = batch
    return results, timing


def scratch(recipe, train, val, test, epochs: int) -> dict:
    """(c): the same head on a token embedding trained from scratch."""
    from tlmulti.recipe import PhaseConfig
    from tlmulti.training.trainer import fine_tune, make_task

    import keras

    r = copy.deepcopy(recipe)
    r.backbone.name = "embedding_bag.scratch"
    r.backbone.weights = None
    r.phases = [PhaseConfig(name="scratch", epochs=epochs, learning_rate=3e-3, unfreeze="all")]
    keras.utils.set_random_seed(r.seed)
    task = make_task(r)
    task.classes = train.classes
    parts = task.build(train.classes)
    with Clock() as c:
        _, rec = fine_tune(parts, task, train, val, r)
    out = scores(task, parts.assemble(), test)
    out.update({"epochs_run": rec[0]["epochs_run"], "wall_s": round(c.wall, 2)})
    return out


def tfidf(train, val, test) -> dict:
    """(d): TF-IDF + logistic regression, C chosen on the validation set."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))
    xtr = vec.fit_transform(list(train.x))
    best = None
    for C in (1, 10, 100, 1000):
        clf = LogisticRegression(C=C, max_iter=5000).fit(xtr, train.y)
        acc = accuracy_score(val.y, clf.predict(vec.transform(list(val.x))))
        if best is None or acc > best[0]:
            best = (acc, C, clf)
    pred = best[2].predict(vec.transform(list(test.x)))
    domains = np.asarray(test.meta.get("domain", ["all"] * len(pred)))
    by_domain = {d: round(float((pred[domains == d] == test.y[domains == d]).mean()), 4) for d in sorted(set(domains))}
    return {"accuracy": round(accuracy_score(test.y, pred), 4), "f1_spam": round(f1_score(test.y, pred), 4),
            "macro_f1": round(f1_score(test.y, pred, average="macro"), 4), "C": best[1], "by_domain": by_domain}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes/text/spam_assassin.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Recipe override KEY=VALUE.")
    parser.add_argument("--scratch-epochs", type=int, default=40)
    parser.add_argument("--json-out", help="Also write the results as JSON here.")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tlmulti
    from tlmulti.training.trainer import make_task

    recipe = tlmulti.load_recipe(args.recipe, overrides=args.overrides)
    recipe.callbacks.verbose = 0
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    train, val, test = make_task(recipe).load_splits()
    print(f"data: {len(train)} train + {len(val)} validation (of {len(train) + len(val)} labelled), "
          f"{len(test)} test; classes {train.classes}", flush=True)

    results, timing = transfer(recipe, train, val, test)
    print("transfer done", flush=True)
    results["c_scratch_embedding_bag"] = scratch(recipe, train, val, test, args.scratch_epochs)
    results["d_tfidf_logreg"] = tfidf(train, val, test)
    env = {"cpus": os.cpu_count(), "load_avg_start": round(load0, 2), "load_avg_end": round(os.getloadavg()[0], 2),
           "total_wall_s": round(time.perf_counter() - start, 1), "sequence_length": timing["sequence_length"]}

    print(f"\nSpamAssassin, {len(train) + len(val)} labelled e-mails ({len(train)} train / {len(val)} val), "
          f"{len(test)} test, sequence length {timing['sequence_length']}")
    print(f"{'model':<34}{'accuracy':>10}{'F1 spam':>10}{'macro F1':>10}   hard_ham acc")
    for name, r in results.items():
        print(f"{name:<34}{r['accuracy']:>10.4f}{r['f1_spam']:>10.4f}{r['macro_f1']:>10.4f}   "
              f"{r.get('by_domain', {}).get('hard_ham', float('nan')):.4f}")
    print(f"\nfine-tuning throughput, batch {timing['batch_size']}: top layers "
          f"{timing['train_seq_per_s_top']} seq/s, all layers {timing['train_seq_per_s_all']} seq/s; "
          f"inference {timing['inference_seq_per_s']} seq/s")
    fc, fu = timing["frozen_cached"], timing["frozen_uncached"]
    print(f"frozen phase: {fc['epochs']} epochs with the cache {fc['phase_wall_s']} s "
          f"(cache built once in {fc['cache_build_wall_s']} s, then {fc['per_epoch_wall_s']} s/epoch); "
          f"without it {fu['per_epoch_wall_s']} s/epoch -> {timing['cache_speedup_per_epoch']}x per epoch, "
          f"{timing['cache_speedup_phase']}x for the phase (est. {timing['frozen_phase_uncached_estimate_wall_s']} s)")
    print(f"environment: {env}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"results": results, "timing": timing, "env": env}, indent=2))


if __name__ == "__main__":
    main()
