"""Register your own backbone and train it with the Python API.

A backbone is any Keras model that maps images to a feature map. Register a builder with its
input contract and named layer groups, then use it in a recipe by name: the shared trainer
trains the head on the frozen backbone, then unfreezes the named groups.

    python examples/custom_backbone.py [--out runs/custom]
"""

import argparse

import keras

import tlmulti


def small_cnn(spec, weights, input_shape):
    """Builder: (spec, weights, input_shape) -> keras.Model. ``weights`` is a path or None."""
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i, filters in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"stage{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"stage{i}_bn")(x)
        x = keras.layers.MaxPooling2D(name=f"stage{i}_pool")(x)
    model = keras.Model(inputs, x, name="small_cnn")
    if weights and weights != "random":
        model.load_weights(weights)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    tlmulti.register_backbone(
        "small_cnn.example", source="builder", families=("vision",), builder=small_cnn,
        input={"size": [28, 28], "channels": 1, "normalization": "unit"},
        layer_groups={"stage1": ["stage1_.*"], "stage2": ["stage2_.*"], "stage3": ["stage3_.*"]},
        description="3-stage CNN defined in examples/custom_backbone.py",
    )
    recipe = tlmulti.load_recipe(task="image_classification", overrides=[
        "backbone.name=small_cnn.example",
        "data.train=dataset:fashion-mnist/train",
        "data.test=dataset:fashion-mnist/test",
        "data.image_size=[28, 28]",
        "data.limit_per_class=60",          # a small labelled set
        "phases.0.epochs=3",
        "phases.0.learning_rate=1e-2",
        # this CNN starts from random weights, so the second phase trains every group;
        # a builder that loads pretrained weights would unfreeze only the top, e.g. top:1
        "phases.1.epochs=6",
        "phases.1.unfreeze=all",
        "phases.1.learning_rate=2e-3",
        "head.hidden=[]",
        "strategy=fixed",                   # these phases as written (the default recipe searches first)
    ])
    run = tlmulti.train(recipe, out=args.out)
    print(f"run folder: {run.dir}")
    print(f"test accuracy: {run.metrics['test']['accuracy']:.3f}")
    for phase in run.metrics["phases"]:
        print(f"phase {phase['name']}: groups {phase['unfrozen_groups'] or 'none'}, "
              f"lr {phase['learning_rate']}, cache {phase['feature_cache']}, {phase['seconds']:.1f} s")


if __name__ == "__main__":
    main()
