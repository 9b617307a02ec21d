"""Tests of lib.albert: tokenizer, masking, cached pre-training, fine-tuning runs, loaders of real ALBERT weights."""

import os
import time

import keras
import numpy as np
import pytest
from keras import ops

from lib import albert
from lib.albert import CharTokenizer, mask_tokens
from lib.transformer import SequenceClassifier
from test_transformer import randomize, tiny_encoder, token_batch

ASSET = albert.PRETRAINED_ASSET


# --- text ------------------------------------------------------------------------------------------------------------


def test_char_tokenizer_normalises_and_frames_with_cls_and_sep(tmp_path):
    tokenizer = CharTokenizer.from_texts(["好评，好评！ ＡＢ", "差评"], max_size=20)
    assert tokenizer.tokens[:5] == list(albert.SPECIAL_TOKENS)
    assert tokenizer.tokens[5:7] == ["评", "好"]  # most frequent first
    assert tokenizer.normalize("Ｘ Ｐ 系统") == "xp系统"  # NFKC, lower case, no spaces
    ids = tokenizer.encode(["好评好评好评", "未知"], length=5)
    assert ids.tolist() == [[2, 6, 5, 6, 3], [2, 1, 1, 3, 0]]
    assert tokenizer.decode(ids[0]) == "[CLS]好评好[SEP]"
    chunks = tokenizer.encode_chunks(["好评好评好", "差"], length=4, min_tokens=1)
    assert chunks.tolist() == [[2, 6, 5, 3], [2, 6, 5, 3], [2, 6, 3, 0], [2, tokenizer.index["差"], 3, 0]]
    (tmp_path / "vocab.txt").write_text("\n".join(tokenizer.tokens), encoding="utf-8")
    assert CharTokenizer.from_vocab_file(tmp_path / "vocab.txt").tokens == tokenizer.tokens
    with pytest.raises(ValueError, match=r"`tokens` must start with '\[PAD\]' and contain"):
        CharTokenizer(["[UNK]", "[PAD]"])
    with pytest.raises(ValueError, match=r"`length` must be at least 3 \(\[CLS\], one token, \[SEP\]\). "
                                         "Received: length=2"):
        tokenizer.encode(["好"], length=2)


def test_mask_tokens_follows_bert():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(400, 40)).astype("int32")
    ids[:, 0], ids[:, -1] = 2, 3
    ids[::2, 30:] = 0
    special = [0, 1, 2, 3, 4]
    batch = mask_tokens(ids, vocabulary_size=100, mask_id=4, special_ids=special, rate=0.15, seed=1)
    m = batch["mask_positions"].shape[1]
    assert m == 6  # ceil(0.15 * 40)
    real = (~np.isin(ids, special)).sum(1)
    np.testing.assert_array_equal(batch["weights"].sum(1), np.minimum(np.round(0.15 * real), m))
    chosen = batch["weights"] > 0
    rows = np.repeat(np.arange(400)[:, None], m, 1)
    assert not np.isin(ids[rows[chosen], batch["mask_positions"][chosen]], special).any()
    np.testing.assert_array_equal(batch["labels"][chosen], ids[rows[chosen], batch["mask_positions"][chosen]])
    new = batch["token_ids"][rows[chosen], batch["mask_positions"][chosen]]
    masked, kept = (new == 4).mean(), (new == batch["labels"][chosen]).mean()
    assert 0.75 < masked < 0.85 and 0.07 < kept < 0.14  # 80% [MASK], 10% unchanged (+ chance hits)
    untouched = np.ones_like(ids, dtype=bool)
    untouched[rows[chosen], batch["mask_positions"][chosen]] = False
    np.testing.assert_array_equal(batch["token_ids"][untouched], ids[untouched])
    with pytest.raises(ValueError, match=r"`rate` must be in \(0, 1\). Received: rate=0"):
        mask_tokens(ids, vocabulary_size=100, mask_id=4, special_ids=special, rate=0)


# --- pre-trained weights: keras-hub and Hugging Face layouts, built locally ---------------------------------------


class _KerasHubLikePositionEmbedding(keras.layers.Layer):
    def __init__(self, sequence_length, width, **kwargs):
        super().__init__(**kwargs)
        self.position_embeddings = self.add_weight(shape=(sequence_length, width), name="embeddings")


