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
