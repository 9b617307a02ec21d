"""Chapter "Softmax + cross-entropy for multi-label": ZLPR against binary cross-entropy, tuned or not.

The article (https://kexue.fm/archives/7359) claims that its loss
``log(1 + Σ_neg e^{s_i}) + log(1 + Σ_pos e^{-s_j})``, predicting the labels whose score is above 0,
needs no class weights and no threshold tuning, and is "comparable to binary cross-entropy with
carefully tuned class weights" where ``n`` labels are many and the ``k`` positives of an example few.

Every task trains the same small network (an MLP; for words, on the bag of their character
n-grams) once per loss and seed, to convergence: early stopping on the validation
micro-F1 at threshold 0, best weights restored. The losses:

* ``ZLPR``: ``lib.losses.MultilabelCategoricalCrossentropy``;
* ``BCE``: Keras's binary cross-entropy on logits (probability 0.5 is logit 0);
* ``BCE α=...``: ``lib.losses.WeightedBinaryCrossentropy`` with per-label positive weights
  ``(n_neg / n_pos) ** α`` for a small grid of ``α``; the **tuned-weight BCE** of a seed is the ``α``
  with the best validation micro-F1 at threshold 0 (plain BCE, ``α = 0``, is a candidate too).

Each trained network is scored on the test split under three decision rules: threshold 0 (the
article's rule), one threshold for all labels tuned on the validation split, and one threshold per
label tuned there (``lib.losses.tune_thresholds``).

The tasks:

* ``synthetic``: a linear teacher with logistic noise, ``P(y_l = 1 | x) = σ(γ (w_l·x - c_l))``, labels
  independent given ``x``, so the number of labels depends on the input; the Bayes-optimal scores
  are known and scored too. ``γ`` sets the noise; ``synthetic-low-noise`` has a large ``γ``;
* ``cmudict``: which of the most frequent phoneme bigrams (stress removed) occur in a word's
  pronunciation, predicted from its spelling (the CMU Pronouncing Dictionary): many labels, a few
  positives per word;
* ``yeast``: the classic Yeast benchmark (14 labels, about 4 per gene), a seeded split of the
  standard sizes.
"""

from __future__ import annotations

import collections

import numpy as np

from lib import experiments, statistics

CHAPTER = "multilabel-softmax"

RULES = ("zero", "global", "per_label")
"""Decision rules: threshold 0; one threshold tuned on validation; one per label tuned on validation."""

_SYNTHETIC = {"kind": "synthetic", "dim": 32, "labels": 100, "mean_labels": 3.0, "zipf": 0.7, "noise_scale": 2.0,
              "hidden": 128, "dropout": 0.1}
_CMUDICT = {"kind": "cmudict", "labels": 300, "ngram": 3, "min_count": 50, "length": 64, "hidden": 128,
            "dropout": 0.1}
_YEAST = {"kind": "yeast", "hidden": 64, "dropout": 0.3}

_COMMON = {"weight_powers": [0.25, 0.5, 0.75, 1.0], "learning_rate": 3e-3, "batch_size": 256, "patience": 6,
           "min_delta": 0.001,
           # the article's "comparable": a paired 95 % interval inside ±1 F1 point, fixed before the run
           "equivalence_bound": 0.01}


def _task(base, **changes):
    return {**base, **changes}


