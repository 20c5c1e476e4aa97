"""One generation loop, several backends: the exported decoder with KV cache must generate what PyTorch does."""

import numpy as np
import pytest

from sparsetrt.errors import SparsetrtError
from sparsetrt.runtime.backends import make_runner
from sparsetrt.runtime.backends.base import position_ids_for
from sparsetrt.runtime.backends.onnxrt import OnnxRuntimeRunner
from sparsetrt.runtime.backends.pytorch import TorchRunner
from sparsetrt.runtime.generate import (
    PARITY_PROMPTS,
    Sampling,
    compare_generations,
    encode_prompts,
    generate,
    left_pad,
    select_tokens,
    stop_tokens_of,
)


@pytest.fixture(scope="module")
def runners(pruned_tiny, exported_tiny):
    out, manifest = exported_tiny
    torch_runner = TorchRunner.from_checkpoint(pruned_tiny)
    return torch_runner, OnnxRuntimeRunner(out / manifest["files"]["fp32"]["onnx"])


@pytest.fixture(scope="module")
def prompts(runners):
    return encode_prompts(runners[0].tokenizer, list(PARITY_PROMPTS))


def test_onnxruntime_greedy_matches_pytorch_token_for_token(runners, prompts):
    torch_runner, ort_runner = runners
    sampling = Sampling(max_new_tokens=24, ignore_stop=True)
    expected = generate(torch_runner, prompts, sampling).tokens
    got = generate(ort_runner, prompts, sampling).tokens
    assert compare_generations(expected, got)["generation_identical"] == 1.0
    assert all(len(t) == 24 for t in got)
    assert len({tuple(t) for t in got}) > 1  # different prompts, different continuations: the test can fail


def test_left_padded_batch_generates_what_each_prompt_does_alone(runners, prompts):
    _, ort_runner = runners
    sampling = Sampling(max_new_tokens=12, ignore_stop=True)
    batch = generate(ort_runner, prompts[:4], sampling).tokens
    alone = [generate(ort_runner, [p], sampling).tokens[0] for p in prompts[:4]]
    assert batch == alone


def test_kv_cache_decode_matches_full_recompute(runners, prompts):
    """Logits of the last step computed incrementally (prefill + decode steps) equal one full forward."""
    _, ort_runner = runners
    ids = np.asarray(prompts[1], dtype=np.int64)[None]
    full = ort_runner.logits(ids)[:, -1]
    split = ids.shape[1] - 3
    mask = np.ones((1, split), dtype=np.int64)
    logits, cache = ort_runner.step(ids[:, :split], mask, position_ids_for(mask, split), ort_runner.empty_cache(1))
    for t in range(split, ids.shape[1]):
        mask = np.ones((1, t + 1), dtype=np.int64)
        logits, cache = ort_runner.step(ids[:, t:t + 1], mask, position_ids_for(mask, 1), cache)
    assert cache[0].shape[2] == ids.shape[1]
    np.testing.assert_allclose(logits, full, atol=1e-4)


def test_fp16_graph_runs_with_a_float16_cache(exported_tiny, prompts):
    out, manifest = exported_tiny
    runner = OnnxRuntimeRunner(out / manifest["files"]["fp16"]["onnx"])
    assert runner.cache_dtype == np.float16
    result = generate(runner, prompts[:2], Sampling(max_new_tokens=4, ignore_stop=True))
    assert [len(t) for t in result.tokens] == [4, 4] and result.ttft_s > 0 and len(result.step_s) == 3


def test_sampling_is_seeded_and_respects_top_k_and_top_p(runners, prompts):
    torch_runner, ort_runner = runners
    sampling = Sampling(max_new_tokens=8, temperature=1.0, top_k=5, seed=7, ignore_stop=True)
    a = generate(ort_runner, prompts[:3], sampling).tokens
    assert a == generate(ort_runner, prompts[:3], sampling).tokens == generate(torch_runner, prompts[:3], sampling).tokens
    other = generate(ort_runner, prompts[:3], Sampling(max_new_tokens=8, temperature=1.0, top_k=5, seed=8,
                                                       ignore_stop=True)).tokens
    assert other != a
    greedy = generate(ort_runner, prompts[:3], Sampling(max_new_tokens=8, ignore_stop=True)).tokens
    for narrow in (Sampling(max_new_tokens=8, temperature=1.0, top_k=1, ignore_stop=True),
                   Sampling(max_new_tokens=8, temperature=1.0, top_p=1e-6, ignore_stop=True)):
        assert generate(ort_runner, prompts[:3], narrow).tokens == greedy


