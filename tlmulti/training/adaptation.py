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

import keras
import numpy as np
from keras import ops

from tlmulti.errors import RecipeError, TlmultiError
from tlmulti.training.domain import (  # noqa: F401  (the building blocks, importable from here too)
    AnnealedRate, GradientReversal, adapt_batchnorm, batchnorm_layers, class_prior, confident_pseudo_label_loss,
    coral_loss, information_maximisation, label_free_scores, mmd_loss, pool_features, ramp,
)

CRITERION = "-(target entropy) - KL(target class mix || training class prior), both / log K"
PRIOR_STRENGTH = 16  # N of test-time BatchNorm (Schneider et al. 2020)


class AdaptationModel(keras.Model):
    """Task model trained on batches ``((x_source, y_source), x_target)`` with the task loss on
    the source plus ``strength`` times the method's ``target_loss``; predicts and validates like
    the task model alone. BatchNorm moving statistics follow the source batches only."""

    def __init__(self, joint, method, extra_layers=(), **kwargs):
        super().__init__(**kwargs)
        self.joint = joint
        self.method = method
        self.extra_layers = list(extra_layers)  # tracked, so their weights train
        self.strength = keras.Variable(0.0, trainable=False, name="strength")
        self.target_tracker = keras.metrics.Mean(name=f"{method.name}_loss")
        # moving statistics that only source batches may update (see train_step)
        self.source_statistics = [v for l in batchnorm_layers(joint) for v in (l.moving_mean, l.moving_variance)]

    def call(self, x, training=False):
        return self.joint(x, training=training)[0]

    def train_step(self, data):
        import tensorflow as tf

        (x_s, y_s), x_t = data
        with tf.GradientTape() as tape:
            y_pred, f_s = self.joint(x_s, training=True)
            # the target pass normalises with its own batch statistics, but BatchNorm layers that
            # train keep the source's moving statistics: a source/target mixture would shift
            # what the model computes on source data (and what the guard measures)
            kept = [tf.identity(v) for v in self.source_statistics]
            with tf.control_dependencies(kept):
                y_t, f_t = self.joint(x_t, training=True)
            with tf.control_dependencies([y_t, f_t]):
                for v, value in zip(self.source_statistics, kept):
                    v.assign(value)
            loss = self.compute_loss(x=x_s, y=y_s, y_pred=y_pred)
            extra = self.method.target_loss(y_pred, f_s, y_t, f_t, self.strength)
            total = loss + extra
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(total, variables), variables)
        self.target_tracker.update_state(extra)
        for metric in self.metrics:
            if metric is self.target_tracker:
                continue
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y_s, y_pred)
        return self.get_metrics_result()

    def test_step(self, data):
        logs = super().test_step(data)
        logs.pop(self.target_tracker.name, None)  # a training-only loss: no val_ column for it
        return logs

    @property
    def metrics(self):
        return super().metrics + [self.target_tracker]


class _Strength(keras.callbacks.Callback):
    """Sets the model's ``strength`` to ``weight * ramp(p)`` (or ``weight``) before each batch."""

    def __init__(self, weight: float, total_steps: int, schedule: str):
        super().__init__()
        self.weight, self.total, self.schedule, self.step = weight, max(total_steps, 1), schedule, 0

    def on_train_batch_begin(self, batch, logs=None):
        p = min(self.step / self.total, 1.0)
        self.model.strength.assign(self.weight * (ramp(p) if self.schedule == "ramp" else 1.0))
        self.step += 1


class _Guard(keras.callbacks.Callback):
    """Stops training when ``val_<metric>`` falls more than ``margin`` below ``base`` and puts
    back the weights of the last epoch within the margin (those at the start if none)."""

    def __init__(self, metric: str, base: float, margin: float):
        super().__init__()
        self.key, self.base, self.margin = f"val_{metric}", base, margin
        self.safe, self.tripped_at, self.values = None, None, []

    def on_train_begin(self, logs=None):
        self.safe = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.key)
        if value is None:
            return
        self.values.append(float(value))
        if value < self.base - self.margin:
            self.tripped_at = epoch + 1
            self.model.stop_training = True
        else:
            self.safe = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.tripped_at is not None:
            self.model.set_weights(self.safe)


