"""Exact channel permutations before N:M pruning (sparsetrt.prune.permute): the permuted model computes what the
original does for every family, the search keeps at least the identity's saliency and finds a planted optimum, and
`prune --permute` keeps the pattern, records what it chose and exports with parity (streamed too)."""

from __future__ import annotations

import json

import pytest
import torch
from test_architectures import config_of
from test_cli import assert_one_line_error, prune_args, run_cli

from sparsetrt.architectures import FAMILIES
from sparsetrt.modules import decoder_layers
from sparsetrt.prune import permute


def random_model(family: str):
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_of(family, 256)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)  # spread the init so a wrong permutation shows
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_permutations_leave_every_family_computing_the_same(family):
    model = random_model(family)
    ids = torch.randint(3, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    reference = logits(model, ids)
    generator = torch.Generator().manual_seed(1)
    for layer in decoder_layers(model):
        mlp, heads = permute.mlp_site(layer), permute.head_site(layer, model.config)
        assert mlp is not None and heads is not None  # both axes found in every supported family
        before = mlp.down.weight.clone()
        mlp.apply(torch.randperm(mlp.down.in_features, generator=generator))
        heads.apply([torch.randperm(heads.head_dim, generator=generator) for _ in range(heads.kv_heads)])
        assert not torch.equal(before, mlp.down.weight)
    plan = permute.hidden_plan(model)  # the residual stream: one order for the whole model
    assert plan is not None and all(len(groups) == 2 for groups in plan.readers)
    assert not any(".q_norm." in name or ".k_norm." in name for name in plan.dims)  # OLMo 2's span heads x head_dim
    plan.fold(model, torch.randperm(model.config.hidden_size, generator=generator))
    permuted = logits(model, ids)
    assert (permuted - reference).abs().max() <= 1e-5 * reference.abs().max()
    # the same permutation of down_proj's columns alone (gate/up left as they were) changes the function
    layer = decoder_layers(model)[0]
    mlp = permute.mlp_site(layer)
    with torch.no_grad():
        mlp.down.weight.data = mlp.down.weight.data[:, torch.randperm(mlp.down.in_features, generator=generator)]
    assert (logits(model, ids) - reference).abs().max() > 1e-3


def test_the_search_finds_a_planted_optimum_and_never_loses_to_the_identity():
    # 16 channels: the strong ones sit four to a group, so 2:4 in that order drops half of them; the best layout
    # puts two in each group and keeps them all
    strong = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    scores = torch.rand(32, 16, generator=torch.Generator().manual_seed(0)) * 0.01
    scores[:, strong] += 1.0
    perm = permute.search_permutation(scores, 2, 4)
    assert sorted(perm.tolist()) == list(range(16))
    assert permute.kept(scores[:, perm], 2, 4) >= 8 * 32  # every strong weight kept
    assert permute.kept(scores, 2, 4) < 4.5 * 32
    for seed in range(3):  # no structure to find: still never worse than the order it started from
        noise = torch.rand(64, 256, generator=torch.Generator().manual_seed(seed))
        perm = permute.search_permutation(noise, 2, 4)
        assert permute.kept(noise[:, perm], 2, 4) >= permute.kept(noise, 2, 4)


def test_prune_permute_records_what_it_chose_and_exports_with_parity(capsys, tiny_checkpoint, calib_file, tmp_path):
    pruned = tmp_path / "pruned"
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, pruned, "--permute", "all"))
    assert code == 0, err
    manifest = json.loads((pruned / "sparsity.json").read_text())
    record = manifest["permutation"]
    assert record["axes"] == ["mlp", "heads", "hidden"] and record["modules_permuted"] == 4  # down and o, 2 blocks
    assert record["mean_kept_after"] > record["mean_kept_before"]
    hidden = record["hidden"]
    assert hidden["linears"] == 10 and hidden["kept_after"] > hidden["kept_before"]  # q, k, v, gate, up x 2
    assert manifest["settings"]["permute"] == "all"  # in the fingerprint: a different run from --permute off
    code, _, err = run_cli(capsys, "verify", pruned)
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", "--model", pruned, "--out", tmp_path / "onnx", "--precision", "fp32")
    assert code == 0, err
    code, _, err = run_cli(capsys, "parity", "--model", pruned, "--onnx-dir", tmp_path / "onnx", "--corpus",
                           calib_file, "--windows", 1, "--seq-len", 32, "--generate-tokens", 4, "--out",
                           tmp_path / "parity")
    assert code == 0, err
    # streamed block by block: the same permutations and the same weights
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, tmp_path / "stream", "--permute", "all",
                                               "--stream"))
    assert code == 0, err
    streamed = json.loads((tmp_path / "stream" / "sparsity.json").read_text())["permutation"]
    assert streamed["digest"] == record["digest"]


def test_permute_needs_an_nm_pattern(capsys, tiny_checkpoint, calib_file, tmp_path):
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, tmp_path / "out", "--permute", "mlp",
                                               "--pattern", "unstructured:0.5"))
    assert_one_line_error(code, err, "--permute mlp chooses the groups of an N:M pattern")
    assert not (tmp_path / "out").exists()


def test_a_stream_tensor_the_plan_does_not_know_leaves_the_hidden_order_alone():
    """An extra module on the residual stream (here a Linear beside the norms) could be anything: no hidden order
    is chosen for such a model, rather than one that changes what it computes."""
    model = random_model("llama")
    assert permute.hidden_plan(model) is not None
    hidden = model.config.hidden_size
    decoder_layers(model)[1].adapter = torch.nn.Linear(hidden, hidden)
    assert permute.hidden_plan(model) is None
    del decoder_layers(model)[1].adapter
    model.model.extra_scale = torch.nn.Parameter(torch.ones(2, hidden))  # outside the blocks, not a norm
    assert permute.hidden_plan(model) is None


def test_permutations_follow_a_hardware_schedule(capsys, tiny_checkpoint, calib_file, tmp_path):
    """With some Linears left dense by the schedule, only the N:M ones are searched for (and the hidden order is
    chosen from the N:M readers); the result verifies."""
    out = tmp_path / "hw"
    code, _, err = run_cli(capsys, *prune_args(tiny_checkpoint, calib_file, out, "--permute", "all",
                                               "--schedule", "hardware", "--coverage", "0.6"))
    assert code == 0, err
    manifest = json.loads((out / "sparsity.json").read_text())
    dense = set(manifest["schedule"]["dense_modules"])
    record = manifest["permutation"]
    assert dense and not dense & set(record["modules"])
    assert 0 < record["hidden"]["linears"] < 10  # q, k, v, gate, up x 2 blocks, less the dense ones
    code, _, err = run_cli(capsys, "verify", out)
    assert code == 0, err
