"""The adaptation methods, one class per method: the statistics methods (AdaBN, test-time
BatchNorm) re-estimate BatchNorm statistics; the training methods (DANN, CORAL, MMD, entropy,
self-training) train on source and target batches with the source task loss plus a target loss."""

from __future__ import annotations

import keras
from keras import ops

from tlmulti.training.adaptation.model import AdaptationModel, _Guard, _Strength
from tlmulti.training.domain import (
    AnnealedRate, GradientReversal, adapt_batchnorm, batchnorm_layers, confident_pseudo_label_loss, coral_loss,
    information_maximisation, mmd_loss, pool_features,
)

PRIOR_STRENGTH = 16  # N of test-time BatchNorm (Schneider et al. 2020)


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
        adapt_batchnorm(stage.parts, x, stage.train.x, batch=stage.batch_size)


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