_SCALES = {
    "smoke": {"seeds": [0, 1], "patience": 1, "weight_powers": [1.0], "tasks": {
        "synthetic": _task(_SYNTHETIC, labels=20, train=300, validation=100, test=100, hidden=16, max_epochs=1),
        "cmudict": _task(_CMUDICT, labels=30, train=400, validation=100, test=100, hidden=16, min_count=2,
                         max_epochs=1),
        "yeast": _task(_YEAST, hidden=8, max_epochs=1)}},
    "quick": {"seeds": [0, 1], "patience": 2, "weight_powers": [0.5, 1.0], "tasks": {
        "synthetic": _task(_SYNTHETIC, train=3_000, validation=1_000, test=1_000, max_epochs=8),
        "cmudict": _task(_CMUDICT, labels=200, train=4_000, validation=1_000, test=1_000, max_epochs=6),
    }},
    "reference": {"seeds": [0, 1, 2, 3, 4], "tasks": {
        "synthetic": _task(_SYNTHETIC, train=8_000, validation=2_000, test=4_000, max_epochs=80),
        "synthetic-low-noise": _task(_SYNTHETIC, noise_scale=8.0, train=8_000, validation=2_000, test=4_000,
                                     max_epochs=80),
        "cmudict": _task(_CMUDICT, train=12_000, validation=3_000, test=6_000, max_epochs=40),
        "yeast": _task(_YEAST, max_epochs=100)}},
    "full": {"seeds": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "tasks": {
        "synthetic": _task(_SYNTHETIC, labels=1_000, mean_labels=5.0, train=50_000, validation=10_000,
                           test=20_000, hidden=512, max_epochs=200),
        "synthetic-low-noise": _task(_SYNTHETIC, labels=1_000, mean_labels=5.0, noise_scale=8.0, train=50_000,
                                     validation=10_000, test=20_000, hidden=512, max_epochs=200),
        "cmudict": _task(_CMUDICT, labels=1_000, train=None, validation=10_000, test=20_000, min_count=5,
                         hidden=512, max_epochs=100),
        "yeast": _task(_YEAST, max_epochs=300)}},
}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on (``train=None``: every word not held out)."""
    experiments.check_scale(scale)
    return {**_COMMON, **_SCALES[scale]}


# --- data -------------------------------------------------------------------------------------------


def synthetic_task(options: dict, seed: int = 0) -> dict:
    """Features ``x ~ N(0, I)`` and labels drawn from ``P(y_l = 1 | x) = σ(γ (w_l·x - c_l))``.

    ``w_l ~ N(0, I/d)``, so ``u = w_l·x`` is about standard normal, and ``c_l`` solves
    ``E_u[σ(γ (u - c_l))] = π_l``: label ``l`` occurs on a fraction ``π_l ∝ l^-zipf`` of the examples (the
    ``π_l`` sum to ``mean_labels``) whatever the noise ``1/γ``. Labels are independent given ``x``: the
    count of an example's labels depends on ``x``. Returns the splits' ``x``, ``y`` and true logits.
    """
    from scipy import optimize, special

    rng = np.random.default_rng(seed)
    sizes = [options["train"], options["validation"], options["test"]]
    n, d, labels = sum(sizes), options["dim"], options["labels"]
    prevalence = np.arange(1, labels + 1, dtype=np.float64) ** -options["zipf"]
    prevalence = np.minimum(options["mean_labels"] * prevalence / prevalence.sum(), 0.5)
    teacher = rng.normal(scale=1 / np.sqrt(d), size=(d, labels))
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # E over u ~ N(0, 1)
    gamma = options["noise_scale"]

    def excess(c, target):
        return weights @ special.expit(gamma * (nodes - c)) / weights.sum() - target

    cut = np.array([optimize.brentq(excess, -10.0, 10.0, args=(p,)) for p in prevalence])
    x = rng.normal(size=(n, d)).astype(np.float32)
    logits = gamma * (x.astype(np.float64) @ teacher - cut)
    y = (rng.random(size=logits.shape) < special.expit(logits)).astype(np.int32)
    parts = np.split(np.arange(n), np.cumsum(sizes)[:-1])
    return {name: {"x": x[p], "y": y[p], "logits": logits[p]}
            for name, p in zip(("train", "validation", "test"), parts)}


def word_ngrams(word: str, n: int) -> list[str]:
    """The character 1- to ``n``-grams of ``<word>`` (``<`` and ``>`` mark its ends)."""
    marked = f"<{word}>"
    return [marked[i:i + size] for size in range(1, n + 1) for i in range(len(marked) - size + 1)
            if marked[i:i + size] not in ("<", ">")]


def phoneme_bigrams(phonemes) -> set:
    """The pairs of consecutive phonemes of a pronunciation, stress marks removed (``AH0`` -> ``AH``)."""
    plain = [p.rstrip("012") for p in phonemes]
    return {f"{a}-{b}" for a, b in zip(plain[:-1], plain[1:])}


def cmudict_task(options: dict, seed: int = 0) -> dict:
    """Words of the CMU Pronouncing Dictionary (letters only, first pronunciation) as a bag of their
    character n-grams (0/1 for each n-gram seen ``min_count`` times in the training words), and as
    labels the ``labels`` phoneme bigrams most frequent in the training words."""
    from lib import data

    entries = [(word, phonemes) for word, phonemes in data.load_cmudict() if word.isalpha()]
    validation, test = options["validation"], options["test"]
    rest = len(entries) - validation - test
    train = rest if options["train"] is None else options["train"]
    order = np.random.default_rng(seed).permutation(len(entries))
    parts = {"validation": order[:validation], "test": order[validation:validation + test],
             "train": order[validation + test:validation + test + train]}
    grams = {name: [word_ngrams(entries[i][0], options["ngram"]) for i in index] for name, index in parts.items()}
    vocabulary = data.Vocabulary.from_sequences(grams["train"], min_count=options["min_count"])
    counts = collections.Counter(b for i in parts["train"] for b in phoneme_bigrams(entries[i][1]))
    names = [b for b, _ in counts.most_common(options["labels"])]
    column = {b: j for j, b in enumerate(names)}

    def labels(index):
        y = np.zeros((len(index), len(names)), np.int32)
        for row, i in enumerate(index):
            for b in phoneme_bigrams(entries[i][1]):
                if b in column:
                    y[row, column[b]] = 1
        return y

    def features(sequences):
        # which of the vocabulary's n-grams the word contains (the two reserved ids dropped)
        ids = vocabulary.encode(sequences, options["length"])
        x = np.zeros((len(ids), len(vocabulary)), np.float32)
        np.put_along_axis(x, ids, 1.0, axis=1)
        return x[:, 2:]

    task = {name: {"x": features(grams[name]), "y": labels(index), "words": [entries[i][0] for i in index[:5]]}
            for name, index in parts.items()}
    task["label_names"] = names
    return task


def yeast_task(options: dict, seed: int = 0) -> dict:
    """Yeast as shipped by ``river``: a seeded split of the standard sizes (1,500 training genes, of which
    300 validate, and 917 test genes), features standardised with the training genes' statistics."""
    from lib import data

    features, labels, _ = data.load_yeast()
    train, test = data.split_indices(len(features), (1500 / 2417, 917 / 2417), seed=seed)
    fit, validation = train[:1200], train[1200:]
    mean, std = features[fit].mean(axis=0), features[fit].std(axis=0)
    x = ((features - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return {name: {"x": x[index], "y": labels[index]}
            for name, index in (("train", fit), ("validation", validation), ("test", test))}


def prepare(settings: dict) -> dict:
    """Every task's splits (fixed for all seeds: a seed changes initialisation, dropout and batches)."""
    builders = {"synthetic": synthetic_task, "cmudict": cmudict_task, "yeast": yeast_task}
    return {name: builders[options["kind"]](options) for name, options in settings["tasks"].items()}


def describe(task: dict) -> dict:
    """Sizes, labels ``n``, positives per example ``k``, and label frequencies of a task's training split."""
    y = task["train"]["y"]
    frequency = y.mean(axis=0)
    return {"train": len(y), "validation": len(task["validation"]["y"]), "test": len(task["test"]["y"]),
            "labels": int(y.shape[1]), "positives_per_example": float(y.sum(axis=1).mean()),
            "test_positives_per_example": float(task["test"]["y"].sum(axis=1).mean()),
            "examples_without_labels": float((y.sum(axis=1) == 0).mean()),
            "density": float(y.mean()), "max_frequency": float(frequency.max()),
            "median_frequency": float(np.median(frequency)), "min_positives": int(y.sum(axis=0).min())}


# --- models and decisions -------------------------------------------------------------------------------


def methods(settings: dict) -> list[str]:
    """The losses trained for every task and seed: ZLPR, BCE and BCE with each weight power."""
    return ["ZLPR", "BCE"] + [f"BCE α={power}" for power in settings["weight_powers"]]


def make_loss(method: str, y_train):
    """The Keras loss of a method; ``BCE α=p`` weighs each label's positives by ``(n_neg/n_pos) ** p``."""
    import keras

    from lib import losses

    if method == "ZLPR":
        return losses.MultilabelCategoricalCrossentropy()
    if method == "BCE":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    if method.startswith("BCE α="):
        power = float(method.split("=")[1])
        return losses.WeightedBinaryCrossentropy(losses.balanced_pos_weight(y_train, power=power))
    raise ValueError(f"`method` must be 'ZLPR', 'BCE' or 'BCE α=<power>'. Received: method={method!r}")


def make_network(options: dict, inputs, labels: int):
    """One small MLP with one logit per label: features -> Dense(ReLU) -> Dropout -> Dense.
    Returns ``(logits, layers)``."""
    import keras

    layers = [keras.layers.Dense(options["hidden"], activation="relu"), keras.layers.Dense(labels)]
    hidden = keras.layers.Dropout(options["dropout"])(layers[0](inputs))
    return layers[1](hidden), layers


def make_model(options: dict, input_shape, labels: int, heads: int):
    """``heads`` independent networks side by side on one input, outputs ``h0, h1, ...``.

    No weight is shared, Keras sums the heads' losses and Adam updates each weight from its own
    gradient, so this trains the same networks as separate runs would, on identical batches, with
    one traced training step instead of one per network. Returns ``(model, layers of each head)``.
    """
    import keras

    inputs = keras.Input(input_shape)
    outputs, layers = {}, []
    for head in range(heads):
        outputs[f"h{head}"], own = make_network(options, inputs, labels)
        layers.append(own)
    return keras.Model(inputs, outputs), layers


def decide(scores, rule: str, validation_y=None, validation_scores=None) -> tuple:
    """``(0/1 predictions, threshold)`` of ``scores`` under a decision rule (thresholds tuned on the
    validation split's labels and scores)."""
    from lib import losses

    if rule == "zero":
        threshold = 0.0
    elif rule == "global":
        threshold = losses.tune_thresholds(validation_y.reshape(-1, 1), validation_scores.reshape(-1, 1))[0]
    elif rule == "per_label":
        threshold = losses.tune_thresholds(validation_y, validation_scores)
    else:
        raise ValueError(f"`rule` must be one of {RULES}. Received: rule={rule!r}")
    return (scores > threshold).astype(np.int32), np.asarray(threshold).tolist()


def score(y_true, predicted) -> dict:
    """Micro- and macro-F1, labels predicted per example, and the share of examples left with none."""
    from lib import losses

    f1 = losses.f1_scores(y_true, predicted)
    counts = predicted.sum(axis=1)
    return {"micro_f1": f1["micro"], "macro_f1": f1["macro"], "labels_predicted": float(counts.mean()),
            "no_label": float((counts == 0).mean())}


def evaluate_scores(task: dict, validation_scores, test_scores) -> dict:
    """Test scores of one network under every decision rule."""
    result = {}
    for rule in RULES:
        predicted, threshold = decide(test_scores, rule, task["validation"]["y"], validation_scores)
        result[rule] = {**score(task["test"]["y"], predicted),
                        "threshold": threshold if rule != "per_label" else float(np.median(threshold))}
    return result


def logits(model, x, batch_size: int = 8192) -> dict:
    """The model's scores per output, called directly (no ``predict`` function traced for every model)."""
    import keras

    parts = [model(x[i:i + batch_size], training=False) for i in range(0, len(x), batch_size)]
    return {key: np.concatenate([keras.ops.convert_to_numpy(part[key]) for part in parts]) for key in parts[0]}


class _Head:
    """One network of a side-by-side model, as :func:`lib.training.train_with_early_stopping` sees a model:
    its own weights to snapshot and restore."""

    def __init__(self, layers):
        self.layers = layers

    def get_weights(self):
        return [layer.get_weights() for layer in self.layers]

    def set_weights(self, weights):
        for layer, values in zip(self.layers, weights):
            layer.set_weights(values)


def train_methods(settings: dict, options: dict, task: dict, seed: int) -> dict:
    """Train one network per loss from ``seed``, side by side, each until its validation micro-F1 at
    threshold 0 stops rising; each network's best epoch is restored.

    The rule is :func:`lib.training.train_with_early_stopping`'s, applied to every network on its own
    (its best epoch; stop after ``patience`` epochs without an improvement of more than ``min_delta``,
    or at ``max_epochs``), with one addition: epochs in
    which a network has not yet predicted a single validation label (F1 = 0, as binary cross-entropy at
    ``p = 0.5`` does for a while with rare labels) do not count against its patience. Training goes on
    while any network is still improving; a network that has stopped keeps its best weights.

    Returns:
        ``{method: {"curve", "best_epoch", "epochs", "stopped_early", "best", "validation_scores",
        "test_scores"}}``.
    """
    import keras

    from lib import config, losses

    config.set_seed(seed)
    names = methods(settings)
    train, validation = task["train"], task["validation"]
    model, layers = make_model(options, train["x"].shape[1:], train["y"].shape[1], len(names))
    loss = {f"h{i}": make_loss(method, train["y"]) for i, method in enumerate(names)}
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), loss=loss)
    y_train = train["y"].astype(np.float32)
    y_validation = validation["y"].astype(np.float32)
    heads = [_Head(own) for own in layers]
    state = [{"curve": [], "best": None, "best_epoch": 0, "weights": None, "waited": 0, "stopped": False}
             for _ in names]
    for epoch in range(1, options["max_epochs"] + 1):
        history = model.fit(train["x"], {key: y_train for key in loss}, batch_size=settings["batch_size"],
                            epochs=1, verbose=0).history
        scores = logits(model, validation["x"])
        for i, head in enumerate(state):
            if head["stopped"]:
                continue
            key = f"h{i}"
            f1 = losses.f1_scores(validation["y"], (scores[key] > 0).astype(np.int32))
            value = float(np.mean(keras.ops.convert_to_numpy(loss[key](y_validation, scores[key]))))
            head["curve"].append({"epoch": epoch, "loss": float(history[f"{key}_loss"][-1]),
                                  "validation_micro_f1": f1["micro"], "validation_macro_f1": f1["macro"],
                                  "validation_loss": value,
                                  "validation_labels_predicted": float((scores[key] > 0).sum(axis=1).mean())})
            if head["best"] is None or f1["micro"] > head["best"] + settings["min_delta"]:
                head.update(best=f1["micro"], best_epoch=epoch, weights=heads[i].get_weights(), waited=0)
            elif f1["micro"] > 0:
                head["waited"] += 1
                head["stopped"] = head["waited"] >= settings["patience"]
        if all(head["stopped"] for head in state):
            break
    result = {}
    for i, (method, head) in enumerate(zip(names, state)):
        heads[i].set_weights(head["weights"])
        result[method] = {"curve": head["curve"], "best_epoch": head["best_epoch"], "epochs": len(head["curve"]),
                          "stopped_early": head["stopped"], "best": head["best"]}
    validation_scores, test_scores = logits(model, validation["x"]), logits(model, task["test"]["x"])
    for i, method in enumerate(names):
        result[method]["validation_scores"] = validation_scores[f"h{i}"]
        result[method]["test_scores"] = test_scores[f"h{i}"]
    return result


