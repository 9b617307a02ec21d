"""Chapter "A look at the AdaFactor optimizer": the article's ladder from Adam to AdaFactor, trained to the end.

Task: a character language model of *People's Daily* (January 1998, ``lib.data.load_segmentation``): an
embedding of the previous ``context`` characters, one hidden ReLU layer and a softmax over the vocabulary
(Bengio et al.'s neural n-gram model). Its three weight matrices are all factored by AdaFactor.

Runs, from the same initial weights on the same batches within a seed:

* **learning-rate sweep**, one seed of its own (``sweep_seed``, not one of the reported seeds): every rung
  of the ladder at every rate of its grid, for the full number of steps; each rung then trains at the rate
  with the lowest validation loss;
* **the ladder** (the article's steps 1 to 4), each at its tuned rate:
  Adam → Adam with β₁ = 0 (an RMSProp with bias correction: the article's step 1) → AdaFactor with a full
  second moment (step 3's decay rate β̂₂,t = 1 − t^(−c), update clipping and the relative step, but not
  step 2) → AdaFactor (all four steps). Adjacent rungs differ by one idea, so their paired difference
  is what that idea costs or gains. The factored and unfactored rungs are compared against an equivalence
  bound fixed here, before the run;
* **stability**: AdaFactor at its tuned rate with c = 0.5 and c = 1 (the edge of the paper's 0 < c < 1,
  the running mean of all squared gradients), and with update clipping switched off (``d = ∞``);
* **fine-tuning**: each seed's trained AdaFactor model is fine-tuned as a language model of review
  sentences (``lib.data.load_sentiment``, another domain) with AdaFactor at the article's 10⁻³ and at
  other rates, and with Adam at the rates usual for fine-tuning; the checkpoint with the best validation
  loss is scored on test reviews.

Measured: test cross-entropy (nats per character), validation curves, per-step training losses (loss
spikes), the relative size of every update, ``RMS(Δθ) / max(ε₂, RMS(θ))`` per matrix (for AdaFactor
divided by the rate it is ``RMS`` of the clipped update, and without clipping ``RMS(u_t)`` itself), and the
bytes of each optimizer's variables (``lib.optimizers.state_bytes``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from lib import experiments, statistics

CHAPTER = "adafactor"

LADDER = {
    "Adam": {"optimizer": "adam", "beta_1": 0.9},
    "Adam, β₁ = 0": {"optimizer": "adam", "beta_1": 0.0},
    "AdaFactor, unfactored": {"optimizer": "adafactor", "factored": False},
    "AdaFactor": {"optimizer": "adafactor", "factored": True},
}
"""The article's ladder, each rung one idea away from the one before (``optimizer`` options)."""

STABILITY = {
    "c = 0.5": {"decay_exponent": 0.5},
    "c = 1": {"decay_exponent": 1.0},
    "no clipping": {"clip_threshold": None},
    "c = 1, no clipping": {"decay_exponent": 1.0, "clip_threshold": None},
}
"""Variants of AdaFactor (c = 0.8, d = 1) at its tuned rate: the decay exponent and the update clipping."""

_GRIDS = {"adam": [1e-3, 3e-3, 1e-2], "adafactor": [1e-2, 3e-2, 1e-1]}
_FINE_TUNE = {
    "AdaFactor, 1e-4": {"optimizer": "adafactor", "learning_rate": 1e-4},
    "AdaFactor, 3e-4": {"optimizer": "adafactor", "learning_rate": 3e-4},
    "AdaFactor, 1e-3 (the advice)": {"optimizer": "adafactor", "learning_rate": 1e-3},
    "AdaFactor, 3e-3": {"optimizer": "adafactor", "learning_rate": 3e-3},
    "Adam, 3e-5": {"optimizer": "adam", "beta_1": 0.9, "learning_rate": 3e-5},
    "Adam, 1e-4": {"optimizer": "adam", "beta_1": 0.9, "learning_rate": 1e-4},
    "Adam, 3e-4": {"optimizer": "adam", "beta_1": 0.9, "learning_rate": 3e-4},
}
ADVICE = "AdaFactor, 1e-3 (the advice)"

