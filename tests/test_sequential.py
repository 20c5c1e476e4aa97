"""The layer-by-layer driver: statistics come from already-pruned layers, and its shortcuts are exact."""

import contextlib

import pytest
import torch

import sparsetrt.prune.sequential as sequential
from sparsetrt.calibration.data import random_windows, read_corpus, tokenize_corpus
from sparsetrt.models import load_model
from sparsetrt.modules import decoder_layers, target_linears
from sparsetrt.prune.settings import parse_pattern


@pytest.fixture()
def tiny(tiny_checkpoint, calib_file):
    model, tokenizer = load_model(tiny_checkpoint)
    windows = random_windows(tokenize_corpus(tokenizer, read_corpus(calib_file)), 6, 48, seed=0)
    return model, windows


def test_targets_default_to_every_block_linear(tiny):
    model, _ = tiny
    names = list(target_linears(model))
    assert len(names) == 14 and all(".layers." in n for n in names)
    assert not any("embed" in n or "lm_head" in n for n in names)
    mlp_only = target_linears(model, targets=["*.mlp.*"], exclude=["*.down_proj"])
    assert sorted({n.rsplit(".", 1)[-1] for n in mlp_only}) == ["gate_proj", "up_proj"]


def test_groups_follow_shared_inputs(tiny):
    model, _ = tiny
    layers = decoder_layers(model)
    with torch.no_grad():
        cached = sequential.capture_first_layer_inputs(model, layers, torch.randint(0, 100, (6, 48)), 3)
    modules = {n: m for n, m in target_linears(model).items() if ".layers.0." in n}
    # repeated under no_grad, as sequential_update runs it: grouping by id() of the inputs once merged o_proj into
    # gate/up's group when the allocator reused the freed attention output's address for the MLP's input (by
    # chance: tests/test_streaming.py caught it; this loop does not reproduce it reliably)
    with torch.no_grad():
        for _ in range(30):
            groups = sequential._linear_groups(layers[0], cached[0], modules)
            short = [[n.rsplit(".", 1)[-1] for n in g] for g in groups]
            assert short == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]


def test_statistics_see_the_already_pruned_layers(tiny, monkeypatch):
    model, windows = tiny
    dense_model = __import__("copy").deepcopy(model)
    recorded = {}
    real_collect = sequential.collect_input_stats

    def spy(modules, forwards, **kwargs):
        stats, outputs = real_collect(modules, forwards, **kwargs)
        recorded.update({n: s.hessian.clone() for n, s in stats.items()})
        return stats, outputs

    monkeypatch.setattr(sequential, "collect_input_stats", spy)
    sequential.prune_model(model, windows, "sparsegpt", parse_pattern("2:4"), batch_size=3, progress=False)

    def q_input_hessian(m):
        captured = []
        handle = m.model.layers[1].self_attn.q_proj.register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
        with torch.no_grad():
            m(input_ids=windows)
        handle.remove()
        x = captured[0].reshape(-1, captured[0].shape[-1])
        return x.T @ x / len(x)

    used = recorded["model.layers.1.self_attn.q_proj"]
    assert torch.allclose(used, q_input_hessian(model), rtol=1e-3, atol=1e-5)  # pruned layer 0 upstream
    assert not torch.allclose(used, q_input_hessian(dense_model), rtol=1e-2, atol=1e-3)  # not the dense one


def test_memoized_attention_gives_the_same_statistics_without_recomputing(tiny):
    model, windows = tiny
    layers = decoder_layers(model)
    layer = layers[0]
    calls = []
    layer.self_attn.q_proj.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        cached = sequential.capture_first_layer_inputs(model, layers, windows, 3)
        forwards = [lambda h=h, kw=kw: layer(h, **kw) for h, kw in cached]
        memo = {}
        gate = {"gate": layer.mlp.gate_proj}
        with sequential._memoized_children(layer, {"self_attn"}, memo, len(forwards)):  # records
            recorded, _ = sequential.collect_input_stats(gate, forwards, want_hessian=True)
        assert len(calls) == len(forwards)
        with sequential._memoized_children(layer, {"self_attn"}, memo, len(forwards)):  # replays
            replayed, _ = sequential.collect_input_stats(gate, forwards, want_hessian=True)
        assert len(calls) == len(forwards)  # attention was not run again
        assert torch.equal(recorded["gate"].hessian, replayed["gate"].hessian)
    assert "forward" not in vars(layer.self_attn)  # the class's forward is back


