"""`sparsetrt shrink`: checkpoint in, a smaller dense checkpoint and structure.json out (the scores, choices and
slicing are prune/shrink.py's; prune/shrink_stream.py does them one block at a time)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sparsetrt.architectures import auto_config, check_length
from sparsetrt.artifacts import prepare_output, staged_dir, write_json
from sparsetrt.calibration.data import calibration_windows, window_bos
from sparsetrt.calibration.settings import CalibrationSettings
from sparsetrt.devices import resolve_device
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import STRUCTURE_MANIFEST
from sparsetrt.models import load_model, load_tokenizer, resolve_checkpoint, validate_checkpoint
from sparsetrt.prune import shrink_stream
from sparsetrt.prune.settings import ShrinkSettings
from sparsetrt.prune.shrink import build_shrunk, choose, gather, plan, sizes
from sparsetrt.prune.streaming import StreamedModel

MANIFEST_FORMAT = "sparsetrt.structure/1"


def shrink_checkpoint(model: str, out: str | Path, settings: ShrinkSettings,
                      calibration: CalibrationSettings | None = None, *, overwrite: bool = False, reuse: bool = False,
                      trust_remote_code: bool = False, progress: bool = True) -> dict:
    """Shrink `model` into `out` (a checkpoint directory with structure.json); checks everything it can first.

    `settings.stream` scores and slices one decoder block at a time, read from the checkpoint (shrink_stream.py:
    bounded memory, the same tensors); `settings.device` is where that block and its calibration activations live
    (with stream)."""
    calibration = calibration or CalibrationSettings()
    calib, calib_samples, calib_seq_len, seed = (calibration.corpus, calibration.samples, calibration.seq_len,
                                                 calibration.seed)
    stream = settings.stream
    checkpoint = resolve_checkpoint(model, trust_remote_code)
    config = validate_checkpoint(checkpoint, trust_remote_code)

    hf_config = auto_config(checkpoint, trust_remote_code)
    target = plan(hf_config, settings)
    if target.removes_nothing(hf_config):
        raise SparsetrtError("nothing to remove: every size is the model's own; give --mlp, --heads, --kv-heads or "
                             "--layers below it")
    needs_data = settings.importance != "magnitude" or target.layers < hf_config.num_hidden_layers
    device = resolve_device(settings.device)
    if stream:
        shrink_stream.check_streamable(settings, target.layers < hf_config.num_hidden_layers)
    elif device != "cpu":
        raise SparsetrtError(f"shrink --device {device} places the block being scored, which needs --stream (without "
                             "it the whole model runs on the CPU); add --stream")
    if needs_data:
        check_length(config, calib_seq_len, "a calibration window", "--calib-seq-len")
    sizes_and_scores = settings.model_dump(exclude={"stream", "device"})  # where it runs does not change the result
    run_settings = {"model": str(model), **sizes_and_scores, "calib": calib, "calib_samples": calib_samples,
                    "calib_seq_len": calib_seq_len, "seed": seed}
    out = Path(out)
    fingerprint, done = prepare_output(out, STRUCTURE_MANIFEST, "shrink", run_settings, overwrite, reuse)
    if done:
        return done  # an identical run already finished here

    start = time.perf_counter()
    if stream:
        streamed = StreamedModel(checkpoint, device, trust_remote_code=trust_remote_code)
        lm, tokenizer = streamed.model, load_tokenizer(checkpoint, trust_remote_code)
    else:
        lm, tokenizer = load_model(checkpoint, trust_remote_code=trust_remote_code)
    corpus = None
    windows = torch.zeros(0, 2, dtype=torch.long)
    if needs_data:
        windows, corpus, _ = calibration_windows(tokenizer, calib, calib_samples, calib_seq_len, seed)
    torch.manual_seed(seed)
    if stream:
        stats, choice = shrink_stream.choose_streamed(streamed, windows, settings, target, needs_data,
                                                      progress=progress)
    else:
        stats = gather(lm, windows, settings, target) if needs_data else {}
        choice = choose(lm, stats, settings, target)
        shrunk = build_shrunk(lm, choice, target)
    before = sizes(lm.config)
    removed_layers = [i for i in range(lm.config.num_hidden_layers) if i not in choice["layers"]]
    manifest = {
        "format": MANIFEST_FORMAT, "stage": "shrink", "fingerprint": fingerprint, "settings": run_settings,
        "source_checkpoint": str(checkpoint),
        "calibration": None if corpus is None else {"corpus": corpus.description, "samples": calib_samples,
                                                    "seq_len": calib_seq_len, "seed": seed,
                                                    "window_bos": window_bos(tokenizer)},
        "before": before,
        "uniform_widths": "Hugging Face configs hold one width for all layers: every kept layer keeps the same "
                          "number of channels and heads (its own best ones)",
        "removed": {
            "layers": removed_layers,
            "layer_scores": {"cosine_influence": [round(x, 6) for x in stats.get("influence", [])],
                             "skip_loss_increase": [round(x, 6) for x in stats.get("skip_loss", [])]},
            "per_layer": {str(new): {"source_layer": old,
                                     "mlp_channels_removed": lm.config.intermediate_size - len(choice["mlp"][old]),
                                     "query_heads_kept": choice["heads"][old], "kv_heads_kept": choice["kv_heads"][old],
                                     "head_scores": choice["scores"][old]["heads"]}
                          for new, old in enumerate(choice["layers"])},
        },
        "execution": {"device": device, "streamed": stream},
    }
    with staged_dir(out) as tmp:
        if stream:
            config = shrink_stream.write_shrunk_streamed(streamed, choice, target, tmp, progress)
        else:
            shrunk.save_pretrained(tmp)
            config = shrunk.config
        tokenizer.save_pretrained(tmp)
        manifest["after"] = sizes(config)
        manifest["decoder_linear_removed"] = round(1 - manifest["after"]["decoder_linear_params"] /
                                                   before["decoder_linear_params"], 6)
        manifest["timings"] = {"shrink_s": round(time.perf_counter() - start, 3)}
        write_json(tmp / STRUCTURE_MANIFEST, manifest)
    return manifest


def summary_line(m: dict, out: Path) -> str:
    b, a = m["before"], m["after"]
    return (f"shrunk {b['num_hidden_layers']}->{a['num_hidden_layers']} layers, MLP {b['intermediate_size']}->"
            f"{a['intermediate_size']}, heads {b['num_attention_heads']}/{b['num_key_value_heads']}->"
            f"{a['num_attention_heads']}/{a['num_key_value_heads']} ({m['decoder_linear_removed']:.1%} of decoder "
            f"Linear weights removed, {m['settings']['importance']}) -> {out}")