_COMMON = {"split": [0.9, 0.05, 0.05], "review_split": [0.8, 0.1, 0.1], "min_dim_size_to_factor": 1,
           "equivalence_bound_nats": 0.02, "spike_nats": 0.1, "warm_share": 0.1, "sweep_seed": 1000}
_SCALES = {
    "smoke": {"vocabulary_size": 200, "context": 3, "embedding_dim": 8, "hidden_dim": 16, "batch_size": 32,
              "steps": 20, "log_every": 5, "validation_positions": 512, "test_positions": 1024,
              "fine_tune_reviews": 200, "fine_tune_steps": 10, "fine_tune_log_every": 5, "seeds": [0, 1],
              "grids": {"adam": [1e-3, 1e-2], "adafactor": [1e-2]},
              "stability": ["no clipping"], "fine_tune": [ADVICE]},
    "quick": {"vocabulary_size": 1000, "context": 4, "embedding_dim": 32, "hidden_dim": 128, "batch_size": 128,
              "steps": 200, "log_every": 50, "validation_positions": 4096, "test_positions": 16384,
              "fine_tune_reviews": 1000, "fine_tune_steps": 100, "fine_tune_log_every": 50, "seeds": [0, 1],
              "grids": {"adam": [3e-3], "adafactor": [3e-2]}, "stability": ["no clipping"], "fine_tune": [ADVICE]},
    "reference": {"vocabulary_size": 1000, "context": 4, "embedding_dim": 32, "hidden_dim": 128, "batch_size": 128,
                  "steps": 4000, "log_every": 100, "validation_positions": 8192, "test_positions": None,
                  "fine_tune_reviews": 2000, "fine_tune_steps": 1000, "fine_tune_log_every": 100,
                  "seeds": [0, 1, 2], "grids": _GRIDS, "stability": list(STABILITY), "fine_tune": list(_FINE_TUNE)},
    "full": {"vocabulary_size": 4000, "context": 8, "embedding_dim": 128, "hidden_dim": 1024, "batch_size": 512,
             "steps": 8000, "log_every": 100, "validation_positions": 32768, "test_positions": None,
             "fine_tune_reviews": 4000, "fine_tune_steps": 2000, "fine_tune_log_every": 100,
             "seeds": [0, 1, 2], "grids": _GRIDS, "stability": list(STABILITY), "fine_tune": list(_FINE_TUNE)},
}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on (``test_positions=None``: the whole test split)."""
    experiments.check_scale(scale)
    chosen = {**_COMMON, **_SCALES[scale]}
    chosen["ladder"] = LADDER
    chosen["stability_options"] = {name: STABILITY[name] for name in chosen["stability"]}
    chosen["fine_tune_options"] = {name: _FINE_TUNE[name] for name in chosen["fine_tune"]}
    return chosen


# --- data ----------------------------------------------------------------------------------------------


def _windows(text: str, vocabulary, context: int):
    """``(x, y)``: every position of ``text`` with the ``context`` characters before it (int32)."""
    ids = vocabulary.encode([text], length=len(text))[0].astype("int32")
    view = np.lib.stride_tricks.sliding_window_view(ids, context + 1)
    return np.ascontiguousarray(view[:, :context]), np.ascontiguousarray(view[:, context])


def _subset(pair, size, seed):
    if size is None or size >= len(pair[1]):
        return pair
    chosen = np.sort(np.random.default_rng(seed).permutation(len(pair[1]))[:size])
    return pair[0][chosen], pair[1][chosen]


def prepare(settings: dict) -> dict:
    """The two corpora as (context, next character) windows, the unigram baselines, and the sweep.

    Sentences (and reviews) are split before windows are cut, and joined with ``"\\n"`` (end of sentence).
    The vocabulary is the most frequent characters of the training sentences; the rest are ``<unk>``.
    The learning-rate sweep runs here, once, on its own seed (see :func:`sweep`).
    """
    from lib import data

    sentences = [chars for chars, _ in data.load_segmentation()]
    parts = data.split_indices(len(sentences), settings["split"], seed=0)
    texts = ["\n".join(sentences[i] for i in part) + "\n" for part in parts]
    vocabulary = data.Vocabulary.from_sequences([texts[0]], max_size=settings["vocabulary_size"])
    context = settings["context"]
    train, validation, test = (_windows(text, vocabulary, context) for text in texts)
    reviews, _ = data.load_sentiment()
    review_parts = data.split_indices(len(reviews), settings["review_split"], seed=0)
    review_parts[0] = review_parts[0][: settings["fine_tune_reviews"]]
    review_train, review_validation, review_test = (
        _windows("\n".join(reviews[i] for i in part) + "\n", vocabulary, context) for part in review_parts)
    prepared = {
        "vocabulary": vocabulary, "train": train,
        "validation": _subset(validation, settings["validation_positions"], 1),
        "test": _subset(test, settings["test_positions"], 2),
        "review_train": review_train, "review_validation": _subset(review_validation,
                                                                    settings["validation_positions"], 3),
        "review_test": review_test,
    }
    counts = np.bincount(train[1], minlength=len(vocabulary)) + 1.0
    log_p = np.log(counts / counts.sum())
    unk = vocabulary.index[vocabulary.UNK]
    prepared["facts"] = {
        "sentences": len(sentences), "reviews": len(reviews), "fine_tune_reviews": len(review_parts[0]),
        "train_positions": len(train[1]), "validation_positions": len(prepared["validation"][1]),
        "test_positions": len(prepared["test"][1]), "review_train_positions": len(review_train[1]),
        "review_test_positions": len(review_test[1]), "vocabulary": len(vocabulary),
        "unigram_test_nats": float(-log_p[prepared["test"][1]].mean()),
        "unigram_review_test_nats": float(-log_p[review_test[1]].mean()),
        "test_unk_share": float(np.mean(prepared["test"][1] == unk)),
        "review_test_unk_share": float(np.mean(review_test[1] == unk)),
    }
    prepared["sweep"] = sweep(settings, prepared)
    return prepared


# --- model, optimizers, training -------------------------------------------------------------------------


def build_model(settings: dict, seed: int):
    """The character language model: embedding → flatten → Dense ReLU → logits over the vocabulary."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((settings["context"],), dtype="int32"),
        keras.layers.Embedding(settings["vocabulary_size"], settings["embedding_dim"], name="embedding"),
        keras.layers.Flatten(),
        keras.layers.Dense(settings["hidden_dim"], activation="relu", name="hidden"),
        keras.layers.Dense(settings["vocabulary_size"], name="logits"),
    ], name="char_lm")


