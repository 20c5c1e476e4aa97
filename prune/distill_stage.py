"""`sparsetrt distill`: teacher + pruned student + calibration text -> a recovered student with the same zeros.

The output is a loadable HF checkpoint with the student's sparsity.json (so export/quantize take it like any
pruned checkpoint), distill.json (settings, losses, timings, mask verification), train_log.jsonl (one line per
step) and loss.png. Training state is saved every `checkpoint_every` steps and on Ctrl-C into `<out>.resume/`;
running the same command again resumes from it. The evaluation split is refused as training data.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparsetrt.artifacts import prepare_output, pyplot, read_json, save_figure, staged_dir, write_json
from sparsetrt.calibration.data import find_shared_wikitext, load_corpus, tokenize_corpus, window_bos
from sparsetrt.checkpoint import streamed_forward_model
from sparsetrt.errors import SparsetrtError
from sparsetrt.layout import DISTILL_MANIFEST, SPARSITY_MANIFEST, STRUCTURE_MANIFEST
from sparsetrt.models import load_model, resolve_checkpoint, validate_checkpoint
from sparsetrt.prune.distill import (
    apply_masks,
    mask_violations,
    masks_of,
    train_step,
    trainable_parameters,
)
from sparsetrt.prune.settings import DistillSettings
from sparsetrt.prune.verify import load_manifest, verify_checkpoint

STATE_FILE = "state.pt"
STATE_SIDECAR = "state.json"  # fingerprint and progress of state.pt, readable without loading it


def distill_checkpoint(teacher: str, student: str | Path, out: str | Path, data: str = "auto",
                       settings: DistillSettings | None = None, overwrite: bool = False, reuse: bool = False,
                       progress: bool = True, stop_after: int | None = None, stream_teacher: bool = False) -> dict:
    """Distill `teacher` into the `student` directory (pruned: its zeros held fixed; or shrunk: dense and smaller);
    write the result into `out`.

    `stop_after` ends the run after that many steps of this invocation, leaving a resume state, as a kill
    would (used by the tests and by anyone splitting a run over sessions). `stream_teacher` keeps the teacher in
    its checkpoint, read block by block at every forward (streamed_forward_model): the same losses and student, the
    teacher's memory traded for a read of it per micro-batch, so it stays out of the run's fingerprint."""
    settings = settings or DistillSettings()
    student = Path(student)
    manifest_name, sparsity = student_manifest(student)
    refuse_evaluation_split(data)
    corpus = load_corpus(data, "valid")
    run_settings = {"teacher": str(teacher), "student": str(student), "student_fingerprint": sparsity.get("fingerprint"),
                    "data": corpus.description, **settings.to_json()}
    if settings.steps:  # a fixed horizon: the budget only decides when to stop, not what a step computes
        run_settings.pop("max_minutes")
    out = Path(out)
    run_fingerprint, done = prepare_output(out, DISTILL_MANIFEST, "distill", run_settings, overwrite, reuse)
    if done:
        return done
    resume_dir = out.with_name(out.name + ".resume")
    if overwrite and resume_dir.exists() and not _state_matches(resume_dir, run_fingerprint):
        shutil.rmtree(resume_dir)  # the state of another run; a matching one is always resumed

    started = time.perf_counter()
    teacher_lm = load_teacher(resolve_checkpoint(teacher), stream_teacher)
    student_lm, tokenizer = load_model(student)
    check_compatible(teacher_lm, student_lm, settings.hidden_weight)
    teacher_lm.eval()
    student_lm.train()
    tokens, bos = tokenize_corpus(tokenizer, corpus), window_bos(tokenizer)
    masks = masks_of(student_lm, sparsity.get("modules", {}))  # a shrunk, dense student holds no zeros
    params = trainable_parameters(student_lm, settings.train_embeddings)
    for p in teacher_lm.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    state = load_state(resume_dir, run_fingerprint)
    log: list[dict] = []
    total = settings.steps
    if state:
        student_lm.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        log, total = state["log"], state["total_steps"]
        print(f"resuming {out} from step {len(log)} of {total} ({resume_dir})", flush=True)
    budget_s = settings.max_minutes * 60
    deadline = started + budget_s
    step_tokens = settings.batch_size * settings.grad_accum * settings.seq_len
    bar = _bar(total or None, len(log), progress)
    stopped, done_here = None, 0
    try:
        while total == 0 or len(log) < total:
            step = len(log)
            t0 = time.perf_counter()
            record = train_step(student_lm, teacher_lm, optimizer, tokens, step, max(total, step + 1), masks, settings,
                                bos)
            seconds = time.perf_counter() - t0
            record.update(seconds=round(seconds, 3), tokens_per_s=round(step_tokens / seconds, 1))
            log.append(record)
            done_here += 1
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            if total == 0 and done_here == 3:  # the horizon: what fits in the budget at the measured speed
                total = fit_steps(log[-2:], deadline - time.perf_counter(), len(log), settings)
                bar.total = total
                bar.refresh()
            if len(log) % settings.checkpoint_every == 0 and len(log) < (total or len(log) + 1):
                save_state(resume_dir, run_fingerprint, student_lm, optimizer, log, total or len(log))
            if stop_after is not None and done_here >= stop_after:
                stopped = "stop_after"
                break
            if time.perf_counter() + seconds > deadline:
                stopped = "time budget"
                break
    except KeyboardInterrupt:
        save_state(resume_dir, run_fingerprint, student_lm, optimizer, log, total or len(log))
        bar.close()
        raise SparsetrtError(f"distillation interrupted at step {len(log)}; run the same command again to resume "
                             f"from {resume_dir}") from None
    bar.close()
    if stopped == "stop_after":
        save_state(resume_dir, run_fingerprint, student_lm, optimizer, log, total or len(log))
        return {"stopped": stopped, "steps_done": len(log), "total_steps": total, "resume_dir": str(resume_dir)}

    apply_masks(student_lm, masks)
    violations = mask_violations(student_lm, masks)
    if violations:
        raise SparsetrtError(f"distillation moved pruned weights in {violations[:3]}; nothing was written")
    manifest = {
        "format": "sparsetrt.distill/1", "stage": "distill", "fingerprint": run_fingerprint,
        "settings": run_settings, "max_minutes": settings.max_minutes,
        "teacher": str(teacher), "teacher_streamed": stream_teacher, "student": str(student),
        "data": corpus.description, "data_tokens": len(tokens),
        "steps": len(log), "planned_steps": total,
        "stopped_early": None if len(log) >= total else f"{stopped} at step {len(log)} of {total}",
        "tokens_seen": len(log) * step_tokens,
        "loss": {"first": log[0]["loss"], "last": log[-1]["loss"],
                 "last_10_mean": sum(r["loss"] for r in log[-10:]) / len(log[-10:])},
        "train_seconds": round(sum(r["seconds"] for r in log), 1),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    student_lm.eval()
    with staged_dir(out) as tmp:
        student_lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / manifest_name, {**sparsity, "distilled": {"teacher": str(teacher), "steps": len(log),
                                                                   "distill_fingerprint": run_fingerprint}})
        if manifest_name == SPARSITY_MANIFEST:
            verification = verify_checkpoint(tmp, sparsity)
            manifest["verification"] = verification.to_json()
            verification.raise_if_failed()
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        write_json(tmp / DISTILL_MANIFEST, manifest)
        plot_loss(tmp / "loss.png", log, title=f"distillation: {len(log)} steps, {manifest['tokens_seen']:,} tokens")
    shutil.rmtree(resume_dir, ignore_errors=True)
    return manifest


def summary_line(m: dict, out: Path) -> str:
    """What `sparsetrt distill` prints when it is done."""
    early = f" (stopped early: {m['stopped_early']})" if m["stopped_early"] else ""
    return (f"distilled {m['steps']} steps, {m['tokens_seen']:,} tokens, loss {m['loss']['first']:.4f} -> "
            f"{m['loss']['last_10_mean']:.4f} (mean of the last 10), {m['train_seconds']:.0f} s{early}; zeros "
            f"verified on {m['verification']['checked']} modules -> {out}")


def load_teacher(checkpoint: Path, stream: bool):
    """The teacher in fp32: loaded whole, or (stream) left in its checkpoint and read block by block per forward."""
    if not stream:
        return load_model(checkpoint)[0]
    validate_checkpoint(checkpoint)
    return streamed_forward_model(checkpoint)


def fit_steps(recent: list[dict], remaining_s: float, done: int, settings: DistillSettings) -> int:
    """Total steps so the run ends inside the budget at the speed of the latest steps (the first is warm-up);
    5 % and a minute are held back for saving."""
    per_step = max(r["seconds"] for r in recent)
    spare = max(0.0, remaining_s * 0.95 - 60)
    return max(done, done + int(spare / per_step))


def refuse_evaluation_split(data: str) -> None:
    """The evaluation text must never be trained on: refuse WikiText-2 test, the split perplexity is taken on."""
    if data == "auto":
        return  # auto is the calibration split
    shared = find_shared_wikitext()
    path = Path(data).expanduser()
    if shared is not None and path.exists() and path.resolve() == (shared / "test.txt").resolve():
        raise SparsetrtError(f"refusing to train on the evaluation split ({path}); distill on calibration text "
                             "such as WikiText-2 valid (--data auto)")


def student_manifest(student: Path) -> tuple[str, dict]:
    """(file name, manifest) of the student: a pruned one's sparsity.json (its zeros are held fixed), else a shrunk
    one's structure.json (`sparsetrt shrink`: dense, smaller than the teacher)."""
    if not (student / SPARSITY_MANIFEST).is_file() and (student / STRUCTURE_MANIFEST).is_file():
        return STRUCTURE_MANIFEST, read_json(student / STRUCTURE_MANIFEST)
    return SPARSITY_MANIFEST, load_manifest(student)