class _KerasHubLikeEncoderLayer(keras.layers.Layer):
    """The computation of keras_hub.layers.TransformerEncoder (post-norm), with its attribute names."""

    def __init__(self, hidden, heads, intermediate, **kwargs):
        super().__init__(**kwargs)
        self._self_attention_layer = keras.layers.MultiHeadAttention(heads, hidden // heads,
                                                                     name="self_attention_layer")
        self._self_attention_layer.build((None, None, hidden), (None, None, hidden))
        self._self_attention_layer_norm = keras.layers.LayerNormalization(epsilon=1e-12)
        self._self_attention_layer_norm.build((None, None, hidden))
        self._feedforward_intermediate_dense = keras.layers.Dense(
            intermediate, activation=lambda x: keras.activations.gelu(x, approximate=True))
        self._feedforward_intermediate_dense.build((None, None, hidden))
        self._feedforward_output_dense = keras.layers.Dense(hidden)
        self._feedforward_output_dense.build((None, None, intermediate))
        self._feedforward_layer_norm = keras.layers.LayerNormalization(epsilon=1e-12)
        self._feedforward_layer_norm.build((None, None, hidden))

    def call(self, x, padding_mask):
        mask = ops.cast(padding_mask, "bool")[:, None, :]
        x = self._self_attention_layer_norm(x + self._self_attention_layer(x, x, attention_mask=mask))
        h = self._feedforward_output_dense(self._feedforward_intermediate_dense(x))
        return self._feedforward_layer_norm(x + h)


class KerasHubLikeAlbert:
    """A randomly initialised stand-in with the attributes of keras_hub.models.AlbertBackbone (no download)."""

    def __init__(self, vocabulary_size=30, num_layers=3, num_heads=2, embedding_dim=6, hidden_dim=8,
                 intermediate_dim=12, max_sequence_length=9, num_segments=2, seed=0):
        self.config = dict(vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
                           num_groups=1, num_inner_repetitions=1, embedding_dim=embedding_dim,
                           hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, dropout=0.0,
                           max_sequence_length=max_sequence_length, num_segments=num_segments)
        self.token_embedding = keras.layers.Embedding(vocabulary_size, embedding_dim)
        self.token_embedding.build((None, None))
        self.position_embedding = _KerasHubLikePositionEmbedding(max_sequence_length, embedding_dim)
        self.segment_embedding = keras.layers.Embedding(num_segments, embedding_dim)
        self.segment_embedding.build((None, None))
        self.embeddings_layer_norm = keras.layers.LayerNormalization(epsilon=1e-12)
        self.embeddings_layer_norm.build((None, None, embedding_dim))
        self.embeddings_projection = keras.layers.Dense(hidden_dim)
        self.embeddings_projection.build((None, None, embedding_dim))
        self.layer = _KerasHubLikeEncoderLayer(hidden_dim, num_heads, intermediate_dim)
        self.pooled_dense = keras.layers.Dense(hidden_dim, activation="tanh")
        self.pooled_dense.build((None, hidden_dim))
        layers = [self.token_embedding, self.position_embedding, self.segment_embedding,
                  self.embeddings_layer_norm, self.embeddings_projection, self.layer, self.pooled_dense]
        randomize([w for layer in layers for w in layer.weights], seed=seed)

    def get_config(self):
        return dict(self.config)

    def get_layer(self, name):
        assert name == "group_0_inner_layer_0", name
        return self.layer

    def __call__(self, token_ids, segment_ids, padding_mask):
        positions = self.position_embedding.position_embeddings[: token_ids.shape[1]][None]
        x = (self.token_embedding(token_ids) + positions
             + self.segment_embedding(segment_ids))
        x = self.embeddings_projection(self.embeddings_layer_norm(x))
        for _ in range(self.config["num_layers"]):
            x = self.layer(x, padding_mask)
        return {"sequence_output": x, "pooled_output": self.pooled_dense(x[:, 0])}