def make_optimizer(settings: dict, options: dict, learning_rate: float):
    """A fresh optimizer: ``keras.optimizers.Adam`` or ``lib.optimizers.AdaFactor`` (paper defaults, a fixed
    rate, the parameter scale on, every matrix factored unless ``factored=False``) with ``options``."""
    import keras

    from lib import optimizers

    kind = options["optimizer"]
    options = {key: value for key, value in options.items() if key not in ("optimizer", "learning_rate")}
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate, **options)
    return optimizers.AdaFactor(learning_rate=learning_rate, min_dim_size_to_factor=settings["min_dim_size_to_factor"],
                                **options)


def mean_loss(model, pair, batch_size: int = 8192) -> float:
    """Cross-entropy in nats per character of ``model`` on ``(x, y)``."""
    import keras

    x, y = pair
    total = 0.0
    for begin in range(0, len(y), batch_size):
        logits = model(x[begin:begin + batch_size], training=False)
        losses = keras.losses.sparse_categorical_crossentropy(y[begin:begin + batch_size], logits, from_logits=True)
        total += float(keras.ops.sum(losses))
    return total / len(y)


def train(model, optimizer, pair, batches, *, validation, log_every: int, epsilon_2: float = 1e-3,
          on_log=None) -> dict:
    """Train ``model`` on the batches of indices ``batches`` (steps × batch) of ``pair``.

    Every ``log_every`` steps the curve gets a point: the mean and the largest training loss of those steps,
    the validation loss, and the mean and the largest relative update ``RMS(Δθ) / max(ε₂, RMS(θ))`` of the
    weight matrices; then ``on_log(row)`` is called, if given. A non-finite loss stops the run (``diverged``).

    Returns:
        ``{"curve": [...], "relative_updates": (steps, matrices) array, "diverged": bool, "seconds"}``.
    """
    import keras
    import tensorflow as tf

    x, y = pair
    matrices = [v for v in model.trainable_variables if len(v.shape) == 2]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def rms(t):
        return tf.sqrt(tf.reduce_mean(tf.square(t)))

    optimizer.build(model.trainable_variables)  # its variables exist before tracing: the step is traced once

    @tf.function
    def step(xb, yb):
        before = [tf.identity(v.value) for v in matrices]
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        relative = tf.stack([rms(v.value - b) / tf.maximum(epsilon_2, rms(b)) for v, b in zip(matrices, before)])
        return loss, relative

    begin = time.perf_counter()
    curve, losses, relatives, diverged = [], [], [], False
    for number, batch in enumerate(batches, start=1):
        loss, relative = step(x[batch], y[batch])
        loss = float(loss)
        if not math.isfinite(loss):
            diverged = True
            break
        losses.append(loss)
        relatives.append(relative.numpy())
        if number % log_every == 0 or number == len(batches):
            recent, recent_relative = np.array(losses[-log_every:]), np.array(relatives[-log_every:])
            curve.append({"step": number, "train_loss": float(recent.mean()), "train_loss_max": float(recent.max()),
                          "validation_loss": mean_loss(model, validation),
                          "relative_update": float(recent_relative.mean()),
                          "relative_update_max": float(recent_relative.max())})
            if on_log is not None:
                on_log(curve[-1])
    return {"curve": curve, "relative_updates": np.array(relatives), "diverged": diverged,
            "seconds": time.perf_counter() - begin}


