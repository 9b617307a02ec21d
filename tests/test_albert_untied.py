"""The chapter "ALBERT used as BERT" beyond lib.albert: the token-level head, the NER data and split, and the
experiment's model builder (its smoke scale runs in tests/test_experiments.py)."""

import numpy as np
import pytest

from lib import albert, data
from lib.experiments import albert_untied
from lib.transformer import TokenClassifier, TransformerEncoder


def small_encoder(**changes):
    sizes = dict(vocabulary_size=40, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                 embedding_size=8, max_length=12, num_segments=0, share_layers=True, dropout=0.0)
    return TransformerEncoder(**{**sizes, **changes})


def test_token_classifier_untied_is_the_same_function_and_has_the_formula_parameters():
    model = TokenClassifier(small_encoder(), num_classes=7, dropout=0.1)
    model.build(None)
    untied = model.unshare()
    x = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    np.testing.assert_array_equal(model(x), untied(x))
    assert tuple(untied(x).shape) == (2, 6, 7)
    block = model.encoder.blocks[0].count_params()
    assert untied.count_params() - model.count_params() == 2 * block  # three layers instead of one
    with pytest.raises(ValueError, match="`encoder` must be a TransformerEncoder"):
        TokenClassifier("not an encoder", num_classes=3)


def test_encode_tagged_keeps_one_id_per_character_and_weights_only_characters():
    tokenizer = albert.CharTokenizer.from_texts(["江泽民在北京"], max_size=20)
    pairs = [("江泽民在北京…", ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"])]
    ids, tags, weights = albert_untied.encode_tagged(tokenizer, pairs, length=12)
    assert ids[0, 0] == tokenizer.cls_id and ids[0, 8] == tokenizer.sep_id
    assert ids[0, 7] == tokenizer.unk_id  # "…" normalises to three characters: one [UNK], tags stay aligned
    assert [albert_untied.NER_TAGS[t] for t in tags[0, 1:8]] == pairs[0][1]
    assert weights[0].tolist() == [0.0] + [1.0] * 7 + [0.0] * 4


def test_ner_split_keeps_held_out_paragraphs_out_of_pretraining():
    tagged = data.load_pos_tagged()
    split = albert.ner_split()
    assert sum(len(part) for part in split.values()) == len(tagged)
    corpus = set(albert.pretraining_texts())
    text = ["".join(word for word, _ in sentence) for sentence in tagged]
    held_out = {text[i] for i in np.concatenate([split["valid"], split["test"]])}
    train = {text[i] for i in split["train"]}
    assert not (held_out - train) & corpus
    assert len(train & corpus) > 0.9 * len(train)


def test_the_three_models_start_from_the_pretrained_function_or_from_random_weights():
    settings = {**albert_untied.settings("smoke"), "dropout": 0.0}
    encoder = small_encoder()
    encoder.build(None)
    x = np.array([[2, 7, 9, 11, 3, 0]])
    models = {kind: albert_untied.build(settings, encoder, "ner", kind, seed=3) for kind in albert_untied.MODELS}
    np.testing.assert_allclose(models["shared"](x), models["untied"](x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(models["shared"](x), models["scratch"](x))
    assert models["shared"].encoder.share_layers is True
    assert models["untied"].encoder.share_layers is False and models["scratch"].encoder.share_layers is False
    with pytest.raises(ValueError, match="`kind` must be one of"):
        albert_untied.build(settings, encoder, "ner", "bert", seed=0)


@pytest.mark.parametrize("scale", ["smoke", "quick", "reference", "full"])
def test_every_model_reaches_the_early_epochs_it_is_scored_on(scale):
    """Early stopping ends a run no sooner than 1 + patience epochs, and never after max_epochs: the first
    ``early_epochs`` validation scores exist for every model, so the early means compare like with like."""
    settings = albert_untied._COMMON | albert_untied._SCALES[scale]
    assert 1 <= settings["early_epochs"] <= min(settings["max_epochs"], 1 + settings["patience"])
