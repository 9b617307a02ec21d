"""Chapter "Breaking the bottleneck": key-value recall, a task whose attention must be high-rank.

Each example is a memory of ``memory`` slots, each holding a key (distinct keys, drawn from ``keys``
symbols) and a value (one of ``values`` symbols), and ``queries`` query slots, each holding one of the
memory's keys. The answer at a query is the value stored under its key. One cross-attention layer
(:class:`lib.attention.MultiHeadAttention`) reads the memory: its queries and keys are embeddings of key
symbols, so the logits it needs are a sharp "same key?" table over the key symbols, an identity matrix
of rank ``keys``. A head of key size ``k`` can only write logits of rank ``k`` (the chapter proves it), so
a small ``k`` has to buy its sharpness with ever larger weights; talking heads mix ``h`` heads' logits
into a table of rank up to ``h k`` (Shazeer et al. 2020); a larger key size (the article's remedy) or
fewer, wider heads at the same parameter count (Bhojanapalli et al. 2020) raise ``k`` itself.

Every variant is trained on fresh random examples (no example is seen twice, so nothing overfits) until
its held-out accuracy stops improving (:func:`lib.training.train_with_early_stopping`, one "epoch" being
``eval_every`` steps). Each seed fixes the initial weights and the stream of examples, shared by all the
variants: differences between variants are paired by seed. For the first seed the attention weights on
one held-out example are kept, for the chapter's heat maps.
"""

from __future__ import annotations

import time

import numpy as np

from lib import experiments, statistics
from lib.training import train_with_early_stopping

CHAPTER = "attention-bottleneck"


def _variant(heads, key_size, value_size=None, talking_heads=False):
    value_size = key_size if value_size is None else value_size
    name = f"{heads} head{'s' if heads > 1 else ''}, k={key_size}"
    if value_size != key_size:
        name += f", v={value_size}"
    if talking_heads:
        name += ", talking heads"
    return {"name": name, "heads": heads, "key_size": key_size, "value_size": value_size,
            "talking_heads": talking_heads}


