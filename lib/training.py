"""Training to convergence: epoch by epoch, early stopping on a validation score, best weights kept.

Keras's ``EarlyStopping`` callback watches a metric that ``fit`` computes. The chapters' verdicts
need scores that ``fit`` does not (span F1 after Viterbi decoding, error rates after free-running
decoding), so this loop asks a function for the validation score after every epoch, keeps the
weights of the best epoch, stops after ``patience`` epochs without improvement, and returns the
whole learning curve, so a reader can see that a model has converged.
"""

from __future__ import annotations

import time
from typing import Callable

from lib.checks import check_positive_int


def train_with_early_stopping(model, train_epoch: Callable[[], dict], evaluate: Callable[[], dict], *,
                              monitor: str, mode: str = "max", max_epochs: int, patience: int,
                              min_delta: float = 0.0) -> dict:
    """Train ``model`` until the monitored validation score stops improving; restore its best weights.

    After each call of ``train_epoch`` (one pass over the training data), ``evaluate`` returns the
    validation scores. An epoch improves on the best so far when its ``monitor`` score is better by
    more than ``min_delta``. Training stops after ``patience`` epochs in a row without improvement,
    or after ``max_epochs``; the weights of the best epoch are then put back into the model.

    Args:
        model: anything with ``get_weights`` and ``set_weights`` (a Keras model).
        train_epoch: trains one epoch and returns a dict of training numbers (e.g. the loss).
        evaluate: returns a dict of validation numbers that contains ``monitor``.
        monitor: the key of the score that decides.
        mode: ``"max"`` (higher is better, e.g. F1) or ``"min"`` (e.g. a loss).
        max_epochs, patience: positive integers.
        min_delta: the smallest change that counts as an improvement (>= 0).

    Returns:
        A dict: ``curve`` (one dict per epoch: ``epoch``, ``seconds`` of training, and the training
        and validation numbers), ``best_epoch``, ``best`` (the monitored score there), ``epochs`` (run)
        and ``stopped_early`` (whether patience ran out before ``max_epochs``).

    Raises:
        ValueError: for a bad ``mode``, ``max_epochs``, ``patience`` or ``min_delta``, or when
            ``evaluate`` does not return ``monitor``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"`mode` must be 'max' or 'min'. Received: mode={mode!r}")
    max_epochs = check_positive_int("max_epochs", max_epochs)
    patience = check_positive_int("patience", patience)
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
        raise ValueError(f"`min_delta` must be a number >= 0. Received: min_delta={min_delta!r}")
    sign = 1.0 if mode == "max" else -1.0
    curve, best, best_epoch, best_weights, waited = [], None, 0, None, 0
    for epoch in range(1, max_epochs + 1):
        begin = time.perf_counter()
        row = {"epoch": epoch, **train_epoch()}
        row["seconds"] = time.perf_counter() - begin
        scores = evaluate()
        if monitor not in scores:
            raise ValueError(f"`evaluate` must return the monitored score {monitor!r}. Received keys: {sorted(scores)}")
        row.update(scores)
        curve.append(row)
        score = float(scores[monitor])
        if best is None or sign * (score - best) > min_delta:
            best, best_epoch, best_weights, waited = score, epoch, model.get_weights(), 0
        else:
            waited += 1
            if waited >= patience:
                break
    model.set_weights(best_weights)
    return {"curve": curve, "best_epoch": best_epoch, "best": best, "epochs": len(curve),
            "stopped_early": len(curve) < max_epochs}
