"""Shared fixtures: tiny random-weight Llama checkpoints with a real (tiny) tokenizer, built in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


def corpus_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)[:40])


def make_tokenizer(directory: Path, add_bos: bool = False, vocab_size: int = 256):
    """A small byte-level BPE tokenizer trained on the test corpus; add_bos: it puts <s> before every text, as
    Gemma's and Llama 2's do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator([corpus_text()], trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)
    return fast


def make_tiny_llama(directory: Path, hidden: int = 64, intermediate: int = 128, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, seed: int = 0, tied: bool = True) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=512, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random init is ~N(0, 0.02); spread it so layers differ in interesting ways
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    model.eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(corpus_text())
    return path


@pytest.fixture(scope="session")
def pruned_tiny(tiny_checkpoint, calib_file, tmp_path_factory) -> Path:
    from sparsetrt.calibration.settings import CalibrationSettings
    from sparsetrt.prune.settings import PruneSettings
    from sparsetrt.prune.stage import prune_checkpoint

    out = tmp_path_factory.mktemp("pruned") / "sparsegpt"
    prune_checkpoint(str(tiny_checkpoint), out, PruneSettings(method="sparsegpt", pattern="2:4"),
                     CalibrationSettings(corpus=str(calib_file), samples=8, seq_len=64), progress=False)
    return out


@pytest.fixture(scope="session")
def exported_tiny(pruned_tiny, tmp_path_factory) -> tuple[Path, dict]:
    """pruned_tiny exported to ONNX (fp32 + fp16 decoders with KV cache) and its export.json."""
    from sparsetrt.export.stage import export_checkpoint

    out = tmp_path_factory.mktemp("onnx") / "onnx"
    return out, export_checkpoint(pruned_tiny, out)


def settings_refusal(model, **data) -> str:
    """The one line a settings model refuses `data` with, its options named as on the command line."""
    from sparsetrt.settings import SettingsError, checked, flag_of, walk

    fields = dict(walk(model))
    try:
        checked(model, data, lambda path: flag_of(path, fields[path]) if path in fields else "")
    except SettingsError as exc:
        return str(exc)
    raise AssertionError(f"{model.__name__} accepted {data}")
