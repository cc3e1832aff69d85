"""Compile a C source of moebench/kernels/csrc once with the system compiler and load it through ctypes.

    build = load("peer", {"peer_gather_dot": [ptr] * 4 + [i64] * 3 + [c_int]})
    build.dll        # the loaded library, or None
    build.status     # "built", or "unavailable: <reason>" (the compiler's first error lines, ...)

The sources ship as package data (moebench/kernels/csrc/*.c). The shared object lands in a per-user cache
directory, $XDG_CACHE_HOME/moebench/native or ~/.cache/moebench/native (MOEBENCH_NATIVE_CACHE overrides
it), named by a hash of the source, the compiler, the flags and the host: -march=native code must not
travel to another CPU. It is compiled under a temporary name (removed if the build fails or is
interrupted, or by the next build if its process was killed) and renamed into place, so no process
loads half a file.

Loading a shared object runs its code, so the cache must hold only what this user built. The folder is
created 0700; before anything is loaded the folder must be owned by this user and not writable by group
or others, its parents owned by this user or root and not writable by others unless sticky (as /tmp),
and the file a regular file owned by this user and not writable by group or others. An unsafe folder
(the default or MOEBENCH_NATIVE_CACHE alike) makes the kernels unavailable with the reason; an unsafe
file in a safe folder is replaced by a fresh build.

Nothing here raises: a missing or failing compiler, MOEBENCH_NATIVE=0 or an unsafe cache gives a Build
without a dll and with the reason, and callers fall back to torch (torch.compile's CPU backend needs a
compiler too). CC names another compiler.

Built with -fopenmp, a library needs libgomp.so.1, and the loader hands it the one torch already
loaded (same soname): `#pragma omp parallel` regions then run on torch's own worker threads. Threads of
our own would compete with torch's workers, which spin for a while after each parallel region
(measured for PEER's top-k: 8 ms slower per forward with pthreads).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# -Wno-psabi: gcc's note that a 32-byte vector argument changes the ABI when AVX is off; it concerns only
# static inline helpers here, which no other object calls.
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fopenmp", "-Wall", "-Wextra", "-Wno-psabi"]  # no -ffast-math
MAX_THREADS = 64  # the C sources' job arrays
SOURCES = Path(__file__).resolve().parent / "csrc"
ERROR_LINES = 8  # of the compiler's stderr kept in a reason


@dataclass(frozen=True)
class Build:
    """The outcome of load(): the library, or None and why not; `log` is the compiler's stderr when this
    process compiled the library (its warnings; empty when none or when it came from the cache)."""

    dll: ctypes.CDLL | None
    reason: str | None = None
    log: str = ""

    @property
    def status(self) -> str:
        return "built" if self.dll is not None else f"unavailable: {self.reason}"


def cache_dir() -> tuple[Path, str]:
    """(the folder shared objects are cached in, how it was chosen)."""
    override = os.environ.get("MOEBENCH_NATIVE_CACHE")
    if override:
        return Path(override), "MOEBENCH_NATIVE_CACHE"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moebench" / "native", "the default cache folder"


def unsafe_reason(path: Path, *, is_dir: bool) -> str | None:
    """Why code in `path` (a folder, or a file inside a checked folder) could be someone else's, or None."""
    st = os.lstat(path)
    kind = "folder" if is_dir else "file"
    if is_dir and not stat.S_ISDIR(st.st_mode) or not is_dir and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular {kind} (a link or another kind of file)"
    if st.st_uid != os.getuid():
        return f"{kind} {path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"{kind} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def unsafe_parent(path: Path) -> str | None:
    """Why a parent of `path` lets another user replace it (rename or swap the folder), or None."""
    for parent in path.resolve().parents:
        st = os.stat(parent)
        if st.st_uid not in (0, os.getuid()):
            return f"parent folder {parent} is owned by uid {st.st_uid}, not by this user or root"
        if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
            return f"parent folder {parent} is writable by others without the sticky bit"
    return None


def safe_cache_dir() -> tuple[Path | None, str | None]:
    """(the cache folder, created 0700 where missing, None) or (None, why it may not be used)."""
    try:
        folder, origin = cache_dir()
    except RuntimeError as exc:  # no HOME and no passwd entry: Path.home() has nothing to say
        return None, f"no cache folder for compiled kernels ({exc}); set MOEBENCH_NATIVE_CACHE"
    try:
        with contextlib.suppress(FileExistsError):  # a file of that name: unsafe_reason says it is no folder
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = unsafe_reason(folder, is_dir=True)  # the folder itself may not be a link
        if not problem:
            # From here on every path is the resolved one, so no link on the way (which a user who may
            # write its folder could swap between this check and the load) is followed again.
            folder = Path(os.path.realpath(folder))
            problem = unsafe_reason(folder, is_dir=True) or unsafe_parent(folder)
    except OSError as exc:
        problem = f"cannot create {folder}: {exc}"
    if problem:
        return None, f"refusing to load code from {origin} ({problem})"
    return folder, None


