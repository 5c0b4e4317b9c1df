"""Unsupervised domain adaptation: a stage after the source phases, one class per method.

Every method starts from the model the recipe's phases trained on the labelled source data (the
*source-only* model) and uses unlabelled target data (``adaptation.target_data``, read by the
task's own reader with labels ignored). Methods, all tasks:

* statistics (no training): ``adabn`` (Li et al. 2016) sets every BatchNorm layer's moving mean
  and variance so that target inputs are normalised as source inputs were (see
  :func:`adapt_batchnorm`; with BatchNorm trained on the source this is AdaBN's target
  statistics); ``test_time_bn`` (Schneider et al. 2020) first mixes source and target
  statistics, ``(N * source + n * target) / (N + n)`` with prior strength ``N = 16`` and ``n`` the
  batch size. Both need BatchNorm layers;
* training: the backbone groups of the last phase that unfroze any (or ``adaptation.unfreeze``)
  and the head train for ``adaptation.epochs`` on batches of labelled source plus unlabelled
  target examples, with the source task loss plus ``strength`` times the method's target loss:
  ``dann`` (Ganin et al. 2016: a domain classifier, two hidden layers of 256 with BatchNorm at
  ten times the learning rate, behind a gradient-reversal layer), ``coral`` (Deep CORAL: feature
  covariance distance), ``mmd`` (multi-kernel Gaussian MMD, Long et al. 2015), ``entropy``
  (information maximisation: mean prediction entropy minus the entropy of the mean prediction,
  as in SHOT) and ``self_training`` (cross-entropy on target predictions above
  ``adaptation.confidence``, as in FixMatch without strong augmentation). ``strength`` ramps
  from 0 to ``adaptation.weight`` as ``2 / (1 + exp(-10 p)) - 1`` over the stage (``schedule:
  constant`` keeps it fixed), the learning rate anneals as ``lr / (1 + 10 p) ** 0.75`` (Ganin et
  al.), and gradients are clipped to global norm 1. The feature-alignment methods (dann, coral,
  mmd) act on pooled backbone features, so they need a group that trains.

A **guard** watches the task's first metric (accuracy, IoU) on the labelled *source* validation
set: a training method whose value falls more than ``adaptation.guard`` below the source-only
model's is stopped and the weights of its last epoch within the margin (the source-only weights if
none) are put back, with a warning naming the method. A statistics method is checked the same way
by re-estimating its statistics on the source validation inputs.

Target labels are absent, so each method's target predictions get a **label-free score**:
``-(mean entropy) - KL(mean prediction || class prior of the training labels)``, both divided by
``log K`` (confident predictions whose class mix looks like the source's score high; a collapse
to one class or uncertain predictions score low). ``method: auto`` runs source-only and every
applicable method (``adaptation.candidates`` to restrict them) and keeps the highest score, never
a method past the guard, and source-only unless a method beats it by ``adaptation.select_margin``.
Every candidate's scores go to ``metrics.json`` (``adaptation.candidates``).

The losses, scores and BatchNorm statistics transfer are in :mod:`tlmulti.training.domain`.

Example recipe section::

    adaptation:
      method: auto                        # or adabn, test_time_bn, dann, coral, mmd, entropy, self_training
      target_data: data/hospital_b/       # unlabelled images of the target domain
"""

from __future__ import annotations

import sys
import time

from tlmulti.errors import RecipeError, TlmultiError
from tlmulti.training.adaptation.methods import (  # noqa: F401  (every method, importable from here too)
    CORAL, DANN, MMD, AdaBN, Adapter, Entropy, SelfTraining, TestTimeBN,
)
from tlmulti.training.adaptation.model import AdaptationModel  # noqa: F401
from tlmulti.training.adaptation.stage import Stage
from tlmulti.training.domain import (  # noqa: F401  (the building blocks, importable from here too)
    AnnealedRate, GradientReversal, adapt_batchnorm, batchnorm_layers, class_prior, confident_pseudo_label_loss,
    coral_loss, information_maximisation, label_free_scores, mmd_loss, pool_features, ramp,
)

CRITERION = "-(target entropy) - KL(target class mix || training class prior), both / log K"


def method_names() -> list[str]:
    """The methods ``auto`` tries: every registered one with an implementation."""
    from tlmulti import registry

    return [n for n in registry.adaptation_methods() if registry.get_adaptation(n).implementation]


def make_method(name: str, config, task) -> Adapter:
    from tlmulti import registry

    return registry.resolve(registry.get_adaptation(name).implementation)(name, config, task)


