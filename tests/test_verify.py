import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.verify import check_pattern, load_manifest, verify_checkpoint


def test_pruned_checkpoint_verifies(pruned_tiny):
    result = verify_checkpoint(pruned_tiny)
    assert result.ok and result.checked == len(load_manifest(pruned_tiny)["modules"]) == 14


def test_verifier_rejects_a_broken_pattern(pruned_tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in pruned_tiny.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][3, :4] = 1.0  # four non-zeros in one group
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    result = verify_checkpoint(broken)
    assert not result.ok
    assert "model.layers.1.mlp.down_proj" in result.failures[0]
    with pytest.raises(SparsetrtError, match="sparsity verification failed.*down_proj"):
        result.raise_if_failed()


def test_verifier_rejects_a_missing_module(pruned_tiny, tmp_path):
    manifest = load_manifest(pruned_tiny)
    manifest["modules"]["model.layers.9.mlp.up_proj"] = {"pattern": "2:4"}
    result = verify_checkpoint(pruned_tiny, manifest)
    assert any("missing" in f for f in result.failures)


def test_check_pattern_axes():
    w = torch.zeros(4, 8)
    w[:, 0] = w[:, 1] = 1  # 2 non-zeros in the first group of every row
    assert check_pattern("w", w.numpy(), "2:4", axis=1) is None
    assert check_pattern("w", w.T.numpy(), "2:4", axis=0) is None
    assert "more than 2" in check_pattern("w", w.T.numpy(), "2:4", axis=1)
    assert check_pattern("w", w.numpy(), "unstructured:0.75", axis=1) is None
    assert "below" in check_pattern("w", w.numpy(), "unstructured:0.9", axis=1)


def test_manifest_without_modules_is_refused(tmp_path):
    (tmp_path / "sparsity.json").write_text(json.dumps({"modules": {}}))
    with pytest.raises(SparsetrtError, match="lists no modules"):
        load_manifest(tmp_path)
