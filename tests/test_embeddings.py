"""Weight-only quantization of the vocabulary tables (embedding, lm_head) on tiny random Llamas."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama, settings_refusal

from sparsetrt.errors import SparsetrtError
from sparsetrt.export import qmath
from sparsetrt.export.embeddings import lm_head_hessian, quantize_embeddings, vocabulary_tables
from sparsetrt.export.settings import QuantSettings
from sparsetrt.models import load_model


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def tiny(request, tmp_path):
    path = make_tiny_llama(tmp_path / "m", hidden=128, intermediate=256, tied=request.param)
    return load_model(path)[0], request.param


def windows(model, count=4, seq=32):
    return torch.randint(3, model.config.vocab_size, (count, seq), generator=torch.Generator().manual_seed(0))


def test_tables_are_found_once_per_tensor(tiny):
    model, tied = tiny
    tables = vocabulary_tables(model)
    if tied:
        assert tables == {"lm_head": ["lm_head", "model.embed_tokens"]}
    else:
        assert tables == {"lm_head": ["lm_head"], "model.embed_tokens": ["model.embed_tokens"]}


def test_int8_tables_round_per_row_and_keep_the_tie(tiny):
    model, tied = tiny
    before = {n: model.get_submodule(n).weight.detach().clone() for n in vocabulary_tables(model)}
    tables = quantize_embeddings(model, QuantSettings(precision="int4", embeddings="int8"), windows(model))
    assert set(tables) == set(before)
    for name, lq in tables.items():
        after = model.get_submodule(name).weight.detach()
        step = lq.scale[:, None]
        assert lq.block is None and lq.q.dtype == torch.int8 and int(lq.q.abs().max()) <= qmath.INT8_MAX
        assert torch.all((after - before[name]).abs() <= step / 2 + 1e-6)  # round to nearest, no clipping
        assert torch.equal(after, qmath.dequantize(lq.q, lq.scale))
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_int4_gptq_table_beats_round_to_nearest_on_the_logits(tmp_path):
    model = load_model(make_tiny_llama(tmp_path / "m", hidden=128, intermediate=256))[0]
    calib = windows(model, count=8)
    hessian = lm_head_hessian(model, calib, batch_size=4)
    original = model.lm_head.weight.detach().clone()

    def logit_error(settings):
        model.lm_head.weight.data.copy_(original)
        lq = quantize_embeddings(model, settings, calib)["lm_head"]
        assert lq.block == 64 and int(lq.q.min()) >= qmath.INT4_MIN and int(lq.q.max()) <= qmath.INT4_MAX
        diff = model.lm_head.weight.detach().float() - original
        return float(((diff @ hessian) * diff).sum())  # ||(W - W') X||² / n

    rtn = logit_error(QuantSettings(precision="int4", embeddings="int4", block_size=64, gptq="off"))
    gptq = logit_error(QuantSettings(precision="int4", embeddings="int4", block_size=64, gptq="on"))
    assert gptq < 0.9 * rtn


def test_float_tables_stay_and_bad_block_sizes_are_named(tmp_path):
    model = load_model(make_tiny_llama(tmp_path / "m", hidden=96, intermediate=192, heads=4))[0]
    before = model.lm_head.weight.detach().clone()
    assert quantize_embeddings(model, QuantSettings(embeddings="float"), windows(model)) == {}
    assert torch.equal(model.lm_head.weight, before)
    with pytest.raises(SparsetrtError, match="vocabulary table.*--embeddings int8"):
        quantize_embeddings(model, QuantSettings(precision="int8", embeddings="int4", block_size=64), windows(model))
    assert settings_refusal(QuantSettings, embeddings="int2").startswith("--embeddings must be one of")