def oracle(task: dict) -> dict:
    """The Bayes-optimal scores of a synthetic task (its true logits) under every decision rule, and the
    expected number of labels per test example, ``Σ_l σ(z_l)``."""
    result = evaluate_scores(task, task["validation"]["logits"], task["test"]["logits"])
    result["expected_labels"] = float((1 / (1 + np.exp(-task["test"]["logits"]))).sum(axis=1).mean())
    return result


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """Every task and loss from ``seed``: learning curves, and test scores under every decision rule."""
    result = {}
    for name, options in settings["tasks"].items():
        task, result[name] = data[name], {}
        for method, run in train_methods(settings, options, task, seed).items():
            result[name][method] = {
                "curve": [{key: round(value, 5) for key, value in row.items()} for row in run["curve"]],
                "best_epoch": run["best_epoch"], "epochs": run["epochs"],
                "stopped_early": run["stopped_early"], "validation_micro_f1": run["best"],
                "test": evaluate_scores(task, run["validation_scores"], run["test_scores"])}
        # plain BCE (α = 0) is a candidate too: tuning may find that no weight is best
        candidates = [m for m in methods(settings) if m.startswith("BCE")]
        chosen = max(candidates, key=lambda m: result[name][m]["validation_micro_f1"])
        result[name]["tuned-weight BCE"] = {"chosen": chosen, "test": result[name][chosen]["test"]}
        result[name]["description"] = describe(task)
        if options["kind"] == "synthetic":
            result[name]["bayes"] = oracle(task)
    return result