class Adapter:
    """One adaptation method. ``run(stage)`` changes the model parts in place, starting from the
    source-only weights, and returns what it recorded; ``not_applicable(stage)`` says why the
    method cannot run on this model (None when it can). Subclasses are registered by name
    (:func:`tlmulti.registry.register_adaptation`)."""

    name = ""
    needs_batchnorm = False

    def __init__(self, name: str, config, task):
        self.name, self.config, self.task = name, config, task
        self.sigmoid = getattr(task, "output_activation", "softmax") == "sigmoid"  # multi-label outputs

    def not_applicable(self, stage) -> str | None:
        if self.needs_batchnorm and not batchnorm_layers(stage.model):
            return "the model has no BatchNorm layers (VGG16, Whisper and BERT-family encoders have none)"
        return None

    def run(self, stage) -> dict:
        raise NotImplementedError


class _Statistics(Adapter):
    """Methods that only re-estimate BatchNorm statistics. Guard: the same re-estimation on the
    source validation inputs, scored on their labels; past the margin the source-only model stays."""

    needs_batchnorm = True
    fallback = "source-only weights kept."

    def restat(self, stage, x) -> None:
        raise NotImplementedError

    def run(self, stage) -> dict:
        before = stage.snapshot()
        if stage.has_val:
            self.restat(stage, stage.val.x)
            check = stage.source_metric()
            stage.restore(before)
        else:
            check = None
        if check is not None and check < stage.base - self.config.guard:
            return {"source_val": check, "tripped": True}  # ``before``: the source-only model
        self.restat(stage, stage.target.x)
        return {"source_val": check}


class AdaBN(_Statistics):
    """AdaBN: BatchNorm statistics that normalise target inputs as the source ones were."""

    def restat(self, stage, x):
        adapt_batchnorm(stage.parts, x, stage.train.x)


class TestTimeBN(_Statistics):
    """Test-time BatchNorm with a source prior (Schneider et al. 2020): the target statistics are
    first mixed with the source ones, ``(N * source + n * target) / (N + n)``, ``N = 16`` and
    ``n`` the batch size, then applied as AdaBN's are."""

    def restat(self, stage, x):
        adapt_batchnorm(stage.parts, x, stage.train.x, prior=PRIOR_STRENGTH, batch=stage.batch_size)


class _Training(Adapter):
    """Methods that train on source and target batches with an extra target loss."""

    aligns_features = False
    extra_lr_multiplier = 1.0
    fallback = "the weights of its last epoch within the margin were put back."

    def not_applicable(self, stage):
        if self.aligns_features and not stage.unfrozen:
            return ("it aligns backbone features and no layer group trains: no phase unfreezes one; "
                    "set adaptation.unfreeze (e.g. top:2)")
        return super().not_applicable(stage)

    def extra_layers(self, dim: int) -> list:
        return []

    def target_loss(self, y_s, f_s, y_t, f_t, strength):
        raise NotImplementedError

    def run(self, stage) -> dict:
        parts, recipe, config = stage.parts, stage.recipe, self.config
        stage.set_trainable()
        feats = parts.features(parts.inputs, training=None, augment=True)
        joint = keras.Model(parts.inputs, [parts.head(feats), pool_features(feats)], name="joint")
        extra = self.extra_layers(int(joint.outputs[1].shape[-1]))
        model = AdaptationModel(joint, self, extra, name="adapted")
        total = stage.steps_per_epoch * stage.epochs
        multipliers = dict(stage.multipliers)
        multipliers.update({id(v): self.extra_lr_multiplier for layer in extra for v in layer.trainable_weights})
        from tlmulti.training.optimizers import make_optimizer

        optimizer = make_optimizer(recipe.optimizer, AnnealedRate(stage.learning_rate, total), multipliers,
                                   global_clipnorm=1.0)
        model.compile(optimizer=optimizer, **self.task.compile_args())
        callbacks = [_Strength(config.weight, total, config.schedule)]
        guard = None
        if stage.has_val:
            guard = _Guard(stage.metric, stage.base, config.guard)
            callbacks.append(guard)
        history = model.fit(stage.batches(), validation_data=stage.val_dataset(), epochs=stage.epochs,
                            steps_per_epoch=stage.steps_per_epoch, callbacks=callbacks, shuffle=False,
                            verbose=stage.verbose)
        out = {"epochs_run": len(history.history.get("loss", []))}
        if guard is not None:
            out["source_val_by_epoch"] = [round(v, 4) for v in guard.values]
            out["source_val"] = stage.source_metric()
            if guard.tripped_at is not None:
                out["guard_tripped_at_epoch"] = guard.tripped_at
                out["tripped"] = True
        return out


