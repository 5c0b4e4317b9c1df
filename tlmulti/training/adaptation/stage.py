"""The stage every adaptation method acts on."""

from __future__ import annotations

import numpy as np

from tlmulti.training.domain import LabelFreeScore, class_prior


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
        self.metric = task.guard_metric()
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

        if not self.has_val:
            return None
        return make_dataset(self.val.x, self.task.targets(self.val), self.batch_size, indices=np.arange(len(self.val)))

    def batches(self):
        """Source training batches (shuffled per epoch, paired augmentation) zipped with an endless
        stream of shuffled target batches."""
        import tensorflow as tf

        from tlmulti.data.pipeline import make_dataset, make_epoch_dataset

        seed = self.recipe.seed + 7000
        source = make_epoch_dataset(self.train.x, self.task.targets(self.train), self.batch_size, seed=seed,
                                    epochs=self.epochs, augment=self.parts.augment_pairs)
        target = make_dataset(self.target.x, None, self.batch_size, shuffle=True, seed=seed,
                              indices=np.arange(len(self.target))).repeat()
        return tf.data.Dataset.zip((source, target))

    def source_metric(self) -> float:
        """The task's guard metric on the source validation set with the current weights."""
        model = self.parts.assemble(backbone_training=False, augment=False, name="check")
        return round(self.task.guard_value(model, self.val, self.batch_size), 4)

    def target_scores(self) -> dict:
        """The label-free scores of the model's target predictions, predicted and summed batch by
        batch (none where the task has no such score). Per-pixel predictions score every
        ``stride``-th pixel row of the whole set, ``stride`` the smallest that keeps at most
        400,000 rows."""
        from tlmulti.data.pipeline import make_dataset

        if not self.task.label_free_score:
            return {}
        n = len(self.target)
        score, stride, row = LabelFreeScore(self.sigmoid), 1, 0
        for batch in make_dataset(self.target.x, None, self.batch_size, indices=np.arange(n)):
            probs = np.asarray(self.model.predict_on_batch(batch))
            if not self.sigmoid and probs.ndim > 2:
                if row == 0:
                    stride = int(np.ceil(n * probs[0, ..., 0].size / 400_000))
                rows = probs.reshape(-1, probs.shape[-1])
                probs, row = rows[(-row) % stride::stride], row + len(rows)
            score.add(probs)
        return score.result(class_prior(self.train.y, score.outputs, self.sigmoid))