COMPARISONS = (("ZLPR", "BCE"), ("ZLPR", "tuned-weight BCE"))
"""Paired differences reported for every task, rule and metric: ZLPR minus each baseline."""


def summarise(settings: dict, per_seed: list) -> dict:
    """Per task: the data's description, mean and std of every method and rule, ZLPR minus BCE and minus
    tuned-weight BCE as paired 95 % intervals (with the equivalence bound), ZLPR at 0 minus ZLPR with
    tuned thresholds, and for synthetic tasks the Bayes-optimal scores."""
    bound = settings["equivalence_bound"]
    summary = {}
    for name, options in settings["tasks"].items():
        runs = [seed_result[name] for seed_result in per_seed]
        table = {}
        for method in methods(settings) + ["tuned-weight BCE"]:
            for rule in RULES:
                row = {}
                for key in ("micro_f1", "macro_f1", "labels_predicted", "no_label"):
                    values = np.array([r[method]["test"][rule][key] for r in runs])
                    row[key] = float(values.mean())
                    row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                table[f"{method}|{rule}"] = row
        comparisons = {}
        if len(runs) > 1:
            def values(method, rule, metric):
                return [r[method]["test"][rule][metric] for r in runs]

            for metric in ("micro_f1", "macro_f1"):
                for better, other in COMPARISONS:
                    for rule in RULES:
                        comparisons[f"{better} - {other}|{rule}|{metric}"] = statistics.paired_difference(
                            values(better, rule, metric), values(other, rule, metric), equivalence_bound=bound)
                    # the article's rule for ZLPR against the baseline with its best tuning
                    for rule in ("global", "per_label"):
                        comparisons[f"{better} zero - {other} {rule}|{metric}"] = statistics.paired_difference(
                            values(better, "zero", metric), values(other, rule, metric), equivalence_bound=bound)
                for rule in ("global", "per_label"):
                    comparisons[f"ZLPR {rule} - ZLPR zero|{metric}"] = statistics.paired_difference(
                        values("ZLPR", rule, metric), values("ZLPR", "zero", metric), equivalence_bound=bound)
        epochs = {method: {"best_epoch": float(np.mean([r[method]["best_epoch"] for r in runs])),
                           "epochs": float(np.mean([r[method]["epochs"] for r in runs])),
                           "stopped_early": int(sum(r[method]["stopped_early"] for r in runs))}
                  for method in methods(settings)}
        chosen = collections.Counter(r["tuned-weight BCE"]["chosen"] for r in runs)
        entry = {"seeds": len(runs), "table": table, "comparisons": comparisons, "epochs": epochs,
                 "chosen_weights": dict(sorted(chosen.items()))}
        entry["description"] = runs[0]["description"]
        if "bayes" in runs[0]:
            entry["bayes"] = runs[0]["bayes"]
        summary[name] = entry
    return summary


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
