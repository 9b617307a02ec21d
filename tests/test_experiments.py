"""Tests of the experiment machinery (lib.experiments, lib.statistics, lib.training) and of every chapter's
experiment: it runs end to end at smoke size, yields the committed results' schema, its committed results
match its code, and its full-scale configuration builds and trains a step on the CPU."""

import json
import pathlib
import sys

import numpy as np
import pytest
from scipy import stats

from lib import experiments, statistics
from lib.training import train_with_early_stopping

COMMITTED = sorted(experiments.RESULTS_DIR.glob("*/*.json"))


# --- statistics ------------------------------------------------------------------------------------


def test_paired_difference_is_the_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 1.0, 7)
    result = statistics.paired_difference(a, b, confidence=0.9)
    d = a - b
    half = stats.t.ppf(0.95, 6) * d.std(ddof=1) / np.sqrt(7)
    assert result["mean"] == pytest.approx(d.mean())
    assert (result["low"], result["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_paired_difference_equivalence_needs_the_whole_interval_inside_the_bound():
    close = statistics.paired_difference([1.0, 1.01, 0.99, 1.0], [1.0, 1.0, 1.0, 1.005], equivalence_bound=0.05)
    assert close["equivalent"]
    noisy = statistics.paired_difference([1.0, 1.3], [1.0, 0.9], equivalence_bound=0.05)
    assert not noisy["equivalent"]


@pytest.mark.parametrize("a, b, match", [
    ([1.0], [1.0], "at least 2"),
    ([1.0, 2.0], [1.0, 2.0, 3.0], "pair up"),
    ([1.0, float("nan")], [1.0, 2.0], "finite"),
    ("ab", [1.0, 2.0], "`a`"),
])
def test_paired_difference_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        statistics.paired_difference(a, b)


def test_paired_difference_rejects_bad_confidence_and_bound():
    with pytest.raises(ValueError, match="confidence"):
        statistics.paired_difference([1, 2], [0, 1], confidence=1.5)
    with pytest.raises(ValueError, match="equivalence_bound"):
        statistics.paired_difference([1, 2], [0, 1], equivalence_bound=0)


def test_bootstrap_resamples_whole_units():
    # two units with opposite differences: pooled over positions the difference is 0.1, but the units
    # disagree, so an interval that respects units must be wide, and contain the point estimate
    result = statistics.bootstrap_ratio_difference([9, 0], [0, 8], [10, 10], resamples=1000)
    assert result["difference"] == pytest.approx(0.05)
    assert result["low"] < 0 < result["high"]
    assert result["rate_a"] == pytest.approx(0.45) and result["units"] == 2


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="one value per unit"):
        statistics.bootstrap_ratio_difference([1, 2], [1], [3, 3])
    with pytest.raises(ValueError, match="positive total"):
        statistics.bootstrap_ratio_difference([0, 0], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="resamples"):
        statistics.bootstrap_ratio_difference([1], [1], [2], resamples=10)


# --- the training loop -------------------------------------------------------------------------------


class Counter:
    """A stand-in model whose 'weights' are the number of epochs trained."""

    def __init__(self):
        self.epochs = 0

    def get_weights(self):
        return self.epochs

    def set_weights(self, value):
        self.epochs = value


def test_early_stopping_restores_the_best_epoch_and_keeps_the_curve():
    model, scores = Counter(), [0.5, 0.7, 0.6, 0.65, 0.69, 0.9]

    def train_epoch():
        model.epochs += 1
        return {"loss": 1.0 / model.epochs}

    run = train_with_early_stopping(model, train_epoch, lambda: {"f1": scores[model.epochs - 1]}, monitor="f1",
                                    max_epochs=6, patience=3)
    assert run["best_epoch"] == 2 and run["best"] == 0.7 and run["epochs"] == 5 and run["stopped_early"]
    assert model.epochs == 2  # the best weights are back
    assert [row["f1"] for row in run["curve"]] == scores[:5]
    assert all("seconds" in row and "loss" in row for row in run["curve"])


def test_early_stopping_in_min_mode_runs_to_the_end_while_improving():
    model = Counter()

    def train_epoch():
        model.epochs += 1
        return {}

    run = train_with_early_stopping(model, train_epoch, lambda: {"loss": 1.0 / model.epochs}, monitor="loss",
                                    mode="min", max_epochs=4, patience=1)
    assert run["best_epoch"] == 4 and not run["stopped_early"]


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "up"}, "mode"), ({"max_epochs": 0}, "max_epochs"), ({"patience": -1}, "patience"),
    ({"min_delta": -0.1}, "min_delta"), ({"monitor": "missing"}, "monitored score"),
])
def test_early_stopping_rejects_bad_arguments(kwargs, match):
    options = {"monitor": "f1", "mode": "max", "max_epochs": 2, "patience": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_with_early_stopping(Counter(), lambda: {}, lambda: {"f1": 0.5}, **options)


# --- the runner, on a tiny stand-in experiment ---------------------------------------------------------

RUNS = []


def settings(scale):
    return {"seeds": [0, 1, 2], "size": {"smoke": 1, "quick": 2, "reference": 3, "full": 4}[scale]}


def prepare(settings):
    return {"offset": 10}


def run_seed(settings, data, seed):
    RUNS.append(seed)
    if seed == 99:
        raise KeyboardInterrupt  # a run killed after its first seeds
    return {"value": seed + data["offset"] + settings["size"]}


def summarise(settings, per_seed):
    return {"mean": float(np.mean([r["value"] for r in per_seed]))}


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setitem(experiments.CHAPTERS, "stand-in", __name__)
    RUNS.clear()
    return "stand-in"


def test_execute_writes_the_results_file_with_provenance(stand_in, tmp_path):
    result = experiments.execute(stand_in, "reference", out=tmp_path, progress=False)
    written = json.loads((tmp_path / "stand-in" / "reference.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert result["complete"] and result["summary"] == {"mean": 14.0}
    assert result["per_seed"] == {"0": {"value": 13}, "1": {"value": 14}, "2": {"value": 15}}
    provenance = result["provenance"]
    assert provenance["code_sha256"] == experiments.code_hash(stand_in)
    assert {"tensorflow", "keras", "device", "date", "wall_seconds"} <= set(provenance)
    assert experiments.load_results(stand_in, "reference", tmp_path) == written
    assert not list((tmp_path / "stand-in").glob(".*tmp"))  # no temporary file left behind


def test_a_killed_run_resumes_from_its_finished_seeds(stand_in, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        experiments.execute(stand_in, "quick", seeds=[0, 1, 99], out=tmp_path, progress=False)
    partial = json.loads((tmp_path / "stand-in" / "quick.json").read_text())
    assert not partial["complete"] and sorted(partial["per_seed"]) == ["0", "1"] and partial["summary"] is None
    with pytest.raises(ValueError, match="unfinished run"):
        experiments.load_results(stand_in, "quick", tmp_path)
    RUNS.clear()
    with pytest.raises(KeyboardInterrupt):  # resumed: seeds 0 and 1 are not run again
        experiments.execute(stand_in, "quick", seeds=[0, 1, 99], out=tmp_path, progress=False, resume=True)
    assert RUNS == [99]
    RUNS.clear()
    experiments.execute(stand_in, "quick", seeds=[0, 1], out=tmp_path, progress=False, resume=True)
    assert RUNS == [0, 1]  # other settings (the seed list): started afresh, not mixed


def test_execute_without_out_writes_nothing(stand_in, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = experiments.execute(stand_in, "smoke", seeds=[3], progress=False)
    assert result["per_seed"] == {"3": {"value": 14}} and not list(tmp_path.iterdir())


@pytest.mark.parametrize("call, match", [
    (lambda: experiments.module("nope"), "chapter"),
    (lambda: experiments.execute("stand-in", "huge"), "scale"),
    (lambda: experiments.execute("stand-in", "quick", seeds=[1, 1]), "seeds"),
    (lambda: experiments.execute("stand-in", "quick", seeds="01"), "seeds"),
    (lambda: experiments.load_results("stand-in", "full", "/nonexistent"), "python -m lib.experiments"),
])
def test_runner_errors_name_the_problem(stand_in, call, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        call()


def test_command_line_runs_and_writes(stand_in, tmp_path, monkeypatch):
    from lib.experiments.__main__ import main

    assert main(["stand-in", "--scale", "smoke", "--seeds", "5", "--out", str(tmp_path), "--no-progress"]) == 0
    assert experiments.load_results("stand-in", "smoke", tmp_path)["per_seed"] == {"5": {"value": 16}}


# --- every chapter's experiment ---------------------------------------------------------------------------


def schema(value):
    """The shape of a JSON value: keys and types, lists by their first element."""
    if isinstance(value, dict):
        return {key: schema(item) for key, item in value.items()}
    if isinstance(value, list):
        return [schema(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)) or value is None:
        return "number"
    return type(value).__name__


def shared_schema(smoke, committed):
    """Compare the two schemas on the keys both have at the top of each dict of runs (methods, encoders)."""
    mismatches = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            # a dict of counts keyed by data (how often each option won) may differ in its keys
            counts = all(value == "number" for value in [*a.values(), *b.values()])
            if set(a) != set(b) and not (set(a) & set(b)) and not counts:
                mismatches.append(f"{path}: no common keys ({sorted(a)[:4]} vs {sorted(b)[:4]})")
            for key in set(a) & set(b):
                walk(a[key], b[key], f"{path}/{key}")
            return
        if a != b and not (isinstance(a, list) and isinstance(b, list) and (not a or not b)):
            if isinstance(a, list) and isinstance(b, list):
                walk(a[0], b[0], f"{path}[0]")
            else:
                mismatches.append(f"{path}: {a} vs {b}")

    walk(smoke, committed, "")
    return mismatches


@pytest.fixture(scope="module")
def smoke_results():
    return {chapter: experiments.execute(chapter, "smoke", progress=False) for chapter in experiments.CHAPTERS}


@pytest.mark.parametrize("chapter", sorted(experiments.CHAPTERS))
def test_every_chapter_has_committed_reference_results(chapter):
    result = experiments.load_results(chapter, "reference")
    assert result["complete"] and result["seeds"] == list(map(int, result["per_seed"]))


@pytest.mark.parametrize("chapter", sorted(experiments.CHAPTERS))
def test_smoke_run_has_the_committed_schema(chapter, smoke_results):
    smoke, committed = smoke_results[chapter], experiments.load_results(chapter, "reference")
    assert set(smoke) == set(committed)
    assert set(smoke["settings"]) == set(committed["settings"])
    first = str(smoke["seeds"][0])
    assert shared_schema(schema(smoke["per_seed"][first]), schema(committed["per_seed"][first])) == []
    assert shared_schema(schema(smoke["summary"]), schema(committed["summary"])) == []
    assert json.loads(json.dumps(smoke, allow_nan=False)) == smoke  # JSON all the way down


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_results_come_from_the_current_code(path):
    committed = json.loads(path.read_text())
    chapter, scale = path.parent.name, path.stem
    assert committed["complete"], f"{path} is unfinished: `{experiments.refresh_command(chapter, scale)} --resume`"
    assert committed["settings"] == json.loads(json.dumps(experiments.module(chapter).settings(scale)))
    assert committed["provenance"]["code_sha256"] == experiments.code_hash(chapter), (
        f"{path} was written by other code than lib/experiments/{experiments.module(chapter).__name__.split('.')[-1]}.py "
        f"now holds: refresh it with `{experiments.refresh_command(chapter, scale)}`")


def test_full_scale_of_the_crf_chapter_builds_and_trains_a_step():
    import keras

    from lib import crf
    from lib.experiments import crf_memm

    full = crf_memm.settings("full")
    small = {**full, "validation_sentences": 8, "test_sentences": 8,
             "encoders": {name: {**options, "train_sentences": 16} for name, options in full["encoders"].items()}}
    data = crf_memm.prepare(small)
    for encoder, options in full["encoders"].items():
        for head in full["heads"]:
            tagger = crf.SequenceTagger(crf_memm.make_encoder(full, encoder, len(data["vocabulary"]), 4),
                                        crf_memm.make_head(head, 4))
            tagger.compile(optimizer=keras.optimizers.Adam(options["learning_rate"]), jit_compile=False)
            loss = tagger.train_on_batch(data["train"]["ids"][:8], data["train"]["tags"][:8])
            assert np.isfinite(loss), (encoder, head)


def test_full_scale_of_the_exposure_bias_chapter_builds_and_trains_a_step():
    from lib import seq2seq
    from lib.experiments import exposure_bias

    full = exposure_bias.settings("full")
    data = exposure_bias.prepare({**full, "train_words": 8, "validation_words": 8, "test_words": 8})
    for method in full["methods"]:
        model = exposure_bias.build_model(full, data, method)
        assert model.hidden_dim == full["hidden_dim"]
        train = data["train"]
        loss = model.train_on_batch({"source": data["sources"][train],
                                     "decoder_inputs": np.asarray(seq2seq.shift_right(data["targets"][train], data["start"]))},
                                    data["targets"][train])
        assert np.isfinite(loss), method


def test_full_scale_of_the_gelu_chapter_builds_trains_a_step_and_swaps_its_activation():
    import keras

    from lib.experiments import gelu

    full = gelu.settings("full")
    data = gelu.prepare({**full, "train_reviews": 16, "evaluation_reviews": 8})
    model = gelu.make_classifier(full, len(data["vocabulary"]), "none")
    assert (model.encoder.num_layers, model.encoder.hidden_size) == (full["num_layers"], full["hidden_size"])
    model.compile(optimizer=keras.optimizers.Adam(full["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(model.train_on_batch(data["train"]["ids"][:8], data["train"]["labels"][:8]))
    for form in full["forms"][1:]:
        served = gelu.served_with(model, full, len(data["vocabulary"]), form)
        assert served.encoder.blocks[0].activation == form
        assert all(np.array_equal(a, b) for a, b in zip(served.get_weights(), model.get_weights()))
def test_full_scale_of_the_multilabel_chapter_builds_and_trains_a_step():
    import keras

    from lib.experiments import multilabel_softmax

    full = multilabel_softmax.settings("full")
    names = multilabel_softmax.methods(full)
    small = {**full, "tasks": {name: {**options, "validation": 32, "test": 32,
                                      **({"train": 400} if "train" in options else {})}
                               for name, options in full["tasks"].items()}}
    data = multilabel_softmax.prepare(small)
    for name, options in full["tasks"].items():
        task = data[name]
        model, _ = multilabel_softmax.make_model(options, task["train"]["x"].shape[1:], task["train"]["y"].shape[1],
                                                 len(names))
        model.compile(optimizer=keras.optimizers.Adam(full["learning_rate"]),
                      loss={f"h{i}": multilabel_softmax.make_loss(m, task["train"]["y"]) for i, m in enumerate(names)})
        y = task["train"]["y"][:8].astype("float32")
        loss = model.train_on_batch(task["train"]["x"][:8], {f"h{i}": y for i in range(len(names))})
        assert np.all(np.isfinite(loss)), name


def test_multilabel_synthetic_task_has_the_asked_label_counts():
    from lib.experiments import multilabel_softmax

    options = {**multilabel_softmax.settings("reference")["tasks"]["synthetic"], "train": 20_000,
               "validation": 10, "test": 10}
    for noise_scale in (2.0, 8.0):
        task = multilabel_softmax.synthetic_task({**options, "noise_scale": noise_scale})
        counts = task["train"]["y"].sum(axis=1)
        assert counts.mean() == pytest.approx(options["mean_labels"], rel=0.05)
        assert counts.std() > 1  # the number of labels depends on the input
    assert multilabel_softmax.phoneme_bigrams(["K", "AE1", "T"]) == {"K-AE", "AE-T"}
    assert multilabel_softmax.word_ngrams("at", 2) == ["a", "t", "<a", "at", "t>"]
def test_full_scale_of_the_adafactor_chapter_builds_and_trains_a_step():
    from lib.experiments import adafactor

    full = adafactor.settings("full")
    rng = np.random.default_rng(0)
    size = (full["batch_size"], full["context"])
    pair = (rng.integers(0, full["vocabulary_size"], size).astype("int32"),
            rng.integers(0, full["vocabulary_size"], full["batch_size"]).astype("int32"))
    variants = {**full["ladder"],  # and the stability variant that changes most: c = 1, no clipping
                "c = 1, no clipping": {**full["ladder"]["AdaFactor"], **full["stability_options"]["c = 1, no clipping"]}}
    for name, options in variants.items():
        model = adafactor.build_model(full, 0)
        optimizer = adafactor.make_optimizer(full, options, full["grids"][options["optimizer"]][0])
        run = adafactor.train(model, optimizer, pair, np.arange(full["batch_size"])[None], validation=pair,
                              log_every=1)
        assert not run["diverged"] and np.isfinite(run["curve"][0]["validation_loss"]), name
def test_full_scale_of_the_adversarial_training_chapter_builds_and_trains_a_step():
    import keras

    from lib.experiments import adversarial_training

    full = adversarial_training.settings("full")
    data = adversarial_training.prepare({**full, "train_reviews": 8, "validation_reviews": 8, "test_reviews": 8})
    for method in full["methods"]:
        model = adversarial_training.build_classifier(full, len(data["vocabulary"]), seed=0)
        trained = adversarial_training.wrap(model, full["method_options"][method])
        trained.compile(optimizer=keras.optimizers.Adam(full["learning_rate"]), loss=adversarial_training.loss())
        loss = trained.train_on_batch(data["train"]["x"], data["train"]["y"])
        assert model.get_layer("embedding").output_dim == full["embedding_dim"]
        assert np.isfinite(loss), method


def test_full_scale_of_the_attention_chapter_builds_its_largest_model_and_trains_a_step():
    import keras

    from lib.experiments import attention_bottleneck as recall

    full = recall.settings("full")
    largest = max(full["variants"], key=lambda v: (v["heads"] * v["talking_heads"], v["heads"]))
    assert largest["talking_heads"] and largest["heads"] * largest["key_size"] == full["width"]
    model = recall.make_model(full, largest)
    model.compile(optimizer=keras.optimizers.Adam(full["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    examples = recall.recall_examples(full, 2, seed=0)
    weights = recall.attention_map(model, examples)
    assert weights.shape == (full["queries"], full["memory"])
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-4)  # identity mixing at the start: a distribution
    loss = model.train_on_batch(recall._inputs(examples), examples["answers"])
    assert np.isfinite(loss)


def test_recall_examples_hold_distinct_keys_and_the_answers_stored_under_them():
    from lib.experiments import attention_bottleneck as recall

    small = recall.settings("smoke")
    examples = recall.recall_examples(small, 5, seed=3)
    for keys, values, queries, answers, slots in zip(*(examples[k] for k in (
            "memory_keys", "memory_values", "query_keys", "answers", "answer_slots"))):
        assert len(set(keys)) == len(keys) == small["memory"] and keys.max() < small["keys"]
        assert np.array_equal(keys[slots], queries) and np.array_equal(values[slots], answers)