def test_select_tokens_draws_only_from_the_allowed_set():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    top_k = select_tokens(logits, Sampling(temperature=1.0, top_k=2), rng)
    assert set(top_k) == {0, 1}
    top_p = select_tokens(logits, Sampling(temperature=1.0, top_p=0.7), rng)  # 0.5 < 0.7: token 1 crosses, kept
    assert set(top_p) == {0, 1}
    assert 0.55 < (top_p == 0).mean() < 0.70  # renormalised: 0.5 / 0.8 = 0.625
    free = select_tokens(logits, Sampling(temperature=1.0), rng)
    assert set(free) == {0, 1, 2, 3}


def test_generation_stops_at_a_stop_token(runners, prompts):
    _, ort_runner = runners
    free = generate(ort_runner, prompts[:2], Sampling(max_new_tokens=10, ignore_stop=True)).tokens
    stop = free[0][3]
    stopped = generate(ort_runner, prompts[:2], Sampling(max_new_tokens=10, stop_tokens=(stop,))).tokens
    first = free[0].index(stop)
    assert stopped[0] == free[0][:first + 1]
    if stop in free[1]:
        assert stopped[1] == free[1][:free[1].index(stop) + 1]
    else:
        assert stopped[1] == free[1]


def test_position_ids_skip_left_padding():
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_for(mask, 3).tolist() == [[0, 1, 2], [0, 0, 0]]
    grown = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
    assert position_ids_for(grown, 1).tolist() == [[3], [1]]


def test_compare_generations_reports_the_first_divergence():
    result = compare_generations([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]])
    assert result["generation_identical"] == 0.5 and result["generation_first_divergence"] == 1
    assert compare_generations([[1, 2]], [[1, 2]])["generation_first_divergence"] is None


def test_bad_settings_and_backends_are_refused(runners, pruned_tiny):
    for bad in (Sampling(max_new_tokens=0), Sampling(temperature=-1), Sampling(top_p=0), Sampling(top_k=-1)):
        with pytest.raises(SparsetrtError):
            bad.validate()
    with pytest.raises(SparsetrtError, match="at least one token"):
        left_pad([[1], []], 0)
    with pytest.raises(SparsetrtError, match="unknown backend"):
        make_runner("tvm", pruned_tiny)
    assert stop_tokens_of(runners[0].tokenizer, runners[0].model.config) == (2,)


@pytest.mark.gpu
def test_semi_structured_linears_compute_what_dense_ones_do(pruned_tiny):
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA GPU with compute capability >= 8.0 (sparse tensor cores)")
    from sparsetrt.runtime.backends.pytorch import to_semi_structured

    dense = TorchRunner.from_checkpoint(pruned_tiny, dtype="float16", device="cuda")
    sparse = TorchRunner.from_checkpoint(pruned_tiny, dtype="float16", device="cuda")
    assert to_semi_structured(sparse.model) == 14  # every pruned Linear of the 2-layer model
    ids = np.arange(3, 35, dtype=np.int64)[None]  # semi-structured kernels need >= 32 rows
    np.testing.assert_allclose(sparse.logits(ids), dense.logits(ids), atol=5e-2)


def test_a_vanishing_temperature_samples_greedily_instead_of_nan():
    # 2.2e-311 (a subnormal a fuzz test sent the server) makes logits / T overflow; its limit is the argmax
    logits = np.array([[0.1, 2.0, -1.0, 1.9], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    rng = np.random.default_rng(0)
    tokens = select_tokens(logits, Sampling(temperature=2.225073858507e-311, top_p=0.9), rng)
    assert tokens[0] == 1 and 0 <= tokens[1] < 4  # the second row divides 0 by T: finite, sampled uniformly
    assert select_tokens(logits[:1], Sampling(temperature=1e-300), rng).tolist() == [1]