def check_adaptation(recipe, task, parts) -> None:
    """Before any training: the target data is named and an explicit method can run on this model."""
    config = recipe.adaptation
    if config.method == "none":
        return
    allowed = task.adaptation_methods
    if config.method == "auto" and not task.label_free_score:
        raise RecipeError(f"adaptation.method 'auto' ranks candidates by a label-free score of class predictions, "
                          f"which {task.name} runs have not; choose one of {', '.join(allowed or method_names())}.")
    if allowed is not None and config.method not in ("auto", *allowed):
        raise RecipeError(f"adaptation.method '{config.method}' is not available for {task.name} runs; choose "
                          f"one of {', '.join(allowed)} (--adapt).")
    if not config.target_data:
        raise RecipeError("Key 'adaptation.target_data' is required with adaptation.method "
                          f"'{config.method}': give unlabelled target-domain data (--target-data).")
    unknown = [c for c in config.candidates if c not in method_names()]
    if unknown:
        raise RecipeError(f"Key 'adaptation.candidates' names {', '.join(unknown)}, not adaptation methods; "
                          f"valid: {', '.join(method_names())}.")
    if config.method != "auto":
        from tlmulti.training.freezing import resolve_unfreeze

        method = make_method(config.method, config, task)
        if getattr(method, "aligns_features", False):
            groups = list(parts.groups)
            trains = resolve_unfreeze(config.unfreeze, groups, "adaptation.unfreeze") if config.unfreeze else \
                any(resolve_unfreeze(p.unfreeze, groups) for p in recipe.phases if p.epochs)
            if not trains:
                raise RecipeError(f"adaptation.method '{config.method}' aligns backbone features, and no phase "
                                  "unfreezes a layer group; add a phase with unfreeze (e.g. top:2) or set "
                                  "adaptation.unfreeze.")
        if method.needs_batchnorm and not batchnorm_layers(parts.assemble(augment=False)):
            raise TlmultiError(f"adaptation.method '{config.method}' needs BatchNorm layers, and this model has "
                               "none (VGG16, Whisper and BERT-family encoders use none); use dann, coral, mmd, "
                               "entropy, self_training or auto instead.")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def adapt(parts, task, train, val, recipe, verbose: int = 0, each=None) -> dict | None:
    """Run the recipe's adaptation (one method, or ``auto``) on ``parts``, which hold the
    source-only model; leaves ``parts`` at the chosen candidate's weights and returns the record
    written to ``metrics.json`` (None for ``method: none``). ``each(name)``, when given, is called
    with ``parts`` at every candidate's weights (``none`` first): benchmarks score candidates on
    labelled target data with it."""
    config = recipe.adaptation
    if config.method == "none":
        return None
    target = task.read(config.target_data, classes=None, labelled=False)
    if len(target) == 0:
        raise TlmultiError(f"Target data '{config.target_data}' has no examples.")
    stage = Stage(parts, task, train, val, target, recipe, verbose)
    auto = config.method == "auto"
    names = (list(config.candidates) or method_names()) if auto else [config.method]
    source = stage.snapshot()
    candidates = {"none": {"source_val": stage.base, **stage.target_scores()}}
    states = {"none": source}
    if each is not None:
        each("none")
    for name in names:
        method = make_method(name, config, task)
        reason = method.not_applicable(stage)
        if reason:
            candidates[name] = {"skipped": reason}
            continue
        stage.restore(source)
        t0 = time.perf_counter()
        if verbose:
            print(f"adaptation: {name}", flush=True)
        record = method.run(stage)
        tripped = record.pop("tripped", False)
        if tripped:
            lowest = min(record.get("source_val_by_epoch") or [record["source_val"]])
            _warn(f"adaptation method '{name}' lowered source validation {stage.metric} from {stage.base:.4f} to "
                  f"{lowest:.4f}, more than adaptation.guard {config.guard}; {method.fallback}")
        record.update(stage.target_scores())
        record["guard"] = "tripped" if tripped else ("ok" if stage.has_val else "no validation set")
        record["seconds"] = round(time.perf_counter() - t0, 2)
        candidates[name] = record
        states[name] = stage.snapshot()
        if each is not None:
            each(name)
    chosen = select(candidates, config.select_margin) if auto else config.method
    stage.restore(states[chosen])
    report = {"method": config.method, "chosen": chosen, "weight": config.weight,
              "target_examples": len(target), "epochs": stage.epochs, "unfrozen_groups": stage.unfrozen,
              "guard": {"metric": stage.metric, "margin": config.guard, "source_only": stage.base},
              "criterion": CRITERION if task.label_free_score else None, "candidates": candidates}
    print(format_candidates(report), flush=True)
    return report


def select(candidates: dict, margin: float) -> str:
    """The candidate with the highest label-free score, among those the guard let through;
    source-only (``none``) unless another beats its score by more than ``margin``."""
    eligible = {n: c["score"] for n, c in candidates.items() if "score" in c and c.get("guard") != "tripped"}
    best = max(eligible, key=lambda n: (eligible[n], n == "none"))
    if best != "none" and eligible[best] <= eligible["none"] + margin:
        return "none"
    return best


def format_candidates(report: dict) -> str:
    """The adaptation table printed after training: one row per candidate."""
    metric = report["guard"]["metric"]
    scored = f"Label-free score: {report['criterion']}." if report["criterion"] else "No label-free score for this task."
    lines = [f"Adaptation ({report['method']}): kept '{report['chosen']}'. {scored}",
             f"  {'method':<14}{'source val ' + metric:>22}{'target entropy':>16}{'balance KL':>12}{'score':>9}  guard"]
    for name, c in report["candidates"].items():
        label = "source-only" if name == "none" else name
        if "skipped" in c:
            lines.append(f"  {label:<14}not applicable: {c['skipped']}")
            continue
        val, entropy, kl, score = ("—" if c.get(k) is None else f"{c[k]:.4f}"
                                   for k in ("source_val", "target_entropy", "target_balance_kl", "score"))
        lines.append(f"  {label:<14}{val:>22}{entropy:>16}{kl:>12}{score:>9}  {c.get('guard', '—')}")
    return "\n".join(lines)