class DANN(_Training):
    """DANN: a domain classifier (two hidden layers of 256 with BatchNorm, as the
    Transfer-Learning-Library's, at 10x the learning rate) on pooled features behind gradient
    reversal whose scale is the ramped strength. BatchNorm keeps the classifier alive whatever
    the scale of the backbone's features (unnormalised features saturate a plain MLP's first
    loss and kill its ReLUs: the classifier then outputs a constant and gives no signal)."""

    aligns_features = True
    extra_lr_multiplier = 10.0

    def extra_layers(self, dim):
        self.reversal = GradientReversal(0.0, name="gradient_reversal")
        layers = [keras.Input((dim,))]
        for _ in range(2):
            layers += [keras.layers.Dense(256), keras.layers.BatchNormalization(), keras.layers.ReLU()]
        self.domain_head = keras.Sequential(layers + [keras.layers.Dense(1)], name="domain_classifier")
        return [self.domain_head, self.reversal]

    def target_loss(self, y_s, f_s, y_t, f_t, strength):
        self.reversal.scale.assign(strength)
        logits = self.domain_head(self.reversal(ops.concatenate([f_s, f_t], axis=0)), training=True)
        labels = ops.concatenate([ops.zeros((ops.shape(f_s)[0], 1)), ops.ones((ops.shape(f_t)[0], 1))], 0)
        return ops.mean(keras.losses.binary_crossentropy(labels, logits, from_logits=True))


class CORAL(_Training):
    """Deep CORAL: the covariance distance of pooled source and target features."""

    aligns_features = True

    def target_loss(self, y_s, f_s, y_t, f_t, strength):
        return strength * coral_loss(f_s, f_t)


class MMD(_Training):
    """Multi-kernel MMD between pooled source and target features."""

    aligns_features = True

    def target_loss(self, y_s, f_s, y_t, f_t, strength):
        return strength * mmd_loss(f_s, f_t)


class Entropy(_Training):
    """Information maximisation on target predictions: confident, and diverse over the batch."""

    def target_loss(self, y_s, f_s, y_t, f_t, strength):
        return strength * information_maximisation(y_t, self.sigmoid)


class SelfTraining(_Training):
    """Confident pseudo-labels: target predictions above ``adaptation.confidence`` as labels."""

    def target_loss(self, y_s, f_s, y_t, f_t, strength):
        return strength * confident_pseudo_label_loss(y_t, self.config.confidence, self.sigmoid)