def check_compatible(teacher, student, hidden_weight: float) -> None:
    """The student must read and write what the teacher does (vocabulary, hidden size). A pruned student has the
    teacher's shapes exactly; a shrunk one (fewer channels, heads or blocks) may differ inside the blocks, and then
    the hidden-state term needs the same number of blocks to pair them."""
    t, s = teacher.config, student.config
    if (t.vocab_size, t.hidden_size) != (s.vocab_size, s.hidden_size):
        raise SparsetrtError(f"teacher and student differ in vocabulary or hidden size ({t.vocab_size}/{t.hidden_size} "
                             f"vs {s.vocab_size}/{s.hidden_size}); the teacher must be the model the student came from")
    if hidden_weight > 0 and t.num_hidden_layers != s.num_hidden_layers:
        raise SparsetrtError(f"--hidden-weight pairs the blocks' hidden states, but the student has "
                             f"{s.num_hidden_layers} blocks and the teacher {t.num_hidden_layers}; use --hidden-weight 0")
    shrunk = any(getattr(t, k) != getattr(s, k) for k in ("intermediate_size", "num_attention_heads",
                                                          "num_key_value_heads", "num_hidden_layers"))
    if not shrunk:
        tw, sw = teacher.state_dict(), student.state_dict()
        mismatched = [k for k in sw if k in tw and tw[k].shape != sw[k].shape] + [k for k in sw if k not in tw]
        if mismatched:
            raise SparsetrtError(f"teacher and student differ at {mismatched[:3]}; the teacher must be the dense model "
                                 "the student was pruned from")


