import pytest
import torch

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.masks import nm_prune_mask, nm_violations, unstructured_prune_mask, zero_fraction
from sparsetrt.prune.settings import Pattern, parse_pattern


@pytest.mark.parametrize("text,expected", [
    ("2:4", Pattern(n=2, m=4)), ("4:8", Pattern(n=4, m=8)), ("1:4", Pattern(n=1, m=4)),
    ("unstructured:0.5", Pattern(ratio=0.5)), ("0.7", Pattern(ratio=0.7)),
])
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected
    assert parse_pattern(str(expected)) == expected


@pytest.mark.parametrize("bad", ["4:2", "0:4", "2:2", "unstructured:1.5", "dense", "2-4", "unstructured:0"])
def test_parse_pattern_rejects(bad):
    with pytest.raises(SparsetrtError):
        parse_pattern(bad)


def test_sparsity_of_patterns():
    assert parse_pattern("2:4").sparsity == 0.5
    assert parse_pattern("1:4").sparsity == 0.75
    assert parse_pattern("unstructured:0.6").sparsity == pytest.approx(0.6)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8)])
def test_nm_mask_prunes_lowest_per_group(n, m):
    torch.manual_seed(0)
    scores = torch.rand(16, 8 * m)
    prune = nm_prune_mask(scores, n, m)
    groups_prune = prune.view(16, -1, m)
    assert (groups_prune.sum(-1) == m - n).all()
    groups = scores.view(16, -1, m)
    kept_min = groups.masked_fill(groups_prune, float("inf")).amin(-1)
    pruned_max = groups.masked_fill(~groups_prune, float("-inf")).amax(-1)
    assert (pruned_max <= kept_min).all()
    w = torch.randn(16, 8 * m).masked_fill(prune, 0)
    assert nm_violations(w, n, m) == (0, 16 * 8)


def test_nm_violations_finds_broken_group():
    w = torch.ones(4, 8).masked_fill(nm_prune_mask(torch.rand(4, 8), 2, 4), 0)
    assert nm_violations(w, 2, 4)[0] == 0
    w[2, 5] = w[2, 4] = w[2, 6] = w[2, 7] = 1.0
    assert nm_violations(w, 2, 4) == (1, 8)
    assert nm_violations(w.T, 2, 4, axis=0) == (1, 8)  # same check on the transposed layout


def test_nm_mask_rejects_indivisible():
    with pytest.raises(SparsetrtError, match="not divisible"):
        nm_prune_mask(torch.rand(4, 6), 2, 4)


@pytest.mark.parametrize("per_row", [True, False])
def test_unstructured_ratio(per_row):
    torch.manual_seed(1)
    scores = torch.rand(10, 50)
    prune = unstructured_prune_mask(scores, 0.6, per_row)
    assert zero_fraction(scores.masked_fill(prune, 0)) == pytest.approx(0.6)
    if per_row:
        assert (prune.sum(1) == 30).all()