class Stage:
    """What every method shares: the model parts at their source-only weights, the data, the
    groups that train, the stage's length and learning rate, and the source-validation metric."""

    def __init__(self, parts, task, train, val, target, recipe, verbose: int = 0):
        from tlmulti.training.freezing import group_multipliers, resolve_unfreeze

        self.parts, self.task, self.train, self.val, self.target, self.recipe = parts, task, train, val, target, recipe
        self.verbose = verbose
        self.batch_size = recipe.data.batch_size
        self.model = parts.assemble(backbone_training=False, augment=False, name="stage")
        config = recipe.adaptation
        tuning = [p for p in recipe.phases if p.epochs and resolve_unfreeze(p.unfreeze, list(parts.groups))]
        last = tuning[-1] if tuning else (recipe.phases[-1] if recipe.phases else None)
        unfreeze = config.unfreeze if config.unfreeze is not None else (last.unfreeze if tuning else "none")
        self.unfrozen = resolve_unfreeze(unfreeze, list(parts.groups), "adaptation.unfreeze")
        self.batchnorm = last.batchnorm if last is not None else "frozen"
        self.learning_rate = config.learning_rate or (last.learning_rate if last is not None else 1e-4)
        lr_decay = last.lr_decay if tuning else 1.0
        group_lr = last.group_lr if tuning else {}
        mults = group_multipliers(parts.groups, self.unfrozen, lr_decay, group_lr)
        self.multipliers = {id(v): mults[g] for g in self.unfrozen for layer in parts.groups[g]
                            for v in layer.trainable_weights}
        self.steps_per_epoch = max(1, -(-len(train) // self.batch_size))
        if config.epochs == "auto":  # about 150 steps, 2 to 10 epochs
            config.epochs = int(min(max(round(150 / self.steps_per_epoch), 2), 10))
        self.epochs = int(config.epochs)
        self.has_val = len(val) > 0
        compiled = task.compile_args()
        self.metric = compiled["metrics"][0].name
        self.sigmoid = getattr(task, "output_activation", "softmax") == "sigmoid"
        self.base = self.source_metric() if self.has_val else None

    def snapshot(self) -> list:
        return self.model.get_weights()

    def restore(self, weights: list) -> None:
        self.model.set_weights(weights)

    def set_trainable(self) -> None:
        from tlmulti.training.freezing import set_trainable

        set_trainable(self.parts.backbone, self.parts.groups, self.unfrozen, self.batchnorm)

    def val_dataset(self):
        from tlmulti.data.pipeline import make_dataset

        return make_dataset(self.val.x, self.val.y, self.batch_size) if self.has_val else None

    def batches(self):
        """Source training batches (shuffled per epoch, paired augmentation) zipped with an endless
        stream of shuffled target batches."""
        import tensorflow as tf

        from tlmulti.data.pipeline import make_dataset, make_epoch_dataset

        seed = self.recipe.seed + 7000
        source = make_epoch_dataset(self.train.x, self.train.y, self.batch_size, seed=seed, epochs=self.epochs,
                                    augment=self.parts.augment_pairs)
        target = make_dataset(self.target.x, None, self.batch_size, shuffle=True, seed=seed).repeat()
        return tf.data.Dataset.zip((source, target))

    def source_metric(self) -> float:
        """The task's first metric on the source validation set with the current weights."""
        compiled = self.task.compile_args()
        model = self.parts.assemble(backbone_training=False, augment=False, name="check")
        model.compile(loss=compiled["loss"], metrics=compiled["metrics"][:1])
        return round(float(model.evaluate(self.val_dataset(), return_dict=True, verbose=0)[self.metric]), 4)

    def target_scores(self) -> dict:
        from tlmulti.data.pipeline import make_dataset

        probs = self.model.predict(make_dataset(self.target.x, None, self.batch_size), verbose=0)
        if not self.sigmoid and probs.ndim > 2 and probs[..., 0].size > 400_000:
            stride = int(np.ceil(probs[..., 0].size / 400_000))
            probs = probs.reshape(-1, probs.shape[-1])[::stride]
        prior = class_prior(self.train.y, probs.shape[-1], self.sigmoid)
        return label_free_scores(probs, prior, self.sigmoid)


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
              "criterion": CRITERION, "candidates": candidates}
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
    lines = [f"Adaptation ({report['method']}): kept '{report['chosen']}'. Label-free score: {report['criterion']}.",
             f"  {'method':<14}{'source val ' + metric:>22}{'target entropy':>16}{'balance KL':>12}{'score':>9}  guard"]
    for name, c in report["candidates"].items():
        label = "source-only" if name == "none" else name
        if "skipped" in c:
            lines.append(f"  {label:<14}not applicable: {c['skipped']}")
            continue
        val = "—" if c.get("source_val") is None else f"{c['source_val']:.4f}"
        lines.append(f"  {label:<14}{val:>22}{c['target_entropy']:>16.4f}{c['target_balance_kl']:>12.4f}"
                     f"{c['score']:>9.4f}  {c.get('guard', '—')}")
    return "\n".join(lines)