def huggingface_state_of(source):
    """The same weights as a Hugging Face AlbertModel state dict (nn.Linear stores (out, in))."""
    config, arrays = albert.albert_arrays_from_keras_hub(source)
    H = config["hidden_size"]
    p = "albert.encoder.albert_layer_groups.0.albert_layers.0."
    state = {
        "albert.embeddings.word_embeddings.weight": arrays["token_embedding/embeddings"],
        "albert.embeddings.position_embeddings.weight": arrays["position_embedding/embeddings"],
        "albert.embeddings.token_type_embeddings.weight": arrays["segment_embedding/embeddings"],
        "albert.embeddings.LayerNorm.weight": arrays["embeddings_layer_norm/gamma"],
        "albert.embeddings.LayerNorm.bias": arrays["embeddings_layer_norm/beta"],
        "albert.encoder.embedding_hidden_mapping_in.weight": arrays["embedding_projection/kernel"].T,
        "albert.encoder.embedding_hidden_mapping_in.bias": arrays["embedding_projection/bias"],
        "albert.pooler.weight": arrays["pooled_dense/kernel"].T,
        "albert.pooler.bias": arrays["pooled_dense/bias"],
        f"{p}attention.dense.weight": arrays["layer/self_attention_layer/attention_output/kernel"].reshape(H, H).T,
        f"{p}attention.dense.bias": arrays["layer/self_attention_layer/attention_output/bias"],
        f"{p}attention.LayerNorm.weight": arrays["layer/self_attention_layer_norm/gamma"],
        f"{p}attention.LayerNorm.bias": arrays["layer/self_attention_layer_norm/beta"],
        f"{p}ffn.weight": arrays["layer/feedforward_intermediate_dense/kernel"].T,
        f"{p}ffn.bias": arrays["layer/feedforward_intermediate_dense/bias"],
        f"{p}ffn_output.weight": arrays["layer/feedforward_output_dense/kernel"].T,
        f"{p}ffn_output.bias": arrays["layer/feedforward_output_dense/bias"],
        f"{p}full_layer_layer_norm.weight": arrays["layer/feedforward_layer_norm/gamma"],
        f"{p}full_layer_layer_norm.bias": arrays["layer/feedforward_layer_norm/beta"],
        "predictions.bias": np.zeros(config["vocabulary_size"], "float32"),  # an MLM head: ignored
    }
    for name in ("query", "key", "value"):
        state[f"{p}attention.{name}.weight"] = arrays[f"layer/self_attention_layer/{name}/kernel"].reshape(H, H).T
        state[f"{p}attention.{name}.bias"] = arrays[f"layer/self_attention_layer/{name}/bias"].reshape(H)
    hf_config = {"vocab_size": config["vocabulary_size"], "embedding_size": config["embedding_size"],
                 "hidden_size": H, "num_hidden_layers": config["num_layers"],
                 "num_attention_heads": config["num_heads"], "intermediate_size": config["intermediate_size"],
                 "hidden_act": "gelu_new", "max_position_embeddings": config["max_length"],
                 "type_vocab_size": config["num_segments"], "layer_norm_eps": 1e-12, "num_hidden_groups": 1,
                 "inner_group_num": 1}
    return hf_config, state


