"""podman for the image tests: its own storage and settings under one scratch directory, a base image made from
Debian's packages (docker/base.sh), and a clean-up that leaves nothing behind but the cached base tarball."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_TAG = "localhost/sparsetrt-base:bookworm"
BASE_TARBALL = "debian-bookworm-python3.tar"  # what docker/base.sh caches in its CACHE_DIR

# runc: crun refuses this kernel's hybrid cgroup layout. The ulimits: podman's defaults exceed what root without
# CAP_SYS_RESOURCE may set here. overlay: vfs copies the whole image for every container (about 20 s per run).
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}/storage"
runroot = "{root}/run"
"""


def why_not_here() -> str | None:
    """Why this machine cannot build and run images with podman, or None when it can (as far as can be told
    without trying)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "building and running images here needs root (rootless podman needs subordinate uid ranges)"
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (`make docker-tools` installs them with apt-get as root)"
    return None


class Podman:
    """`podman` with its settings and storage under `root` (removed by clean_up)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "containers.conf").write_text(CONTAINERS_CONF)
        (root / "storage.conf").write_text(STORAGE_CONF.format(root=root))
        self.env = {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(root / "storage.conf")}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run_checked(["podman", *args], env=self.env, timeout=timeout, check=check)

    def make_base(self, cache: Path) -> str:
        """The local Debian base image (its root filesystem made once with mmdebstrap, cached in `cache`)."""
        run_script("base.sh", "podman", str(cache), BASE_TAG, env=self.env)
        return BASE_TAG

    def build(self, dockerfile: str, tag: str, target: str | None = None) -> None:
        """Build from the repository (the context), never pulling: the base is the local one."""
        # no intermediate layers: nothing here reuses them, and committing each step costs a third of the time
        self("build", "--pull=never", "--layers=false", "--format", "docker", "--build-arg", f"BASE={BASE_TAG}",
             "-f", str(ROOT / "docker" / dockerfile), *(["--target", target] if target else []), "-t", tag, str(ROOT))

    def importable(self, image: str, *modules: str) -> list[str]:
        """Which of `modules` the image's Python can import (its entrypoint bypassed)."""
        code = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
        return self("run", "--rm", "--entrypoint", "python3", image, "-c", code, *modules).stdout.split()

    def image_bytes(self, tag: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())

    def mounts(self) -> list[str]:
        """Mount points under this podman's scratch directory that are still mounted."""
        with open("/proc/mounts") as mounts:
            return [line.split()[1] for line in mounts if line.split()[1].startswith(str(self.root))]

    def clean_up(self) -> None:
        """Every container and image, then the storage itself and the settings."""
        if self.root.exists():
            self("rm", "--all", "--force", "--time", "0", check=False)
            self("rmi", "--all", "--force", check=False)
            self("system", "reset", "--force", check=False)
            shutil.rmtree(self.root, ignore_errors=True)


def run_script(name: str, *args: str, env: dict | None = None) -> str:
    """docker/NAME with ARGS; its output."""
    return run_checked(["sh", str(ROOT / "docker" / name), *args], env=env, timeout=900).stdout


def run_checked(command: list[str], env: dict | None, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """`command`'s result; where it fails (and `check`), an AssertionError that shows its output."""
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
