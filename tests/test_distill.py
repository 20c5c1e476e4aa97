"""Distillation with masks held fixed: the loss, the schedule, resume after a crash, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import settings_refusal

from sparsetrt.errors import SparsetrtError
from sparsetrt.prune.distill import distillation_loss, learning_rate, step_windows
from sparsetrt.prune.distill_stage import distill_checkpoint
from sparsetrt.prune.settings import DistillSettings

SMALL = dict(seq_len=32, batch_size=2, lr=3e-3, warmup_steps=2, checkpoint_every=2)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(2, 5, 11)
    loss, parts = distillation_loss(logits, logits.clone(), temperature=2.0)
    assert abs(float(loss)) < 1e-6 and parts["kl"] < 1e-6
    loss, _ = distillation_loss(logits, torch.randn(2, 5, 11), temperature=2.0)
    assert float(loss) > 0.01


def test_hidden_term_adds_only_when_weighted():
    s, t = torch.randn(1, 3, 7), torch.randn(1, 3, 7)
    hidden_s, hidden_t = [torch.zeros(1, 3, 4), torch.randn(1, 3, 4)], [torch.zeros(1, 3, 4), torch.randn(1, 3, 4)]
    plain, _ = distillation_loss(s, t, 1.0, hidden_s, hidden_t, hidden_weight=0.0)
    weighted, parts = distillation_loss(s, t, 1.0, hidden_s, hidden_t, hidden_weight=0.5)
    assert parts["hidden"] > 0
    assert float(weighted) == pytest.approx(float(plain) + 0.5 * parts["hidden"], rel=1e-5)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    s = DistillSettings(lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    rates = [learning_rate(i, 20, s) for i in range(21)]
    assert rates[0] == pytest.approx(2.5e-4) and rates[3] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[20] == pytest.approx(1e-4)


def test_step_windows_are_a_function_of_the_step():
    tokens = torch.arange(1000)
    s = DistillSettings(seq_len=16, batch_size=3, seed=1)
    assert torch.equal(step_windows(tokens, 5, 0, s), step_windows(tokens, 5, 0, s))
    assert not torch.equal(step_windows(tokens, 5, 0, s), step_windows(tokens, 6, 0, s))
    with pytest.raises(SparsetrtError, match="fewer than one window"):
        step_windows(torch.arange(10), 0, 0, s)


def _pattern_ok(out, pruned):
    from safetensors.torch import load_file

    before, after = load_file(str(pruned / "model.safetensors")), load_file(str(out / "model.safetensors"))
    manifest = json.loads((pruned / "sparsity.json").read_text())
    changed = False
    for name in manifest["modules"]:
        w0, w1 = before[f"{name}.weight"], after[f"{name}.weight"]
        assert torch.all(w1[w0 == 0] == 0), f"{name} lost a zero"
        changed |= not torch.equal(w0, w1)
    return changed


def test_distill_keeps_every_zero_lowers_the_loss_and_writes_a_loadable_checkpoint(tiny_checkpoint, pruned_tiny,
                                                                                      calib_file, tmp_path):
    out = tmp_path / "distilled"
    m = distill_checkpoint(str(tiny_checkpoint), pruned_tiny, out, data=str(calib_file),
                           settings=DistillSettings(steps=12, **SMALL), progress=False)
    assert m["steps"] == 12 and m["verification"]["ok"] and m["stopped_early"] is None
    assert _pattern_ok(out, pruned_tiny)  # weights moved, zeros stayed
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # the same batches without learning (lr ~ 0): training must have lowered the loss on the later steps
    still = distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "still", data=str(calib_file),
                               settings=DistillSettings(steps=12, **{**SMALL, "lr": 1e-12}), progress=False)
    frozen = [json.loads(line) for line in (tmp_path / "still" / "train_log.jsonl").read_text().splitlines()]
    assert frozen[0]["loss"] == pytest.approx(log[0]["loss"])
    assert sum(r["loss"] for r in log[6:]) < 0.95 * sum(r["loss"] for r in frozen[6:])
    assert still["steps"] == 12
    assert [r["step"] for r in log] == list(range(1, 13)) and all(r["tokens_per_s"] > 0 for r in log)
    assert (out / "loss.png").is_file() and not out.with_name("distilled.resume").exists()
    assert json.loads((out / "sparsity.json").read_text())["distilled"]["steps"] == 12

    from sparsetrt.models import load_model

    model, _ = load_model(out)
    assert model(input_ids=torch.tensor([[1, 5, 7]])).logits.shape[-1] == model.config.vocab_size


def test_a_streamed_teacher_trains_the_same_student(tiny_checkpoint, pruned_tiny, calib_file, tmp_path):
    """--stream-teacher reads the teacher from its checkpoint block by block: the same losses and the same student
    tensors, bit for bit, and the same run fingerprint (it changes where the teacher lives, not what it computes)."""
    from safetensors.torch import load_file

    runs = {stream: distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / f"stream-{stream}",
                                       data=str(calib_file), settings=DistillSettings(steps=3, **SMALL),
                                       progress=False, stream_teacher=stream) for stream in (False, True)}
    assert runs[True]["teacher_streamed"] and not runs[False]["teacher_streamed"]
    assert runs[True]["fingerprint"] == runs[False]["fingerprint"]
    logs = [(tmp_path / f"stream-{s}" / "train_log.jsonl").read_text().splitlines() for s in (False, True)]
    assert [json.loads(x)["loss"] for x in logs[0]] == [json.loads(x)["loss"] for x in logs[1]]
    a, b = (load_file(str(tmp_path / f"stream-{s}" / "model.safetensors")) for s in (False, True))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_crashed_run_resumes_to_the_same_losses(tiny_checkpoint, pruned_tiny, calib_file, tmp_path, monkeypatch):
    settings = DistillSettings(steps=6, **SMALL)
    whole = distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "whole", data=str(calib_file),
                               settings=settings, progress=False)

    import sparsetrt.prune.distill_stage as stage

    real_step = stage.train_step

    def crash_at_step_5(*args, **kwargs):
        if args[4] == 4:  # step index 4: the state saved after step 4 (checkpoint_every=2) survives the crash
            raise RuntimeError("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(stage, "train_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="killed"):
        distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "split", data=str(calib_file),
                           settings=settings, progress=False)
    assert (tmp_path / "split.resume" / "state.pt").is_file() and not (tmp_path / "split").exists()
    monkeypatch.setattr(stage, "train_step", real_step)
    resumed = distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "split", data=str(calib_file),
                                 settings=settings, progress=False)
    log_whole = [json.loads(x) for x in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    log_split = [json.loads(x) for x in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_split] == pytest.approx([r["loss"] for r in log_whole], rel=1e-4)
    assert resumed["loss"]["last"] == pytest.approx(whole["loss"]["last"], rel=1e-4)


def test_stop_after_leaves_a_resume_point(tiny_checkpoint, pruned_tiny, calib_file, tmp_path):
    settings = DistillSettings(steps=4, **SMALL)
    first = distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "d", data=str(calib_file),
                               settings=settings, progress=False, stop_after=3)
    assert first["steps_done"] == 3 and not (tmp_path / "d").exists()
    done = distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "d", data=str(calib_file),
                              settings=settings, progress=False)
    assert done["steps"] == 4
    # other settings against the saved state: refused, not silently mixed
    distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "e", data=str(calib_file),
                       settings=settings, progress=False, stop_after=1)
    with pytest.raises(SparsetrtError, match="different distillation run"):
        distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "e", data=str(calib_file),
                           settings=DistillSettings(steps=5, **SMALL), progress=False)


def test_the_evaluation_split_and_bad_students_are_refused(tiny_checkpoint, pruned_tiny, calib_file, tmp_path,
                                                            monkeypatch):
    shared = tmp_path / "data" / "wikitext-2"
    shared.mkdir(parents=True)
    (shared / "valid.txt").write_text(calib_file.read_text())
    (shared / "test.txt").write_text(calib_file.read_text())
    monkeypatch.setenv("SPARSETRT_DATA", str(tmp_path / "data"))
    with pytest.raises(SparsetrtError, match="evaluation split"):
        distill_checkpoint(str(tiny_checkpoint), pruned_tiny, tmp_path / "x", data=str(shared / "test.txt"),
                           settings=DistillSettings(steps=1, **SMALL), progress=False)
    with pytest.raises(SparsetrtError, match="sparsity.json"):
        distill_checkpoint(str(tiny_checkpoint), tiny_checkpoint, tmp_path / "y", data=str(calib_file),
                           settings=DistillSettings(steps=1, **SMALL), progress=False)
    assert settings_refusal(DistillSettings, seq_len=0) == "--seq-len must be >= 2, not 0"