def test_keras_hub_albert_loads_then_unties_with_identical_outputs():
    keras.utils.set_random_seed(8)
    source = KerasHubLikeAlbert()
    ids = token_batch(8, length=9, vocabulary_size=30)
    segments = (np.arange(9)[None, :] >= 5).astype("int32").repeat(3, 0)
    padding = ids != 0
    reference = source(ids, segments, padding)
    model = albert.albert_from_arrays(*albert.albert_arrays_from_keras_hub(source), num_classes=2,
                                           dropout=0.1)
    sequence = model.encoder(ids, segment_ids=segments, padding_mask=padding)
    np.testing.assert_allclose(sequence, reference["sequence_output"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.pooler(sequence[:, 0]), reference["pooled_output"], rtol=1e-4, atol=1e-5)
    untied = model.unshare()
    inputs = {"token_ids": ids, "segment_ids": segments}
    np.testing.assert_array_equal(model(inputs), untied(inputs))
    assert untied.encoder.count_params() - model.encoder.count_params() == 2 * model.encoder.blocks[0].count_params()


def test_huggingface_layout_gives_the_same_arrays_as_keras_hub():
    keras.utils.set_random_seed(9)
    source = KerasHubLikeAlbert(seed=9)
    expected_config, expected = albert.albert_arrays_from_keras_hub(source)
    hf_config, state = huggingface_state_of(source)
    config, arrays = albert.albert_arrays_from_huggingface(hf_config, state)
    assert config == expected_config
    assert sorted(arrays) == sorted(expected) == sorted(albert.ALBERT_ARRAY_SHAPES)
    for name in expected:
        np.testing.assert_array_equal(arrays[name], expected[name], err_msg=name)
    hf_config["hidden_act"] = "gelu"
    assert albert.albert_arrays_from_huggingface(hf_config, state)[0]["activation"] == "none"


def test_loader_errors_name_what_is_wrong():
    source = KerasHubLikeAlbert()
    config, arrays = albert.albert_arrays_from_keras_hub(source)
    with pytest.raises(ValueError, match=r"`arrays\['pooled_dense/bias'\]` must have shape \(8,\). "
                                         r"Received: shape \(7,\)"):
        albert.albert_from_arrays(config, {**arrays, "pooled_dense/bias": np.zeros(7)})
    del arrays["pooled_dense/kernel"]
    with pytest.raises(ValueError, match=r"`arrays` must hold 'pooled_dense/kernel' of shape \(8, 8\)"):
        albert.albert_from_arrays(config, arrays)
    hf_config, state = huggingface_state_of(source)
    with pytest.raises(ValueError, match=r"`hidden_act` must be one of .* Received: hidden_act='relu'"):
        albert.albert_arrays_from_huggingface({**hf_config, "hidden_act": "relu"}, state)
    state.pop("albert.pooler.bias")
    with pytest.raises(ValueError, match=r"`state_dict` must hold the array 'pooler.bias'"):
        albert.albert_arrays_from_huggingface(hf_config, state)
    with pytest.raises(ValueError, match="Only ALBERTs with one shared layer"):
        albert.albert_arrays_from_huggingface({**hf_config, "num_hidden_groups": 2}, state)
    source.config["num_groups"] = 3
    with pytest.raises(ValueError, match=r"Only ALBERTs with one shared layer \(num_groups=1"):
        albert.albert_arrays_from_keras_hub(source)


# --- pre-training (reduced) and fine-tuning ---------------------------------------------------------------------------

REDUCED = albert.PretrainingRecipe().reduced(
    vocabulary_size=200, sequence_length=12, embedding_size=8, hidden_size=16, num_layers=1, num_heads=2,
    intermediate_size=32, epochs=2, batch_size=64, learning_rate=3e-3, max_sequences=512,
    held_out_sequences=128)


def test_load_or_pretrain_trains_caches_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "cache"))
    model, metadata, source = albert.load_or_pretrain(REDUCED)
    assert source == "trained"
    assert metadata["recipe"] == REDUCED.as_dict() and len(metadata["accuracy"]) == REDUCED.epochs
    assert metadata["accuracy"][-1] > metadata["initial_accuracy"] + 0.02  # it learned something
    cached = list((tmp_path / "cache" / "albert-untied").glob("*.keras"))
    assert [path.name for path in cached] == [f"albert-mlm-{REDUCED.key()}.keras"]
    again, again_metadata, source = albert.load_or_pretrain(REDUCED)
    assert source == "cache" and again_metadata == metadata
    ids = {"token_ids": np.array([[2, 9, 4, 11, 3, 0]]), "mask_positions": np.array([[2]])}
    np.testing.assert_array_equal(model(ids), again(ids))
    # a committed asset is used when the cache is empty, and only for its own recipe
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "empty"))
    asset = cached[0]
    _, _, source_asset = albert.load_or_pretrain(REDUCED, asset=asset, cache=False)
    assert source_asset == "asset"
    # an asset trained with another recipe is ignored: the recipe is trained instead
    other = REDUCED.reduced(epochs=1)
    calls = []
    monkeypatch.setattr(albert, "pretrain", lambda recipe, verbose=False: calls.append(recipe) or (model, {}))
    _, _, source_other = albert.load_or_pretrain(other, asset=asset, cache=False)
    assert source_other == "trained" and calls == [other]


def test_committed_asset_is_the_default_recipe_and_learned_something():
    _, _, source = albert.load_or_pretrain(cache=False)  # with no cache, the default recipe finds the asset
    assert source == "asset"
    model = keras.models.load_model(ASSET)
    assert model.metadata["recipe"] == albert.PretrainingRecipe().as_dict()
    assert model.metadata["accuracy"][-1] > model.metadata["initial_accuracy"] + 0.1
    assert model.encoder.share_layers and len(model.encoder.vocabulary) == model.encoder.vocabulary_size


def unwritable_cache(tmp_path, kind):
    """A cache location that cannot be written: under a regular file (fails even for root), or a read-only folder."""
    if kind == "under a file":
        (tmp_path / "file").write_text("not a folder")
        return tmp_path / "file" / "cache"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder / "cache"


@pytest.mark.parametrize("kind", ["under a file", "read-only folder"])
def test_shipped_model_loads_without_a_writable_cache(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(unwritable_cache(tmp_path, kind)))
    _, _, source = albert.load_or_pretrain(cache=False)  # never touches the cache
    assert source == "asset"
    with pytest.warns(RuntimeWarning, match="BOOK_CACHE_DIR"):
        _, metadata, source = albert.load_or_pretrain()  # would cache it, cannot: says so and goes on
    assert source == "asset" and metadata["recipe"] == albert.PretrainingRecipe().as_dict()