def save_state(resume_dir: Path, run_fingerprint: str, student, optimizer, log: list[dict], total: int) -> None:
    """Training state, written to a temporary file and renamed (a kill mid-save keeps the previous state)."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    tmp = resume_dir / (STATE_FILE + ".tmp")
    torch.save({"fingerprint": run_fingerprint, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                "log": log, "total_steps": total}, tmp)
    tmp.replace(resume_dir / STATE_FILE)
    write_json(resume_dir / STATE_SIDECAR, {"fingerprint": run_fingerprint, "steps_done": len(log), "total_steps": total})


def _state_matches(resume_dir: Path, run_fingerprint: str) -> bool:
    """From the small sidecar, without loading the weights and optimizer moments."""
    sidecar = resume_dir / STATE_SIDECAR
    return sidecar.is_file() and read_json(sidecar).get("fingerprint") == run_fingerprint


def load_state(resume_dir: Path, run_fingerprint: str) -> dict | None:
    path = resume_dir / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != run_fingerprint:
        raise SparsetrtError(f"{resume_dir} holds the state of a different distillation run; pass --overwrite to "
                             "discard it, or the settings of that run to resume it")
    return state


def plot_loss(path: Path, log: list[dict], title: str) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in log]
    ax.plot(steps, [r["loss"] for r in log], lw=0.8, label="loss")
    if any("hidden" in r for r in log):
        ax.plot(steps, [r["kl"] for r in log], lw=0.8, label="KL")
    ax.set(xlabel="optimizer step", ylabel="distillation loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def _bar(total: int | None, done: int, enabled: bool):
    return tqdm(total=total, initial=done, desc="distill", unit="step", disable=not enabled, leave=False)
