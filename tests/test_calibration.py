import pytest
import torch

import sparsetrt.calibration.data as data
from sparsetrt.errors import SparsetrtError


def test_fallback_corpus_without_shared_data(monkeypatch):
    """Outside the workplace there is no ../shared: the demo must still have text, and say which."""
    monkeypatch.setattr(data, "find_shared_wikitext", lambda: None)
    valid, test = data.default_corpus("valid"), data.default_corpus("test")
    assert "pydoc_data.topics" in valid.description and "WikiText-2 not found" in valid.description
    assert len(valid.text) > 100_000 and len(test.text) > 100_000
    assert valid.text[:2000] not in test.text  # calibration and evaluation halves do not overlap


def test_shared_wikitext_is_used_when_present(tmp_path, monkeypatch):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    (folder / "valid.txt").write_text("valid text")
    (folder / "test.txt").write_text("test text")
    monkeypatch.setenv("SPARSETRT_DATA", str(tmp_path))
    corpus = data.default_corpus("test")
    assert corpus.text == "test text" and "WikiText-2 test" in corpus.description


def test_windows_are_seeded_and_sequential_windows_are_the_prefix():
    ids = torch.arange(10_000)
    a, b = data.random_windows(ids, 4, 100, seed=0), data.random_windows(ids, 4, 100, seed=0)
    assert torch.equal(a, b) and a.shape == (4, 100)
    assert not torch.equal(a, data.random_windows(ids, 4, 100, seed=1))
    assert all(torch.equal(w, torch.arange(w[0], w[0] + 100)) for w in a)  # contiguous spans
    seq = data.sequential_windows(ids, 512, 3)
    assert torch.equal(seq.flatten(), ids[:1536])
    with pytest.raises(SparsetrtError, match="fewer than one window"):
        data.random_windows(ids[:50], 1, 100, seed=0)


def test_windows_start_with_the_bos_where_the_tokenizer_puts_one(tmp_path):
    """A tokenizer that puts a BOS before every text (Gemma's, Llama 2's) gets it at the start of every window, the
    stream itself carries none, and each window holds one stream token less; one that puts none gets the
    protocol's windows unchanged."""
    from conftest import make_tokenizer

    corpus = data.CorpusText(" ".join(f"word{i % 97} next" for i in range(3000)), "test text")
    plain, with_bos = make_tokenizer(tmp_path / "plain"), make_tokenizer(tmp_path / "bos", add_bos=True)
    bos = with_bos.bos_token_id
    assert data.window_bos(plain) is None and data.window_bos(with_bos) == bos
    stream = data.tokenize_corpus(with_bos, corpus)
    assert torch.equal(stream, data.tokenize_corpus(plain, corpus)) and bos not in stream.tolist()

    assert torch.equal(data.evaluation_windows(plain, corpus, 64, 3), data.sequential_windows(stream, 64, 3))
    evaluation = data.evaluation_windows(with_bos, corpus, 64, 3)
    assert evaluation.shape == (3, 64) and (evaluation[:, 0] == bos).all()
    assert torch.equal(evaluation[:, 1:].flatten(), stream[: 3 * 63])
    sampled = data.sampled_windows(with_bos, corpus, 4, 64, seed=0)
    assert sampled.shape == (4, 64) and (sampled[:, 0] == bos).all() and bos not in sampled[:, 1:].flatten().tolist()
    assert torch.equal(data.sampled_windows(plain, corpus, 4, 64, seed=0), data.random_windows(stream, 4, 64, seed=0))