def test_a_corrupted_cache_file_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    cached = tmp_path / "albert-untied" / f"albert-mlm-{albert.PretrainingRecipe().key()}.keras"
    cached.parent.mkdir()
    cached.write_bytes(ASSET.read_bytes()[:1000])  # a copy cut short
    with pytest.warns(RuntimeWarning, match="could not be loaded"):
        _, _, source = albert.load_or_pretrain()
    assert source == "asset"
    assert cached.read_bytes() == ASSET.read_bytes()
    _, _, source = albert.load_or_pretrain()
    assert source == "cache"


def test_temporaries_of_a_killed_run_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "albert-untied"
    folder.mkdir()
    stale, fresh = folder / f"{albert.PARTIAL_PREFIX}killed", folder / f"{albert.PARTIAL_PREFIX}running"
    for path in (stale, fresh):
        path.mkdir()
        (path / "albert-mlm.keras").write_bytes(b"half a file")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    _, _, source = albert.load_or_pretrain()
    assert source == "asset" and not stale.exists() and fresh.exists()
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [fresh.name, f"albert-mlm-{albert.PretrainingRecipe().key()}.keras"])


def test_fine_tuner_learns_and_restarts_every_run_from_the_same_function():
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, size=100).astype("int32")
    x = rng.integers(5, 40, size=(100, 7)).astype("int32")
    x[:, 0] = 3 + y  # the class is written in the first token, where the head reads
    shared = SequenceClassifier(tiny_encoder(num_layers=2, dropout=0.1), num_classes=2, dropout=0.1)
    shared.build(None)
    untied = shared.unshare()
    tuners = {name: albert.FineTuner(model, train_size=68, epochs=2, batch_size=8, learning_rate=1e-2)
              for name, model in (("shared", shared), ("untied", untied))}
    assert tuners["shared"].train_size == 64 and tuners["shared"].steps == 16  # whole batches only
    first = {name: tuner.run(x, y, x[64:], y[64:], seed=5, evaluations=2) for name, tuner in tuners.items()}
    for result in first.values():
        assert result["steps"] == [0, 8, 16] and len(result["train_loss"]) == 2
        assert result["train_loss"][-1] < result["train_loss"][0]
        assert result["valid_accuracy"][-1] > 0.9 and result["step_seconds"] > 0
    assert first["shared"]["valid_accuracy"][0] == first["untied"]["valid_accuracy"][0]
    # the same seed gives the same starting head, so both models start from the same function...
    tuners["shared"].reset(6)
    tuners["untied"].reset(6)
    np.testing.assert_array_equal(shared(x), untied(x))
    # ...and a run is repeatable: same seed, same curve; another seed, another curve
    again = tuners["untied"].run(x, y, x[64:], y[64:], seed=5, evaluations=2)
    assert again["train_loss"] == first["untied"]["train_loss"]
    other = tuners["untied"].run(x, y, x[64:], y[64:], seed=7, evaluations=2)
    assert other["train_loss"] != first["untied"]["train_loss"]
    memory = {name: tuner.state_bytes_from_shapes() for name, tuner in tuners.items()}
    extra = 4 * untied.encoder.blocks[0].count_params()  # one more block of float32 weights
    assert memory["untied"]["weights"] - memory["shared"]["weights"] == extra
    assert memory["untied"]["optimizer"] - memory["shared"]["optimizer"] == 2 * extra  # Adam: two moments
    assert tuners["untied"].accuracy(x[64:], y[64:]) == other["valid_accuracy"][-1]
    with pytest.raises(ValueError, match=r"`new_layers` must name layers of the head \('pooler', 'logits'\). "
                                         r"Received: new_layers=\('encoder',\)"):
        albert.FineTuner(shared, train_size=32, new_layers=("encoder",))
    with pytest.raises(ValueError, match="`x_train` must hold at least train_size=64 examples. Received: 16"):
        tuners["shared"].run(x[:16], y[:16], x, y, seed=0)
    with pytest.raises(ValueError, match="must have the same lengths. Received: 64/63 and 36/36"):
        tuners["shared"].run(x[:64], y[:63], x[64:], y[64:], seed=0)


def test_sentiment_split_keeps_held_out_reviews_out_of_pretraining():
    from lib import data

    texts, _ = data.load_sentiment()
    split = albert.sentiment_split()
    assert sum(len(part) for part in split.values()) == len(texts)
    corpus = set(albert.pretraining_texts())
    held_out = {texts[i] for i in np.concatenate([split["valid"], split["test"]])}
    train = {texts[i] for i in split["train"]}
    assert not (held_out - train) & corpus  # no held-out review is pre-training text
    assert train <= corpus
