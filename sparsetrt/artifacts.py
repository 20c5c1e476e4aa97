"""Stage output directories: refuse to clobber another run, write to a temporary sibling, then rename.

Every stage writes one directory holding a small JSON manifest. The manifest carries the stage name and a
fingerprint of the stage's inputs and settings, which is how a re-run recognises its own directory
(replaced silently) and a different run's directory (refused unless the user passes --overwrite).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sparsetrt.errors import SparsetrtError


def fingerprint(settings: Any) -> str:
    """A short stable hash of JSON-able settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SparsetrtError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparsetrtError(f"{path} is not valid JSON ({exc}); re-create it") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write text atomically: a temporary file in the same folder, then a rename over `path`."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes atomically: a temporary file in the same folder, then a rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 -> what any tool's new file gets
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(root: Path) -> None:
    """Give `root` and everything under it the modes a new file or directory gets from the user's umask (0644 /
    0755 under umask 022): temporary directories and files are created private (0700 / 0600), and the outputs
    renamed out of them would stay so, unreadable to a serving container or a colleague."""
    mask = current_umask()
    for path in [root, *Path(root).rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, 0o777 & ~mask)
        else:
            executable = path.stat().st_mode & 0o111
            os.chmod(path, (0o666 | executable) & ~mask)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_output_dir(out: Path, manifest_name: str, stage: str, run_fingerprint: str, overwrite: bool) -> None:
    """Refuse an output directory that holds something other than this very run, unless overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SparsetrtError(f"output path {out} exists and is not a directory; choose another --out")
    if not out.exists() or overwrite or not any(out.iterdir()):
        return
    manifest = out / manifest_name
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old.get("stage") == stage and old.get("fingerprint") == run_fingerprint:
            return
        kind = {"run": "pipeline"}.get(old.get("stage"), old.get("stage", "unknown"))
        what = f"a different {kind} run (fingerprint {old.get('fingerprint')})"
    else:
        what = f"files that sparsetrt did not write ({_foreign(out)})"
    raise SparsetrtError(f"output directory {out} already holds {what}; pass --overwrite to replace it or choose another --out")


def written_by_sparsetrt(path: Path, depth: int = 3) -> bool:
    """Whether `path` is sparsetrt's own output: a run manifest, one of our temporaries, a folder holding a stage
    manifest (a JSON naming its stage or a sparsetrt format), or a folder of only such things (an artifacts tree
    whose runs sit in sub-folders, like the parity gate's artifacts/ci)."""
    path = Path(path)
    if path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name):
        return True
    if path.is_file():
        return path.suffix == ".json" and path.name.startswith("run") and _is_manifest(path)
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if any(e.suffix == ".json" and e.is_file() and _is_manifest(e) for e in entries):
        return True
    return depth > 0 and bool(entries) and all(written_by_sparsetrt(e, depth - 1) for e in entries)


def _is_manifest(path: Path) -> bool:
    if path.stat().st_size > 1 << 20:
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and ("stage" in data or str(data.get("format", "")).startswith("sparsetrt."))


def _foreign(out: Path) -> str:
    """The entries of `out` that are not sparsetrt's, for the refusal message."""
    names = sorted(e.name for e in Path(out).iterdir() if not written_by_sparsetrt(e, 2))
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") if names else "no stage manifest"


def prepare_output(out: Path, manifest_name: str, stage: str, settings: dict, overwrite: bool,
                   reuse: bool) -> tuple[str, dict | None]:
    """Every stage's preamble: (fingerprint of `settings`, the manifest of an identical finished run when
    `reuse` allows skipping the stage, else None). Refuses, before any work, an output directory that
    cannot be written or holds another run."""
    run_fingerprint = fingerprint(settings)
    ensure_writable_parent(out)
    if reuse and (done := reusable_manifest(out, manifest_name, stage, run_fingerprint)):
        return run_fingerprint, done
    check_output_dir(out, manifest_name, stage, run_fingerprint, overwrite)
    check_replaceable(out)
    return run_fingerprint, None


def reusable_manifest(out: Path, manifest_name: str, stage: str, run_fingerprint: str) -> dict | None:
    """The manifest of a finished identical run in `out` (so the stage can be skipped), else None."""
    path = Path(out) / manifest_name
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    same = manifest.get("stage") == stage and manifest.get("fingerprint") == run_fingerprint
    return manifest if same else None


def _temporary_prefix(out: Path, kind: str) -> str:
    """`.NAME.tmp-PID-` / `.NAME.old-PID-`: beside `out`, hidden, and naming the process that owns it."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporaries of `out` (our own naming) that a process no longer alive left behind: a run killed
    by SIGKILL, or a machine that went down, cannot clean up after itself. Returns what was removed."""
    removed = []
    for path in Path(out).parent.glob(f".{Path(out).name}.*-*-*"):
        kind, _, rest = path.name[len(Path(out).name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def check_replaceable(out: Path) -> None:
    """Fail before the work when an existing `out` could not be replaced at the end (an immutable or otherwise
    locked directory): rename it aside and back, the very operation the finished stage needs."""
    out = Path(out).resolve()
    if not out.exists():
        return
    probe = out.parent / f"{_temporary_prefix(out, 'old')}probe"
    try:
        os.replace(out, probe)
    except OSError as exc:
        raise SparsetrtError(f"output directory {out} cannot be replaced ({exc.strerror or exc}); make it writable "
                             "or choose another --out") from None
    os.replace(probe, out)


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `out`; on success it replaces `out`, on failure (an exception,
    Ctrl-C, SIGTERM through the CLI) it vanishes. A replacement that fails at the end leaves `out` as it was and
    says why."""
    out = Path(out).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out, "tmp"), dir=out.parent))
    except OSError as exc:
        raise SparsetrtError(f"cannot write output directory {out}: {exc.strerror or exc}; choose another --out") from None
    try:
        yield tmp
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out, "old"), dir=out.parent))
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as exc:
        if old is not None:
            if out.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, out)  # put the previous result back
        shutil.rmtree(tmp, ignore_errors=True)
        raise SparsetrtError(f"could not put the finished result at {out} ({exc.strerror or exc}); it was removed and "
                             f"{out} is as it was; make it writable or choose another --out") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_writable_parent(out: Path) -> None:
    """Fail early (before minutes of work) when `out` cannot be created."""
    out = Path(out).resolve()
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SparsetrtError(f"cannot write output directory {out}: {parent} is a file; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SparsetrtError(f"cannot write output directory {out}: {parent} is not writable; choose another --out")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None without the `plots` extra (plots are then skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_report(out: Path, stem: str, report: dict, markdown, plot=None) -> None:
    """A benchmark's three files, each written atomically: STEM.json (the report), STEM.md (markdown(report)) and
    STEM.png (plot(path, report)) when a plot is given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", report)
    write_text_atomic(out / f"{stem}.md", markdown(report))
    if plot is not None:
        plot(out / f"{stem}.png", report)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