def test_shortcuts_prune_as_well_as_the_plain_path(tiny, tiny_checkpoint, monkeypatch):
    """End to end the two paths round differently, and a near-tie mask flip cascades along a row, so the
    masks are not compared; the pruned models must be about as close to the dense one. On this tiny model
    the ratio is 1.0 in most runs but kernel-level ulp noise (even on one thread: MKL's results depend on
    buffer alignment) once moved it to 0.68 in a full-suite run, so the bound is a factor of 2 — a gross
    error in the shortcuts; their exactness is tested directly by the memo and dW tests in this file."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_shortcut_and_plain(tiny, tiny_checkpoint, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _compare_shortcut_and_plain(tiny, tiny_checkpoint, monkeypatch):
    model, windows = tiny
    dense, _ = load_model(tiny_checkpoint)
    sequential.prune_model(model, windows, "sparsegpt", parse_pattern("2:4"), batch_size=3, progress=False)
    plain, _ = load_model(tiny_checkpoint)
    monkeypatch.setattr(sequential, "_memoized_children", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(sequential, "_propagate_last_group", lambda layer, cached, *a: sequential._propagate(layer, cached))
    sequential.prune_model(plain, windows, "sparsegpt", parse_pattern("2:4"), batch_size=3, progress=False)
    with torch.no_grad():
        reference = dense(input_ids=windows).logits
        ours = float((model(input_ids=windows).logits - reference).pow(2).mean())
        theirs = float((plain(input_ids=windows).logits - reference).pow(2).mean())
    assert 0.5 <= ours / theirs <= 2.0


def test_delta_propagation_matches_a_forward_pass(tiny, monkeypatch):
    model, windows = tiny
    layers = decoder_layers(model)
    with torch.no_grad():
        cached = sequential.capture_first_layer_inputs(model, layers, windows, 3)
        layer = layers[0]
        down = layer.mlp.down_proj
        forwards = [lambda h=h, kw=kw: layer(h, **kw) for h, kw in cached]
        stats, outputs = sequential.collect_input_stats({"down": down}, forwards, want_hessian=False,
                                                        stop_early=False, keep_inputs=True)
        kept = down.weight.data.clone()
        old = {"down": lambda: kept}  # how LayerHooks.keep_weight hands the weight back
        down.weight.data[:, ::4] = 0  # any change to the last group's weight
        full_pass = sequential._propagate
        monkeypatch.setattr(sequential, "_propagate", lambda *a: pytest.fail("fell back to a full pass"))
        predicted = sequential._propagate_last_group(layer, cached, outputs, stats["down"].inputs, {"down": down}, old)
        exact = full_pass(layer, cached)
    for (p, _), (e, _) in zip(predicted, exact):
        assert torch.allclose(p, e, atol=1e-5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_method_yields_the_pattern_and_reports(tiny, method):
    model, windows = tiny
    reports = sequential.prune_model(model, windows, method, parse_pattern("2:4"), batch_size=3, progress=False)
    assert len(reports) == 14
    for r in reports:
        assert r.zero_fraction == 0.5 and r.relative_error > 0 and r.pattern == "2:4"
    assert {r.error_kind for r in reports} == {"magnitude": {"frobenius"}, "wanda": {"diag_hessian"},
                                               "sparsegpt": {"hessian"}}[method]


def test_sparsegpt_beats_magnitude_on_the_output(tiny, tiny_checkpoint):
    model, windows = tiny
    dense, _ = load_model(tiny_checkpoint)
    with torch.no_grad():
        reference = dense(input_ids=windows).logits
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        m, _ = load_model(tiny_checkpoint)
        sequential.prune_model(m, windows, method, parse_pattern("2:4"), batch_size=3, progress=False)
        with torch.no_grad():
            errors[method] = float((m(input_ids=windows).logits - reference).pow(2).mean())
    assert errors["sparsegpt"] < errors["magnitude"]
