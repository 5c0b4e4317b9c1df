"""Accent and voice robustness of the speech backbones: Whisper tiny.en, speech_embedding, the
source-pretrained CNN and random initialisation, with and without augmentation.

Trains the ten commands (7 espeak-ng accents for training; the held-out espeak accent en-029
and the 5 flite voices as unseen test groups) in several configurations, over several seeds,
and prints accuracy per accent/voice and the worst group:

* ``whisper, frozen`` / ``whisper + top unfrozen`` / ``whisper, no aug``:
  ``recipes/audio/speech_commands.yaml`` (Whisper tiny.en encoder on a 1 s window);
* ``embedding, frozen`` / ``embedding + top unfrozen`` / ``embedding, no aug``:
  ``recipes/audio/speech_commands_embedding.yaml`` (Google's speech_embedding);
* ``cnn, frozen only`` / ``cnn + aug`` / ``cnn, no aug``: ``recipes/audio/speech_commands_cnn.yaml``,
  the compact CNN pretrained by tlmulti on 169 synthetic source words (audio_cnn.synth_words);
* ``scratch + aug`` / ``scratch, no aug``: the CNN architecture from random initialisation,
  trained end to end (one phase, all layers, BatchNorm training, 40 epochs, keeping the epoch
  with the best validation accuracy), since a frozen random backbone would not be a fair
  baseline. (Early stopping on validation loss stopped some from-scratch seeds at chance level
  after a few epochs, so it is not used for them.)

The source backbone and the datasets are built first when missing (their time is reported).
Usage::

    .venv/bin/python benchmarks/audio_accent_transfer.py --seeds 0 1 2 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "audio"
NO_AUG = ["data.augment=null"]
SCRATCH = ["backbone.weights=random",
           "phases=[{name: scratch, epochs: 40, learning_rate: 0.002, unfreeze: all, batchnorm: train}]",
           "callbacks.early_stopping.monitor=val_accuracy", "callbacks.early_stopping.patience=40"]
CONFIGS = {  # name: (recipe file, overrides)
    "whisper, frozen": ("speech_commands.yaml", ["phases.1.epochs=0"]),
    "whisper + top unfrozen": ("speech_commands.yaml", []),
    "whisper, no aug": ("speech_commands.yaml", NO_AUG),
    "embedding, frozen": ("speech_commands_embedding.yaml", ["phases.1.epochs=0"]),
    "embedding + top unfrozen": ("speech_commands_embedding.yaml", []),
    "embedding, no aug": ("speech_commands_embedding.yaml", NO_AUG),
    "embedding, frozen, no feature norm": ("speech_commands_embedding.yaml", ["phases.1.epochs=0",
                                                                              "head.normalize=none"]),
    "cnn, frozen only": ("speech_commands_cnn.yaml", ["phases.1.epochs=0"]),
    "cnn + aug": ("speech_commands_cnn.yaml", []),
    "cnn, no aug": ("speech_commands_cnn.yaml", NO_AUG),
    "scratch + aug": ("speech_commands_cnn.yaml", SCRATCH),
    "scratch, no aug": ("speech_commands_cnn.yaml", SCRATCH + NO_AUG),
}
GROUPS = ["en-029", "flite-awb", "flite-kal", "flite-kal16", "flite-rms", "flite-slt"]


def prepare() -> dict:
    """Build the datasets and the source backbone if needed; seconds spent on each."""
    from tlmulti import registry
    from tlmulti.backbones import weights_status
    from tlmulti.datasets import prepare as prepare_dataset
    from tlmulti.training.pretrain import ensure_source_backbone

    spent = {}
    t = time.perf_counter()
    prepare_dataset("speech-commands-synth")
    spent["synth_commands_s"] = round(time.perf_counter() - t, 1)
    spec = registry.get_backbone("audio_cnn.synth_words")
    if not weights_status(spec)[0]:
        t = time.perf_counter()
        prepare_dataset("speech-words-synth")
        spent["synth_source_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        ensure_source_backbone(spec)
        spent["pretrain_s"] = round(time.perf_counter() - t, 1)
    return spent


def run_one(config, seed: int) -> dict:
    import keras

    import tlmulti

    recipe_file, overrides = config
    keras.backend.clear_session()
    recipe = tlmulti.load_recipe(RECIPES / recipe_file, overrides=overrides + [f"seed={seed}", "callbacks.verbose=0",
                                                                "output.plots=false"])
    with tempfile.TemporaryDirectory() as tmp:
        run = tlmulti.train(recipe, out=Path(tmp) / "run")
    test = run.metrics["test"]
    return {
        "val": run.metrics["val"]["accuracy"], "test": test["accuracy"],
        "groups": {g: v["accuracy"] for g, v in test["by_group"].items()},
        "worst": test["worst_group"], "worst_speaker": test["groups"]["speaker"]["worst_group"],
        "seconds": run.metrics["timing"]["train_seconds"],
        "epochs": [p["epochs_run"] for p in run.metrics["phases"]],
    }


def table(results: dict) -> str:
    head = ["config", "seed", "val", "test"] + GROUPS + ["worst group", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in results.items():
        for seed, r in runs.items():
            cells = [name, str(seed), f"{r['val']:.3f}", f"{r['test']:.3f}"]
            cells += [f"{r['groups'].get(g, float('nan')):.3f}" for g in GROUPS]
            cells += [f"{r['worst']['group']} {r['worst']['accuracy']:.3f}", f"{r['seconds']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean over seeds:", "", "| config | val | test | " + " | ".join(GROUPS) + " | worst group |",
              "|" + "---|" * (len(GROUPS) + 4)]
    for name, runs in results.items():
        rs = list(runs.values())
        mean = lambda f: sum(f(r) for r in rs) / len(rs)  # noqa: E731
        cells = [name, f"{mean(lambda r: r['val']):.3f}", f"{mean(lambda r: r['test']):.3f}"]
        cells += [f"{mean(lambda r, g=g: r['groups'].get(g, 0.0)):.3f}" for g in GROUPS]
        cells.append(f"{mean(lambda r: r['worst']['accuracy']):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="Subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--json", type=Path, help="Write all numbers here.")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    spent = prepare()
    print(f"prepared: {spent}", flush=True)
    results = {}
    for name in args.configs:
        results[name] = {}
        for seed in args.seeds:
            r = run_one(CONFIGS[name], seed)
            results[name][seed] = r
            print(f"{name:<24} seed {seed}: test {r['test']:.3f}  worst {r['worst']['group']} "
                  f"{r['worst']['accuracy']:.3f}  ({r['seconds']:.0f} s)", flush=True)
    print()
    print(table(results))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\n{os.cpu_count()} CPUs, load average at the end {load}; total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"prepare": spent, "results": results, "cpus": os.cpu_count(),
                                         "loadavg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
