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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        what = "files that sparsetrt did not write"
    raise SparsetrtError(f"output directory {out} already holds {what}; pass --overwrite to replace it or choose another --out")


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


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `out`; on success it replaces `out`, on failure it vanishes."""
    out = Path(out).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise SparsetrtError(f"cannot write output directory {out}: {exc.strerror or exc}; choose another --out") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
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
