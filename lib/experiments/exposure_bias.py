"""Chapter "Exposure bias in seq2seq": teacher forcing against the article's two remedies.

Task: English grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary (words of 8 to 12
phonemes and at most 12 letters), a GRU encoder-decoder with attention (``lib.seq2seq.Seq2Seq``).

Methods, each trained from the same seeds on the same words, to convergence (early stopping on the
teacher-forced loss of held-out validation words, best weights restored):

* teacher forcing;
* random replacement, the article's prose settings (half of the samples noised, 30 % of their
  decoder inputs replaced by tokens of the same target sequence);
* the article's gradient penalty ``L + ½ε‖∇_E L‖²`` on the decoder's token-embedding matrix ``E``,
  with the article's ε = 1, and (reference and full scale) a stronger ε = 10.

Each trained model is decoded free-running with beams 1 to 3 on test words (word and phoneme error
rates), run under teacher forcing on the same words, and compared position by position: after its
first mistake, every later position is decoded once on the model's own prefix and once on the gold
prefix, and the difference of the error rates is the effect of the wrong prefix itself (with a
bootstrap interval over words, since positions of one word are not independent).
"""

from __future__ import annotations

import numpy as np

from lib import experiments, statistics
from lib.training import train_with_early_stopping

CHAPTER = "exposure-bias"

ARTICLE_REPLACEMENT = {"replacement_rate": 0.3, "replacement_probability": 0.5, "replacement_pool": "target"}
"""The article's random replacement, as its prose describes it."""

_COMMON = {"min_phonemes": 8, "max_phonemes": 12, "max_letters": 12, "split": (0.8, 0.1, 0.1), "beams": (1, 2, 3),
           "examples": 8}
