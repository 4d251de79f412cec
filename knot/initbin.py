"""The native pid 1 (knot/init.c), compiled on demand and cached.

lithos is a Python package with no build step, and production hosts may have no
compiler: init.c ships as package data and is compiled here, once per source
version, with `cc -O2 -static`, into `<cache dir>/lithos-init-<hash>` (the hash of
the source, of the flags and of the errno table). The binary is static, so the
container's image needs nothing; the knot opens it before pivot_root and execs it by fd.

musl-gcc (Debian: musl-tools) is preferred when installed: glibc's static start-up
runs ~60 cpuid instructions (cpu features, cache sizes), each a trap to the hypervisor
in a VM: 0.27 ms of every container start on the bench machine, against 0.01 ms for
musl's (BENCHMARKS.md, "Native init's start-up"). cc (glibc) is the fallback. So
that init.c's error lines do not depend on the libc, the errno names and texts come
from Python (errno.errorcode, os.strerror): a header generated here, given with -include.
A binary already cached is kept whichever compiler made it (both behave the same).

Rules: runs in the spawner (the broker or lithos_cmd, as root), never in a knot.
The cache dir must be root-owned and not writable by group or others (a binary
there runs as pid 1 of every container); it is created 0755 when missing. The
binary is written atomically (compiled to a temporary name in the same dir, then
renamed). When there is no compiler, no static libc, or the cache dir is not
safe, build() returns None and the caller uses the Python pid 1; choose() logs
that once per process.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from pathlib import Path

from protocol.digest import sha256

SOURCE = Path(__file__).with_name("init.c")
DEFAULT_CACHE_DIR = Path("/var/lib/lithos/init")
CFLAGS = ("-O2", "-static")
COMPILERS = ("musl-gcc", "cc", "gcc")  # the first found that builds it
# LITHOS_KNOT_INIT=python forces the Python pid 1; native (the default) uses the
# compiled one when it can be built. LITHOS_INIT_CACHE overrides the cache dir.
MODE_ENV = "LITHOS_KNOT_INIT"
CACHE_ENV = "LITHOS_INIT_CACHE"
MODES = ("native", "python")

log = logging.getLogger("lithos.knot.init")


def errno_header() -> bytes:
    """init.c's ERRNO_TABLE: `[1] = { "EPERM", "Operation not permitted" }, ...`."""
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    items = [f"[{no}] = {{ {quoted(name)}, {quoted(os.strerror(no))} }}"
             for no, name in sorted(errno.errorcode.items())]
    return ("#define ERRNO_TABLE " + ", \\\n    ".join(items) + "\n").encode()


def binary_name(source: bytes, cflags: tuple[str, ...] = CFLAGS) -> str:
    digest = sha256(source + b"\0" + " ".join(cflags).encode() + b"\0"
                    + errno_header()).hexdigest()
    return f"lithos-init-{digest[:16]}"


def _safe_dir(cache_dir: Path) -> str | None:
    """None when cache_dir is usable; else why not.

    Like OpenSSH's StrictModes: the dir and every ancestor must be owned by us (root)
    and not writable by group or others, except sticky ancestors such as /tmp (whose
    entries others cannot rename).
    """
    try:
        cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        cache_dir = cache_dir.resolve()
        for path in (cache_dir, *cache_dir.parents):
            st = path.stat()
            writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            sticky_ancestor = path != cache_dir and st.st_mode & stat.S_ISVTX
            if st.st_uid not in (0, os.geteuid()) or (writable and not sticky_ancestor):
                return (f"{path}: must be owned by uid {os.geteuid()} and not writable by "
                        f"group or others (owner {st.st_uid}, mode "
                        f"{stat.filemode(st.st_mode)}): the native pid 1 is kept in "
                        f"{cache_dir}")
    except OSError as e:
        return f"{cache_dir}: {e.strerror}"
    return None


def build(cache_dir: Path, path_env: str | None = None,
          extra_cflags: tuple[str, ...] = ()) -> tuple[Path | None, str]:
    """Returns (the binary, "") or (None, why not). Compiles only when not cached.

    path_env is the PATH searched for `cc` (default: ours); extra_cflags are for the
    bench only (bench.spawn_steps: -DLITHOS_INIT_STAMPS).
    """
    cflags = CFLAGS + extra_cflags
    try:
        source = SOURCE.read_bytes()
    except OSError as e:  # installed without its package data
        return None, f"{SOURCE}: {e.strerror}"
    target = cache_dir / binary_name(source, cflags)
    why = _safe_dir(cache_dir)
    if why:
        return None, why
    if target.is_file():
        return target, ""
    import shutil  # only to compile: a broker whose binary is cached never loads them
    import subprocess
    import tempfile

    found = [cc for cc in (shutil.which(name, path=path_env) for name in COMPILERS) if cc]
    if not found:
        return None, f"no C compiler (cc) in PATH {path_env or os.environ.get('PATH', '')}"
    fd, tmp = tempfile.mkstemp(prefix=".build-", dir=cache_dir)
    os.close(fd)
    header = tmp + ".h"
    why = ""
    try:
        Path(header).write_bytes(errno_header())
        for cc in found:
            done = subprocess.run([cc, *cflags, "-include", header, "-o", tmp, str(SOURCE)],
                                  capture_output=True, text=True, check=False, timeout=120)
            if done.returncode == 0:
                break
            first = (done.stderr.strip().splitlines() or ["?"])[-1]
            why = why or f"{cc} {' '.join(cflags)} {SOURCE} failed: {first}"
        else:
            return None, why
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
        tmp = ""
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{found[0]}: {e}"
    finally:
        for path in (tmp, header):
            if path and os.path.exists(path):
                os.unlink(path)
    return target, ""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


@functools.cache
def choose() -> Path | None:
    """The native pid 1 to use, or None for the Python one (LITHOS_KNOT_INIT=python,
    or it cannot be built: then logged once)."""
    mode = os.environ.get(MODE_ENV, "native")
    if mode == "python":
        return None
    if mode != "native":
        log.warning("%s=%r is not one of %s; using native", MODE_ENV, mode, MODES)
    path, why = build(cache_dir())
    if path is None:
        log.warning("native pid 1 unavailable (%s): containers use the Python pid 1", why)
    return path