def _variants(width, heads, talking, enlarged):
    """Heads at a fixed width (k = v = width / h), talking heads at the heads in ``talking``, and the
    article's remedy (key size ``k'`` at ``h`` heads, value size kept at width / h) for ``enlarged``."""
    plain = [_variant(h, width // h) for h in heads]
    mixed = [_variant(h, width // h, talking_heads=True) for h in talking]
    larger = [_variant(h, k, value_size=width // h) for h, k in enlarged]
    return plain + mixed + larger


_COMMON = {"learning_rate": 3e-3, "batch_size": 32, "eval_every": 250, "patience": 3, "min_delta": 0.0005,
           "evaluation_seed": 10_000}
_SCALES = {
    "smoke": {"keys": 16, "values": 4, "memory": 16, "queries": 4, "width": 32, "max_steps": 20, "eval_every": 10,
              "evaluation_examples": 32, "variants": _variants(32, [1, 16], [16], [(16, 8)]), "seeds": [0, 1]},
    "quick": {"keys": 128, "values": 16, "memory": 128, "queries": 16, "width": 32, "max_steps": 800,
              "eval_every": 200, "evaluation_examples": 256, "variants": _variants(32, [1, 16], [], []),
              "seeds": [0]},
    "reference": {"keys": 128, "values": 16, "memory": 128, "queries": 16, "width": 32, "max_steps": 4000,
                  "evaluation_examples": 512, "variants": _variants(32, [1, 4, 16, 32], [16, 32], [(16, 8)]),
                  "seeds": [0, 1, 2, 3, 4]},
    "full": {"keys": 512, "values": 16, "memory": 512, "queries": 64, "width": 128, "max_steps": 20000,
             "evaluation_examples": 1024, "variants": _variants(128, [1, 8, 64, 128], [64, 128], [(64, 16)]),
             "seeds": [0, 1, 2, 3, 4]},
}


def settings(scale: str) -> dict:
    """Everything a run at ``scale`` depends on."""
    experiments.check_scale(scale)
    return {**_COMMON, **_SCALES[scale]}


def recall_examples(settings: dict, count: int, seed: int) -> dict:
    """``count`` examples as numpy arrays: ``memory_keys`` and ``memory_values`` (count, memory),
    ``query_keys`` and ``answers`` (count, queries) and ``answer_slots``, the memory slot each query must
    read (its target attention)."""
    rng = np.random.default_rng(seed)
    memory_keys = np.argsort(rng.random((count, settings["keys"])), axis=1)[:, : settings["memory"]]
    memory_values = rng.integers(0, settings["values"], (count, settings["memory"]))
    slots = rng.integers(0, settings["memory"], (count, settings["queries"]))
    return {"memory_keys": memory_keys.astype("int32"), "memory_values": memory_values.astype("int32"),
            "query_keys": np.take_along_axis(memory_keys, slots, 1).astype("int32"),
            "answers": np.take_along_axis(memory_values, slots, 1).astype("int32"),
            "answer_slots": slots.astype("int32")}


def prepare(settings: dict) -> dict:
    """The held-out examples, the same for every seed and variant (training examples are drawn on the fly)."""
    return {"evaluation": recall_examples(settings, settings["evaluation_examples"], settings["evaluation_seed"])}


def make_model(settings: dict, variant: dict):
    """Key and value embeddings, one cross-attention layer from the queries to the memory, a softmax over values.

    A memory slot is ``key_embedding(key) + value_embedding(value)``; a query is ``key_embedding(key)``.
    """
    import keras

    from lib.attention import MultiHeadAttention

    class RecallModel(keras.Model):
        def __init__(self):
            super().__init__(name="recall")
            width = settings["width"]
            self.key_embedding = keras.layers.Embedding(settings["keys"], width, name="key_embedding")
            self.value_embedding = keras.layers.Embedding(settings["values"], width, name="value_embedding")
            self.attention = MultiHeadAttention(
                variant["heads"], variant["key_size"], value_size=variant["value_size"],
                talking_heads_pre=variant["talking_heads"], talking_heads_post=variant["talking_heads"],
                name="attention")
            self.readout = keras.layers.Dense(settings["values"], name="readout")

        def attend(self, inputs):
            memory_keys, memory_values, query_keys = inputs
            memory = self.key_embedding(memory_keys) + self.value_embedding(memory_values)
            return self.attention(self.key_embedding(query_keys), memory, return_attention_scores=True)

        def call(self, inputs):
            return self.readout(self.attend(inputs)[0])

    model = RecallModel()
    model(_inputs(recall_examples(settings, 1, seed=0)))  # creates the weights
    return model


def _inputs(examples, index=slice(None)):
    return [examples["memory_keys"][index], examples["memory_values"][index], examples["query_keys"][index]]


def evaluate(model, examples: dict, batch_size: int = 256) -> dict:
    """Held-out accuracy (share of queries answered right) and mean cross-entropy in nats."""
    import keras

    hits, losses, count = 0.0, 0.0, 0
    for begin in range(0, len(examples["answers"]), batch_size):
        index = slice(begin, begin + batch_size)
        logits = keras.ops.convert_to_numpy(model(_inputs(examples, index))).astype(np.float64)
        answers = examples["answers"][index]
        logits -= logits.max(-1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        hits += float((logits.argmax(-1) == answers).sum())
        losses += float(-np.take_along_axis(log_p, answers[..., None], -1).sum())
        count += answers.size
    return {"accuracy": hits / count, "loss": losses / count}


def train_variant(settings: dict, data: dict, variant: dict, seed: int):
    """Train one variant from ``seed`` until held-out accuracy stops improving: ``(model, run)``."""
    import keras
    import tensorflow as tf

    from lib import config

    config.set_seed(seed)
    model = make_model(settings, variant)
    optimizer = keras.optimizers.Adam(settings["learning_rate"])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    batch = settings["batch_size"]
    stream = np.random.default_rng([seed, 1])  # the same examples for every variant of this seed

    @tf.function(reduce_retracing=True)
    def train_step(inputs, answers):
        with tf.GradientTape() as tape:
            loss = loss_fn(answers, model(inputs, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    def train_steps():
        examples = recall_examples(settings, batch * settings["eval_every"], int(stream.integers(2**31)))
        losses = []
        begin = time.perf_counter()
        for step in range(settings["eval_every"]):
            index = slice(step * batch, (step + 1) * batch)
            losses.append(float(train_step(_inputs(examples, index), examples["answers"][index])))
        return {"loss": float(np.mean(losses)),
                "seconds_per_step": (time.perf_counter() - begin) / settings["eval_every"]}

    def held_out():
        return {f"validation_{name}": value for name, value in evaluate(model, data["evaluation"]).items()}

    run = train_with_early_stopping(model, train_steps, held_out, monitor="validation_accuracy", mode="max",
                                    max_epochs=settings["max_steps"] // settings["eval_every"],
                                    patience=settings["patience"], min_delta=settings["min_delta"])
    return model, run


def attention_map(model, examples: dict, example: int = 0) -> np.ndarray:
    """The layer's attention weights for one example, averaged over heads: (queries, memory)."""
    import keras

    index = slice(example, example + 1)
    _, weights = model.attend(_inputs(examples, index))
    return keras.ops.convert_to_numpy(weights)[0].mean(0)


def steps_to(curve: list, threshold: float, eval_every: int):
    """Training steps until held-out accuracy first reached ``threshold`` (``None``: never)."""
    for row in curve:
        if row["validation_accuracy"] >= threshold:
            return row["epoch"] * eval_every
    return None


def run_seed(settings: dict, data: dict, seed: int) -> dict:
    """Every variant from ``seed``: learning curve, best held-out accuracy and loss, speed; for the first
    seed also the attention map of held-out example 0."""
    from lib import attention

    result = {}
    for variant in settings["variants"]:
        model, run = train_variant(settings, data, variant, seed)
        scores = evaluate(model, data["evaluation"])
        curve = run["curve"]
        result[variant["name"]] = {
            "accuracy": scores["accuracy"], "loss": scores["loss"], "best_step": run["best_epoch"] * settings["eval_every"],
            "steps": run["epochs"] * settings["eval_every"], "stopped_early": run["stopped_early"],
            "steps_to_95": steps_to(curve, 0.95, settings["eval_every"]),
            "seconds_per_step": float(np.median([row["seconds_per_step"] for row in curve])),
            "parameters": attention.parameter_count(settings["width"], variant["heads"], variant["key_size"],
                                                    variant["value_size"],
                                                    talking_heads_pre=variant["talking_heads"],
                                                    talking_heads_post=variant["talking_heads"]),
            "curve": [{"step": row["epoch"] * settings["eval_every"], "loss": row["loss"],
                       "validation_accuracy": row["validation_accuracy"], "validation_loss": row["validation_loss"]}
                      for row in curve]}
        if seed == settings["seeds"][0]:
            result[variant["name"]]["attention_map"] = np.round(attention_map(model, data["evaluation"]), 4).tolist()
    return result


COMPARISONS = {
    "talking heads, 16 heads of k=2": ("16 heads, k=2, talking heads", "16 heads, k=2"),
    "talking heads, 32 heads of k=1": ("32 heads, k=1, talking heads", "32 heads, k=1"),
    "key size 8 (the article's remedy), 16 heads": ("16 heads, k=8, v=2", "16 heads, k=2"),
    "1 head of k=32 vs 16 of k=2 (same weights)": ("1 head, k=32", "16 heads, k=2"),
    "4 heads of k=8 vs 16 of k=2 (same weights)": ("4 heads, k=8", "16 heads, k=2"),
}
"""Paired comparisons the chapter reports: name -> (variant, baseline), when both variants ran."""


def summarise(settings: dict, per_seed: list) -> dict:
    """Per variant: mean and spread of held-out accuracy and loss, steps to 95 % accuracy, seconds per
    step, parameters; and the paired differences of :data:`COMPARISONS` (accuracy in points of 1, and
    loss) with 95 % intervals over seeds."""
    names = [variant["name"] for variant in settings["variants"]]
    table = {}
    for name in names:
        accuracy = np.array([seed[name]["accuracy"] for seed in per_seed])
        reached = [seed[name]["steps_to_95"] for seed in per_seed]
        table[name] = {
            "accuracy": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0,
            "accuracy_min": float(accuracy.min()),
            "loss": float(np.mean([seed[name]["loss"] for seed in per_seed])),
            "reached_95": int(sum(step is not None for step in reached)),
            "steps_to_95": float(np.median([step for step in reached if step is not None])) if any(
                step is not None for step in reached) else None,
            "steps": float(np.mean([seed[name]["steps"] for seed in per_seed])),
            "stopped_early": int(sum(seed[name]["stopped_early"] for seed in per_seed)),
            "seconds_per_step": float(np.median([seed[name]["seconds_per_step"] for seed in per_seed])),
            "parameters": int(per_seed[0][name]["parameters"])}
    comparisons = {}
    if len(per_seed) > 1:
        for label, (variant, baseline) in COMPARISONS.items():
            if variant in table and baseline in table:
                comparisons[label] = {
                    metric: statistics.paired_difference(np.array([seed[variant][metric] for seed in per_seed]),
                                                         np.array([seed[baseline][metric] for seed in per_seed]))
                    for metric in ("accuracy", "loss")}
    return {"seeds": len(per_seed), "variants": table, "comparisons": comparisons}


def run(scale: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Run the experiment at ``scale`` and return its result (nothing is written)."""
    return experiments.execute(CHAPTER, scale, seeds, progress=progress)