def _batches(settings: dict, size: int, steps: int, seed: int):
    """``steps`` batches of indices into ``size`` positions: a fresh permutation per epoch, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    needed = steps * settings["batch_size"]
    order = np.concatenate([rng.permutation(size) for _ in range(-(-needed // size))])[:needed]
    return order.reshape(steps, settings["batch_size"])


def _largest_rise(curve: list, warm_share: float) -> float:
    """The largest rise of a logged mean training loss above the lowest one before it, after the first
    ``warm_share`` of training (a loss spike, in nats; 0 when the loss only falls)."""
    values = [row["train_loss"] for row in curve]
    start = max(1, int(round(len(values) * warm_share)))
    rises = [values[k] - min(values[:k]) for k in range(start, len(values))]
    return float(max([0.0, *rises]))


def run_one(settings: dict, data: dict, options: dict, learning_rate: float, seed: int, *, model=None,
            corpus: str = "train", steps=None, log_every=None, test=None, on_log=None) -> dict:
    """Train one optimizer from ``seed``'s initial weights (or from ``model``) and measure it.

    Returns a JSON-able dict: the curve, the test loss (``test``: the key of the test pair, default the
    People's Daily test split), the largest loss rise, relative-update statistics, the optimizer's state
    bytes, seconds per step; and, under ``"model"``, the trained Keras model (not JSON: removed by callers).
    """
    from lib import optimizers

    steps = steps or settings["steps"]
    pair = data[corpus]
    model = model if model is not None else build_model(settings, seed)
    optimizer = make_optimizer(settings, options, learning_rate)
    validation = data["review_validation"] if corpus == "review_train" else data["validation"]
    run = train(model, optimizer, pair, _batches(settings, len(pair[1]), steps, seed), validation=validation,
                log_every=log_every or settings["log_every"], on_log=on_log)
    relative = run["relative_updates"]
    scaled = relative / learning_rate  # AdaFactor with the parameter scale: RMS of the (clipped) update
    return {
        "learning_rate": learning_rate, "diverged": run["diverged"], "curve": run["curve"],
        "test_loss": None if run["diverged"] else mean_loss(model, data[test or "test"]),
        "validation_loss": run["curve"][-1]["validation_loss"] if run["curve"] else None,
        "largest_rise": _largest_rise(run["curve"], settings["warm_share"]) if run["curve"] else None,
        "update_rms_max": float(scaled.max()) if len(scaled) else None,
        "update_rms_at_least_d_share": float(np.mean(scaled >= 0.999)) if len(scaled) else None,
        "state_bytes": optimizers.state_bytes(optimizer, per_parameter_only=True),
        "seconds_per_step": run["seconds"] / max(1, len(relative)),
        "model": model,
    }


def _json(run: dict) -> dict:
    return {key: value for key, value in run.items() if key != "model"}


def sweep(settings: dict, data: dict) -> dict:
    """Every rung of the ladder at every rate of its grid, on ``sweep_seed``; the best rate by validation loss.

    A grid of one rate is taken as it is, without a run.
    """
    result = {}
    for name, options in settings["ladder"].items():
        grid = settings["grids"][options["optimizer"]]
        runs = []
        if len(grid) > 1:
            for rate in grid:
                run = _json(run_one(settings, data, options, rate, settings["sweep_seed"]))
                runs.append({"learning_rate": rate, "validation_loss": run["validation_loss"],
                             "diverged": run["diverged"],
                             "curve": [{"step": r["step"], "validation_loss": r["validation_loss"]}
                                       for r in run["curve"]]})
            best = min((run for run in runs if not run["diverged"]), key=lambda run: run["validation_loss"])
            best = best["learning_rate"]
        else:
            best = grid[0]
        result[name] = {"grid": list(grid), "best": best, "runs": runs,
                        "best_at_edge": len(grid) > 1 and best in (grid[0], grid[-1])}
    return result


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """The ladder at its tuned rates, the stability variants and the fine-tuning runs, from ``seed``."""
    rates = {name: data["sweep"][name]["best"] for name in settings["ladder"]}
    result = {"learning_rates": rates, "ladder": {}, "stability": {}, "fine_tune": {}}
    if seed == settings["seeds"][0]:
        result["sweep"] = data["sweep"]
        result["facts"] = data["facts"]
    pretrained = None
    for name, options in settings["ladder"].items():
        run = run_one(settings, data, options, rates[name], seed)
        if name == "AdaFactor":
            pretrained = run["model"].get_weights()
        result["ladder"][name] = _json(run)
    factored = settings["ladder"]["AdaFactor"]
    for name, change in settings["stability_options"].items():
        result["stability"][name] = _json(run_one(settings, data, {**factored, **change}, rates["AdaFactor"], seed))
    model = build_model(settings, seed)
    model.set_weights(pretrained)
    result["fine_tune"]["no fine-tuning"] = {"test_loss": mean_loss(model, data["review_test"]),
                                             "validation_loss": mean_loss(model, data["review_validation"])}
    for name, options in settings["fine_tune_options"].items():
        model = build_model(settings, seed)
        model.set_weights(pretrained)
        result["fine_tune"][name] = _fine_tune(settings, data, model, options, seed)
    return result


def _fine_tune(settings, data, model, options, seed) -> dict:
    """Fine-tune ``model`` on the training reviews; keep the checkpoint with the best validation loss and
    report its test loss (early stopping, judged on validation reviews only)."""
    best = {"validation_loss": mean_loss(model, data["review_validation"]), "step": 0,
            "weights": model.get_weights()}

    def keep_best(row):
        if row["validation_loss"] < best["validation_loss"]:
            best.update(validation_loss=row["validation_loss"], step=row["step"], weights=model.get_weights())

    run = run_one(settings, data, options, options["learning_rate"], seed, model=model, corpus="review_train",
                  steps=settings["fine_tune_steps"], log_every=settings["fine_tune_log_every"], test="review_test",
                  on_log=keep_best)
    model.set_weights(best["weights"])
    best["test_loss"] = mean_loss(model, data["review_test"])
    return {"learning_rate": options["learning_rate"], "diverged": run["diverged"],
            "curve": [{key: row[key] for key in ("step", "train_loss", "validation_loss")} for row in run["curve"]],
            "best_step": best["step"], "validation_loss": best["validation_loss"], "test_loss": best["test_loss"]}


# --- statistics over seeds ---------------------------------------------------------------------------------


def parameter_count(settings: dict) -> dict:
    """The model's parameters by variable, from its shapes."""
    vocabulary, embedding, hidden = settings["vocabulary_size"], settings["embedding_dim"], settings["hidden_dim"]
    return {"embedding": vocabulary * embedding, "hidden kernel": settings["context"] * embedding * hidden,
            "hidden bias": hidden, "logits kernel": hidden * vocabulary, "logits bias": vocabulary}


def _paired(a, b, bound=None):
    """Paired difference ``a − b`` over seeds, or ``None`` when a run diverged (no finite loss to pair)."""
    if any(value is None for value in [*a, *b]):
        return None
    return statistics.paired_difference(a, b, equivalence_bound=bound)


def _describe(runs: list, spike_nats: float) -> dict:
    """Means over seeds of one configuration's runs (``None`` where a run diverged)."""
    losses = [run["test_loss"] for run in runs]
    finite = [value for value in losses if value is not None]
    row = {"test_loss": float(np.mean(finite)) if len(finite) == len(losses) else None,
           "test_loss_std": float(np.std(finite, ddof=1)) if len(finite) == len(losses) and len(finite) > 1 else None,
           "diverged": int(sum(bool(run.get("diverged")) for run in runs)),
           # runs whose logged training loss rose more than ``spike_nats`` above its lowest point so far
           "runs_with_spike": int(sum((run.get("largest_rise") or 0.0) > spike_nats for run in runs))}
    for key in ("largest_rise", "update_rms_max"):
        values = [run[key] for run in runs if run.get(key) is not None]
        row[key] = float(max(values)) if values else None
    for key in ("update_rms_at_least_d_share", "seconds_per_step", "state_bytes"):
        values = [run[key] for run in runs if run.get(key) is not None]
        row[key] = float(np.mean(values)) if values else None
    curves = [run.get("curve") for run in runs]
    if all(curves) and all(len(curve) >= 4 for curve in curves):
        # what the validation loss still fell over the last quarter of training: near 0 once it has levelled off
        row["last_quarter_drop"] = float(np.mean([curve[(3 * len(curve)) // 4 - 1]["validation_loss"]
                                                  - curve[-1]["validation_loss"] for curve in curves]))
    return row


def summarise(settings: dict, per_seed: list) -> dict:
    """Each configuration over seeds, and the paired differences (95 % intervals) that the chapter reads."""
    ladder, bound, spike = list(settings["ladder"]), settings["equivalence_bound_nats"], settings["spike_nats"]

    def losses(section, name):
        return [seed_result[section][name]["test_loss"] for seed_result in per_seed]

    summary = {"facts": per_seed[0]["facts"], "parameters": parameter_count(settings),
               "learning_rates": per_seed[0]["learning_rates"],
               "ladder": {name: _describe([s["ladder"][name] for s in per_seed], spike) for name in ladder},
               "ladder_steps": {}, "stability": {}, "fine_tune": {}}
    for before, after in zip(ladder, ladder[1:]):
        summary["ladder_steps"][f"{after} − {before}"] = _paired(
            losses("ladder", after), losses("ladder", before), bound if after == "AdaFactor" else None)
    summary["ladder_steps"]["AdaFactor − Adam"] = _paired(losses("ladder", "AdaFactor"), losses("ladder", "Adam"))
    for name in ["AdaFactor", *settings["stability"]]:
        section = "ladder" if name == "AdaFactor" else "stability"
        row = _describe([s[section][name] for s in per_seed], spike)
        if section == "stability":
            row["against_default"] = _paired(losses(section, name), losses("ladder", "AdaFactor"))
        summary["stability"][name] = row
    tuned = settings["fine_tune"]
    for name in ["no fine-tuning", *tuned]:
        values = losses("fine_tune", name)
        row = {"test_loss": float(np.mean(values)),
               "best_step": float(np.mean([s["fine_tune"][name].get("best_step", 0) for s in per_seed]))}
        if name != ADVICE and ADVICE in tuned:
            row["advice_minus_this"] = _paired(losses("fine_tune", ADVICE), values)
        summary["fine_tune"][name] = row
    by_kind = {}
    for name in tuned:
        kind = settings["fine_tune_options"][name]["optimizer"]
        if kind not in by_kind or summary["fine_tune"][name]["test_loss"] < summary["fine_tune"][by_kind[kind]]["test_loss"]:
            by_kind[kind] = name
    summary["fine_tune_best"] = by_kind
    return summary


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