_METHODS = {
    "teacher forcing": {},
    "random replacement": ARTICLE_REPLACEMENT,
    "gradient penalty ε=1": {"gradient_penalty_epsilon": 1.0},
    "gradient penalty ε=10": {"gradient_penalty_epsilon": 10.0},
}
_SCALES = {
    "smoke": {"train_words": 256, "validation_words": 64, "test_words": 64, "embedding_dim": 8, "hidden_dim": 16,
              "batch_size": 64, "learning_rate": 1e-2, "max_epochs": 2, "patience": 1, "seeds": [0, 1],
              "methods": ["teacher forcing", "random replacement", "gradient penalty ε=1"]},
    "quick": {"train_words": 6_000, "validation_words": 500, "test_words": 800, "embedding_dim": 32, "hidden_dim": 64,
              "batch_size": 128, "learning_rate": 1e-2, "max_epochs": 3, "patience": 1, "seeds": [0, 1],
              "methods": ["teacher forcing", "random replacement", "gradient penalty ε=1"]},
    "reference": {"train_words": 10_000, "validation_words": 1_000, "test_words": None, "embedding_dim": 64,
                  "hidden_dim": 128, "batch_size": 128, "learning_rate": 3e-3, "max_epochs": 30, "patience": 3,
                  "seeds": [0, 1, 2, 3, 4], "methods": list(_METHODS)},
    "full": {"train_words": None, "validation_words": 2_000, "test_words": None, "embedding_dim": 128,
             "hidden_dim": 256, "batch_size": 128, "learning_rate": 2e-3, "max_epochs": 40, "patience": 4,
             "seeds": [0, 1, 2, 3, 4], "methods": list(_METHODS)},
}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on (``None`` word counts: every word of the split)."""
    experiments.check_scale(scale)
    chosen = {**_COMMON, **_SCALES[scale]}
    chosen["method_options"] = {name: _METHODS[name] for name in chosen["methods"]}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in chosen.items()}


def prepare(settings: dict) -> dict:
    """Words, vocabularies, the train/validation/test split, and a cache for compiled models."""
    from lib import data, seq2seq

    pairs = seq2seq.grapheme_phoneme_pairs(min_phonemes=settings["min_phonemes"],
                                           max_phonemes=settings["max_phonemes"], max_letters=settings["max_letters"])
    letters = data.Vocabulary.from_sequences([word for word, _ in pairs])
    phonemes = data.Vocabulary.from_sequences([phones for _, phones in pairs], extra=("<s>", "</s>"))
    start, end = phonemes.index["<s>"], phonemes.index["</s>"]
    sources = letters.encode([word for word, _ in pairs], length=settings["max_letters"])
    targets = phonemes.encode([phones + ["</s>"] for _, phones in pairs], length=settings["max_phonemes"] + 1)
    train, validation, test = data.split_indices(len(pairs), settings["split"], seed=0)
    train, validation, test = (index[:limit] for index, limit in ((train, settings["train_words"]),
                                                                   (validation, settings["validation_words"]),
                                                                   (test, settings["test_words"])))
    return {"pairs": pairs, "letters": letters, "phonemes": phonemes, "start": start, "end": end,
            "sources": sources, "targets": targets, "train": train, "validation": validation, "test": test,
            "seen": train[: len(validation)], "models": {}}


def build_model(settings: dict, data: dict, method: str):
    """The compiled model of ``method``, built once per run and restarted for each seed."""
    import keras

    from lib import seq2seq

    if method not in data["models"]:
        model = seq2seq.Seq2Seq(len(data["letters"]), len(data["phonemes"]), start_id=data["start"],
                                end_id=data["end"], embedding_dim=settings["embedding_dim"],
                                hidden_dim=settings["hidden_dim"], seed=0, **settings["method_options"][method])
        model.compile(keras.optimizers.Adam(settings["learning_rate"]))
        data["models"][method] = model
    return data["models"][method]


def teacher_forced_loss(model, sources, targets) -> float:
    """Cross-entropy per target token (end token included) on gold prefixes."""
    _, log_p = model.teacher_forced(sources, targets)
    return float(-log_p.sum() / (targets > 0).sum())


def train_method(settings: dict, data: dict, method: str, seed: int):
    """Train ``method`` from ``seed`` to convergence: ``(model, run)`` with the run of :func:`train_with_early_stopping`."""
    model = build_model(settings, data, method)
    model.reinitialize(seed)
    sources, targets = data["sources"], data["targets"]
    train = data["train"]
    inputs = {"source": sources[train], "decoder_inputs": _shift(targets[train], data["start"])}

    def train_epoch():
        history = model.fit(inputs, targets[train], batch_size=settings["batch_size"], epochs=1, verbose=0)
        return {"loss": float(history.history["loss"][-1])}

    def evaluate():
        return {"validation_loss": teacher_forced_loss(model, sources[data["validation"]], targets[data["validation"]]),
                "training_words_loss": teacher_forced_loss(model, sources[data["seen"]], targets[data["seen"]])}

    run = train_with_early_stopping(model, train_epoch, evaluate, monitor="validation_loss", mode="min",
                                    max_epochs=settings["max_epochs"], patience=settings["patience"])
    return model, run


def _shift(targets, start):
    from lib import seq2seq

    return np.asarray(seq2seq.shift_right(targets, start))


def evaluate_model(settings: dict, data: dict, model) -> dict:
    """Free-running and teacher-forced measurements of one trained model on the test words."""
    from lib import seq2seq

    end, beams = data["end"], settings["beams"]
    sources, targets = data["sources"][data["test"]], data["targets"][data["test"]]
    width = targets.shape[1]
    outputs = {beam: model.generate(sources, beam_size=beam, max_length=width) for beam in beams}
    forced, gold_log_p = model.teacher_forced(sources, targets)
    wrong = {beam: np.array([seq2seq.strip_end(o, end) != seq2seq.strip_end(g, end)
                             for o, g in zip(outputs[beam], targets)]) for beam in beams}
    by_beam = {}
    for beam in beams:
        _, output_log_p = model.teacher_forced(sources, outputs[beam])
        by_beam[str(beam)] = {
            "WER": float(wrong[beam].mean()),
            "PER": seq2seq.phoneme_error_rate(outputs[beam], targets, end),
            # a wrong output that the model itself prefers to the gold one: the model's error, not the search's
            "model_error_share": float((output_log_p.sum(1) > gold_log_p.sum(1))[wrong[beam]].mean())
            if wrong[beam].any() else None,
            "right_only_with_greedy": float((wrong[1] < wrong[beam]).mean()),
            "right_only_with_this_beam": float((wrong[beam] < wrong[1]).mean()),
        }
    errors, valid, on_track = seq2seq.position_errors(outputs[1], targets, end)
    forced_errors = (forced != targets) & valid
    off_track = valid & ~on_track
    matched = statistics.bootstrap_ratio_difference((errors & off_track).sum(1), (forced_errors & off_track).sum(1),
                                                    off_track.sum(1), seed=0)
    examples = [{"word": data["pairs"][i][0], "gold": " ".join(data["pairs"][i][1]),
                 "output": " ".join(data["phonemes"].decode(seq2seq.strip_end(o, end)))}
                for i, o in zip(data["test"][: settings["examples"]], outputs[1])]
    return {"beams": by_beam,
            "test_loss": float(-gold_log_p.sum() / (targets > 0).sum()),
            # per target position: counts of words, of words still right before it, and of errors
            "positions": {"valid": valid.sum(0).tolist(), "on_track": (on_track & valid).sum(0).tolist(),
                          "own_prefix_errors": errors.sum(0).tolist(),
                          "own_prefix_errors_on_track": (errors & on_track).sum(0).tolist(),
                          "own_prefix_errors_off_track": (errors & off_track).sum(0).tolist(),
                          "gold_prefix_errors": forced_errors.sum(0).tolist(),
                          "gold_prefix_errors_off_track": (forced_errors & off_track).sum(0).tolist()},
            "matched": matched,
            "examples": examples}


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """Train and evaluate every method from ``seed``."""
    result = {}
    for method in settings["methods"]:
        model, run = train_method(settings, data, method, seed)
        best = run["curve"][run["best_epoch"] - 1]
        result[method] = {"curve": run["curve"], "best_epoch": run["best_epoch"], "epochs": run["epochs"],
                          "stopped_early": run["stopped_early"],
                          "seconds_per_epoch": float(np.median([row["seconds"] for row in run["curve"]])),
                          "training_words_loss": best["training_words_loss"],
                          "validation_loss": best["validation_loss"],
                          **evaluate_model(settings, data, model)}
    return result


def summarise(settings: dict, per_seed: list) -> dict:
    """Means over seeds, and each remedy against teacher forcing as paired differences with 95 % intervals."""
    methods, beams = settings["methods"], [str(beam) for beam in settings["beams"]]
    baseline = methods[0]

    def over_seeds(method, *keys):
        values = []
        for seed_result in per_seed:
            value = seed_result[method]
            for key in keys:
                value = value[key]
            values.append(value)
        return np.array(values, dtype=float)

    summary = {"methods": {}, "against_teacher_forcing": {}}
    for method in methods:
        row = {"best_epoch": over_seeds(method, "best_epoch").mean(),
               "stopped_early": int(over_seeds(method, "stopped_early").sum()),
               "training_words_loss": over_seeds(method, "training_words_loss").mean(),
               "validation_loss": over_seeds(method, "validation_loss").mean(),
               "test_loss": over_seeds(method, "test_loss").mean(),
               "seconds_per_epoch_ratio": float(np.mean(over_seeds(method, "seconds_per_epoch")
                                                        / over_seeds(baseline, "seconds_per_epoch"))),
               "matched_own_prefix": over_seeds(method, "matched", "rate_a").mean(),
               "matched_gold_prefix": over_seeds(method, "matched", "rate_b").mean(),
               "matched_difference": over_seeds(method, "matched", "difference").mean(),
               "matched_seeds_above_zero": int((over_seeds(method, "matched", "low") > 0).sum())}
        for beam in beams:
            for metric in ("WER", "PER", "model_error_share", "right_only_with_greedy", "right_only_with_this_beam"):
                values = over_seeds(method, "beams", beam, metric)
                row[f"{metric}_beam{beam}"] = float(np.nanmean(values))
                if metric in ("WER", "PER"):
                    row[f"{metric}_beam{beam}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary["methods"][method] = {key: float(value) for key, value in row.items()}
        if method == baseline:
            continue
        comparison = {}
        for beam in beams:
            for metric in ("WER", "PER"):
                comparison[f"{metric}_beam{beam}"] = statistics.paired_difference(
                    over_seeds(method, "beams", beam, metric), over_seeds(baseline, "beams", beam, metric))
        comparison["test_loss"] = statistics.paired_difference(over_seeds(method, "test_loss"),
                                                               over_seeds(baseline, "test_loss"))
        comparison["matched_difference"] = statistics.paired_difference(
            over_seeds(method, "matched", "difference"), over_seeds(baseline, "matched", "difference"))
        summary["against_teacher_forcing"][method] = comparison
    summary["generalisation_gap"] = {
        method: statistics.paired_difference(over_seeds(method, "validation_loss"),
                                             over_seeds(method, "training_words_loss")) for method in methods}
    return summary


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
