"""Keras layers that tlmulti models are made of, all serialisable with ``get_config``.

Importing this package registers every layer (the TF-Hub wrapper included) with Keras, so a saved
``model.keras`` loads with plain ``keras.saving.load_model`` afterwards::

    import tlmulti.layers  # noqa: F401
    import keras
    model = keras.saving.load_model("runs/demo/model.keras")

``tlmulti.load_model(run_dir)`` does the same in one call.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
