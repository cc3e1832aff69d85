"""The compiled-kernel cache loads only this user's code, and a failed build says why.

Loading runs a shared object's constructor, so the planted-library tests plant one whose constructor
writes a marker file, each in a fresh Python process (a process that already loaded a path would not
load it again), and assert that the marker never appears."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moebench.kernels import dispatch_native, native_build, peer_native

# (shutil.which, not native_build.compiler_present: these tests also run against older moebench versions)
needs_cc = pytest.mark.skipif(not shutil.which(os.environ.get("CC") or "cc"), reason="no C compiler on PATH (or CC)")
LOAD = "from moebench.kernels import dispatch_native as d; d.available(); print(d.build().status)"
PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE* f = fopen(MARKER, "w"); if (f) fclose(f); }
"""


def python(code: str, env: dict[str, str], check: bool = True,
           args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """code (or, with args, `python *args`) run by a fresh interpreter with this checkout first on its path
    and `env` added."""
    full = {**os.environ, "PYTHONPATH": str(Path(native_build.__file__).parents[2]), **env}
    done = subprocess.run([sys.executable, *(args or ("-c", code))], env=full, capture_output=True, text=True,
                          timeout=300)
    assert not check or done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache folder holding the dispatch kernels, built by a fresh process."""
    folder = tmp_path_factory.mktemp("built") / "cache"
    python(LOAD, {"MOEBENCH_NATIVE_CACHE": str(folder)}, check=False)
    assert list(folder.glob("dispatch_*.so"))
    return folder


def plant(built_cache: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of the built cache whose libraries are replaced by the planted one, the marker path)."""
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    shutil.copytree(built_cache, cache)
    (tmp_path / "planted.c").write_text(PLANTED)
    for lib in cache.glob("*.so"):
        subprocess.run(["cc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(lib), str(tmp_path / "planted.c")],
                       check=True)
    return cache, marker


def chown_other(path: Path) -> None:
    os.chown(path, 65534, 65534)  # nobody


not_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
UNSAFE_FOLDERS = {
    "world-writable folder": lambda cache: cache.chmod(0o777),
    "group-writable folder": lambda cache: cache.chmod(0o770),
    "folder of another user": pytest.param(chown_other, marks=not_root),
}
UNSAFE_FILES = {
    "world-writable file": lambda lib: lib.chmod(0o666),
    "group-writable file": lambda lib: lib.chmod(0o620),
    "file of another user": pytest.param(chown_other, marks=not_root),
}


@needs_cc
@pytest.mark.parametrize("make_unsafe", UNSAFE_FOLDERS.values(), ids=UNSAFE_FOLDERS.keys())
def test_a_library_in_an_unsafe_folder_is_never_loaded(built_cache, tmp_path, make_unsafe):
    cache, marker = plant(built_cache, tmp_path)
    make_unsafe(cache)
    done = python(LOAD, {"MOEBENCH_NATIVE_CACHE": str(cache)}, check=False)
    assert not marker.exists(), "the planted library ran"
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unavailable: refusing to load code from MOEBENCH_NATIVE_CACHE"), done.stdout
    assert str(cache) in done.stdout


@needs_cc
@pytest.mark.parametrize("make_unsafe", UNSAFE_FILES.values(), ids=UNSAFE_FILES.keys())
def test_an_unsafe_library_file_is_rebuilt_not_loaded(built_cache, tmp_path, make_unsafe):
    cache, marker = plant(built_cache, tmp_path)
    for lib in cache.glob("*.so"):
        make_unsafe(lib)
    done = python(LOAD, {"MOEBENCH_NATIVE_CACHE": str(cache)}, check=False)
    assert not marker.exists(), "the planted library ran"
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "built"  # a fresh build replaced it
    for lib in cache.glob("*.so"):
        assert native_build.unsafe_reason(lib, is_dir=False) is None


def test_the_default_cache_is_a_private_folder_in_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("MOEBENCH_NATIVE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder, problem = native_build.safe_cache_dir()
    assert problem is None and folder == tmp_path / "xdg" / "moebench" / "native"
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_cache_folder_under_a_folder_others_may_write_is_refused(tmp_path, monkeypatch):
    """Others could rename the cache folder away and put their own in its place."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit, unlike /tmp
    monkeypatch.setenv("MOEBENCH_NATIVE_CACHE", str(shared / "cache"))
    folder, problem = native_build.safe_cache_dir()
    assert folder is None and "writable by others without the sticky bit" in problem



def test_a_link_on_the_way_to_the_cache_is_resolved_once_so_it_cannot_be_swapped_before_the_load(tmp_path,
                                                                                                 monkeypatch):
    """A link inside a folder others may write could be pointed elsewhere between the checks and the
    load: the cache folder returned (and loaded from) is the resolved one, whose every parent was checked."""
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "link").symlink_to(safe)
    monkeypatch.setenv("MOEBENCH_NATIVE_CACHE", str(shared / "link" / "cache"))
    folder, problem = native_build.safe_cache_dir()
    assert problem is None and folder == (safe / "cache").resolve()
    assert "shared" not in str(folder)

FAILING_CC = """#!/bin/sh
# a compiler that writes part of its output, then fails ({how})
for a; do [ "$prev" = "-o" ] && echo partial > "$a"; prev=$a; done
echo "planted.c:1:1: error: the planted compiler failed" >&2
echo "second error line" >&2
{how}
"""


def failing_compiler(tmp_path: Path, how: str) -> Path:
    cc = tmp_path / "failing-cc"
    cc.write_text(FAILING_CC.format(how=how))
    cc.chmod(0o755)
    return cc


@pytest.mark.parametrize("how", ["exit 1", "kill -INT $PPID; sleep 5; exit 1"], ids=["failed", "interrupted"])
def test_a_failed_or_interrupted_build_leaves_no_file_behind(tmp_path, how):
    cache = tmp_path / "cache"
    env = {"MOEBENCH_NATIVE_CACHE": str(cache), "CC": str(failing_compiler(tmp_path, how))}
    python(LOAD, env, check=False)
    assert not [p.name for p in cache.iterdir() if ".so" in p.name]


@pytest.fixture
def fresh_builds():
    """The kernels' cached builds are dropped before and after the test (the next use rebuilds or reloads)."""
    for module in (dispatch_native, peer_native):
        module.build.cache_clear()
    yield
    for module in (dispatch_native, peer_native):
        module.build.cache_clear()


def test_a_compiler_error_is_kept_and_shown(tmp_path, monkeypatch, fresh_builds):
    cc = failing_compiler(tmp_path, "exit 1")
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("MOEBENCH_NATIVE_CACHE", str(tmp_path / "cache"))
    assert not dispatch_native.available() and not peer_native.available()
    reason = dispatch_native.build().reason
    assert "failed on dispatch.c (exit 1)" in reason and "the planted compiler failed" in reason
    assert "second error line" in reason
    env = python("", {"CC": str(cc), "MOEBENCH_NATIVE_CACHE": str(tmp_path / "c2")}, args=("-m", "moebench.cli", "env"))
    shown = json.loads(env.stdout)["native_kernels"]
    assert shown.startswith("unavailable: ") and "the planted compiler failed" in shown
    assert "native kernels: unavailable: " in env.stderr


def test_disabled_kernels_say_so(monkeypatch, fresh_builds):
    monkeypatch.setenv("MOEBENCH_NATIVE", "0")
    assert not dispatch_native.available()
    assert dispatch_native.build().status == "unavailable: disabled by MOEBENCH_NATIVE=0"


@needs_cc
def test_kernels_build_without_warnings_wherever_a_compiler_is_on_path(tmp_path, monkeypatch, fresh_builds):
    """Fails, never skips, when a compiler exists and the build fails or warns (-Wall -Wextra)."""
    monkeypatch.setenv("MOEBENCH_NATIVE_CACHE", str(tmp_path / "cache"))
    for module in (dispatch_native, peer_native):
        build = module.build()
        assert build.status == "built", build.status
        assert build.log == "", f"{module.__name__}: the compiler warned:\n{build.log}"


@needs_cc
def test_cc_may_carry_arguments_as_in_make(tmp_path, monkeypatch, fresh_builds):
    monkeypatch.setenv("CC", f"{os.environ.get('CC') or 'cc'} -DMOEBENCH_CC_ARGUMENT=1")
    monkeypatch.setenv("MOEBENCH_NATIVE_CACHE", str(tmp_path / "cache"))
    assert dispatch_native.build().status == "built"


def test_a_cache_path_that_is_a_file_is_refused_with_the_reason(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MOEBENCH_NATIVE_CACHE", str(tmp_path / "file"))
    folder, problem = native_build.safe_cache_dir()
    assert folder is None and "is not a regular folder" in problem


def test_a_temporary_left_by_a_killed_build_is_removed_by_the_next_build(tmp_path, monkeypatch):
    """A SIGKILL'd build cannot clean up after itself; the next build removes what a gone process left."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    lib = cache / "dispatch_0123456789abcdef.so"
    stale, running = lib.with_name(f"{lib.name}.{gone.pid}"), lib.with_name(f"{lib.name}.{os.getpid()}")
    stale.write_text("partial")
    running.write_text("partial")  # a build still in progress (this process): kept
    native_build.remove_stale_temporaries(lib)
    assert not stale.exists() and running.exists()
