"""``calibration: temperature``: probabilities that mean what they say, fitted on validation data.

After training (and any domain adaptation), one temperature (per label for multi-label tasks) is
fitted on the validation split by minimising the negative log-likelihood of its labels (SciPy's
bounded scalar search over ``log T`` in [log 0.05, log 20]), and the
model gains a :class:`~tlmulti.layers.calibration.TemperatureScaling` layer, so ``model.keras``,
predictions and exports all give the calibrated probabilities. The predicted class, accuracy,
AUROC and every ranking are unchanged; the expected calibration error (ECE) and the negative
log-likelihood (NLL) are reported before and after, on validation (where ``T`` was fitted) and on
the test set (which it has not seen), in ``metrics.json`` under ``calibration``.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _scaled(probs: np.ndarray, t, sigmoid: bool) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    if sigmoid:
        return 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / t))
    z = np.log(p) / t
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(y, probs: np.ndarray, sigmoid: bool) -> float:
    """Mean negative log-likelihood of integer labels (or label matrices for sigmoid outputs)."""
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    y = np.asarray(y)
    if sigmoid:
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
    return float(-np.mean(np.log(p[np.arange(len(y)), y.astype(int)])))


def fit_temperature(y, probs: np.ndarray, sigmoid: bool) -> list[float]:
    """The temperature(s) minimising validation NLL: one, or one per label for sigmoid outputs."""
    from scipy.optimize import minimize_scalar

    def best(y_, p_):
        result = minimize_scalar(lambda s: nll(y_, _scaled(p_, np.exp(s), sigmoid), sigmoid),
                                 bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
        return float(np.exp(result.x))

    if not sigmoid:
        return [best(y, probs)]
    y, probs = np.asarray(y), np.asarray(probs)
    return [best(y[:, k], probs[:, k]) if 0 < y[:, k].sum() < len(y) else 1.0 for k in range(probs.shape[1])]


def _scores(y, probs, t, sigmoid: bool, bins: int) -> dict:
    from tlmulti.evaluation.classification import calibration as ece_of

    after = _scaled(probs, np.asarray(t), sigmoid)
    out = {"nll_before": round(nll(y, probs, sigmoid), 6), "nll_after": round(nll(y, after, sigmoid), 6)}
    if not sigmoid:
        out.update(ece_before=round(ece_of(y, probs, bins)["ece"], 6), ece_after=round(ece_of(y, after, bins)["ece"], 6))
    return out


def calibrate(model, task, val, test=None):
    """``(model with temperature scaling, record, before)``, or ``(model, None, None)`` without
    validation data; ``before``: the test set's ECE and reliability bins without the scaling
    (``{"ece", "calibration"}``, single-label only), for the reliability diagram."""
    import keras

    from tlmulti.layers.calibration import TemperatureScaling

    if val is None or len(val) == 0:
        return model, None, None
    sigmoid = getattr(task, "output_activation", "softmax") == "sigmoid"
    bins = task.recipe.evaluation.calibration_bins
    probs = task.probabilities(model, val.x)
    t = fit_temperature(val.y, probs, sigmoid)
    record = {"method": "temperature", "temperature": t if sigmoid else t[0], "fitted_on": "validation",
              "val": _scores(val.y, probs, t, sigmoid, bins)}
    before = None
    if test is not None and len(test) and test.y is not None:
        test_probs = task.probabilities(model, test.x)
        record["test"] = _scores(test.y, test_probs, t, sigmoid, bins)
        if not sigmoid:
            from tlmulti.evaluation.classification import calibration as ece_of

            cal = ece_of(test.y, test_probs, bins)
            before = {"ece": cal["ece"], "calibration": cal["bins"]}
    scaled = TemperatureScaling(t, "sigmoid" if sigmoid else "softmax", name="temperature_scaling")(model.output)
    return keras.Model(model.input, scaled, name=model.name), record, before