def library_path(folder: Path, name: str, source: bytes, compiler: str, flags: list[str]) -> Path:
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), *(f.encode() for f in flags),
                                     socket.gethostname().encode(), platform.machine().encode()]))
    return folder / f"{name}_{key.hexdigest()[:16]}.so"


def compiler_command() -> list[str]:
    """CC split as a shell would (CC="ccache gcc" works; one that does not split is taken whole), else ["cc"]."""
    cc = os.environ.get("CC") or ""
    try:
        return shlex.split(cc) or ["cc"]
    except ValueError:  # an unbalanced quote: then no such program is found, and the reason says so
        return [cc]


def remove_stale_temporaries(lib: Path) -> None:
    """Delete lib's temporaries (lib.<pid>) whose building process is gone: killed outright (SIGKILL, power
    loss), it could not remove its own."""
    for tmp in lib.parent.glob(f"{lib.name}.*"):
        pid = tmp.name.rsplit(".", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's process
        return True
    return True


def compile_library(command: list[str], flags: list[str], source: Path, lib: Path) -> tuple[str | None, str]:
    """Compile source into lib through a temporary file: (None or why it failed, the compiler's stderr)."""
    tmp, compiler = lib.with_name(f"{lib.name}.{os.getpid()}"), " ".join(command)
    remove_stale_temporaries(lib)
    try:
        done = subprocess.run([*command, *flags, "-o", str(tmp), str(source), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            first = "\n".join(done.stderr.strip().splitlines()[:ERROR_LINES])
            said = f":\n{first}" if first else ", printing nothing"
            return f"{compiler} failed on {source.name} (exit {done.returncode}){said}", done.stderr
        os.chmod(tmp, 0o700)  # whatever the umask: the loader refuses group- or world-writable files
        tmp.replace(lib)
        return None, done.stderr
    except FileNotFoundError:
        return f"no C compiler: {compiler!r} is not on PATH (install one, or set CC)", ""
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{compiler} could not build {source.name}: {exc}", ""
    finally:
        tmp.unlink(missing_ok=True)  # a failed or interrupted build leaves nothing behind


def custom_op(library: torch.library.Library, schema: str, fake: Callable):
    """Decorator: define the op `schema` in `library`'s namespace, the decorated function its CPU kernel
    and `fake` its fake-tensor kernel (shapes only; what fake tensors and torch.compile run); returns the op.

    torch.library's low-level registration rather than torch.library.custom_op: the op then costs ~5 us per
    call in the dispatcher here, against ~35 us for custom_op's Python autograd and view handling, and the
    hot loops call some ops once per expert. There is no autograd kernel: torch's fallback then lets no
    gradient through an op (it only warns), so callers use the C kernels only where no gradient must flow
    through the op itself: sort_gather without autograd, or inside an autograd.Function that supplies its
    own backward (PEER's GatherDot)."""
    def register(kernel: Callable):
        name = schema.split("(")[0]
        library.define(schema)
        library.impl(name, kernel, "CPU")
        torch.library.register_fake(f"{library.ns}::{name}", fake, lib=library)
        return getattr(getattr(torch.ops, library.ns), name).default

    return register


def compiler_present() -> bool:
    """Whether the compiler load() would run (CC, else cc) is on PATH: then the kernels must build."""
    return shutil.which(compiler_command()[0]) is not None


def load(name: str, signatures: dict[str, list], extra_flags: list[str] = ()) -> Build:
    """csrc/<name>.c compiled (or found in the cache) and loaded, each named function's argtypes set."""
    if os.environ.get("MOEBENCH_NATIVE", "1") == "0":
        return Build(None, "disabled by MOEBENCH_NATIVE=0")
    folder, problem = safe_cache_dir()
    if folder is None:
        return Build(None, problem)
    source = SOURCES / f"{name}.c"
    try:
        text = source.read_bytes()
    except OSError as exc:
        return Build(None, f"the C source is missing from this install: {exc}")
    command, flags = compiler_command(), [*FLAGS, *extra_flags]
    lib = library_path(folder, name, text, " ".join(command), flags)
    log = ""
    try:
        if os.path.lexists(lib) and unsafe_reason(lib, is_dir=False):
            lib.unlink()  # not ours to run (or a link): build a fresh one in its place
        if not lib.exists():
            problem, log = compile_library(command, flags, source, lib)
            if problem:
                return Build(None, problem, log)
        problem = unsafe_reason(lib, is_dir=False)
        if problem:
            return Build(None, f"refusing to load {problem}", log)
        dll = ctypes.CDLL(str(lib))
    except OSError as exc:
        return Build(None, f"cannot use {lib}: {exc}", log)
    for function, argtypes in signatures.items():
        getattr(dll, function).argtypes = argtypes
    return Build(dll, None, log)


__all__ = ["FLAGS", "MAX_THREADS", "SOURCES", "Build", "cache_dir", "compiler_present", "custom_op", "load"]
