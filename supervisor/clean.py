"""lithos_clean: list used and unused images, and delete unused ones (inventory 2.7).

Owns the CLI and its file reads. For each sandbox: the images of its current
process config are used; then those of `used-images-list`, or else of the
config log history (supervisor.cleanhistory, X-CLEAN-3). An image dir is
cleaned only when every sandbox using it agrees on `auto-clean: true` and on
`image-dir-levels`, and its used set is known for sure; otherwise it is
*bad* and left alone with an error naming it (X-CLEAN-6). Differences from
the original, on the safe side: a sandbox with neither `used-images-list`
nor `config-log-dir`, or whose process config fails to parse, makes its dir
bad (the original would delete every image not in the current config), and
`.log.100` is read too. Dry run by default: `--used` (default) and
`--unused` only print; `--delete-unused` deletes.
Exit codes: 0 done, 1 a config error (nothing deleted) or a failed deletion, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import stat
import sys
import time
from dataclasses import field
from datetime import UTC, datetime
from pathlib import Path

from protocol.config import (
    ConfigError,
    MasterConfig,
    SandboxConfig,
    list_sandboxes,
    load_master,
    load_processes,
    load_sandbox,
    process_config_path,
)
from protocol.structs import dataclass
from supervisor.cleanhistory import LogLine, parse_duration, parse_line, select, versions

VERSION = "lithos_clean (lithos 0.1.0, Lithos v0.18.4 compatible)"
LOG_ROTATIONS = 100
EXAMPLES = """examples:
  lithos_clean --used                          images in use (the default action)
  lithos_clean --unused -D 7 --vmin 3          what would go: keep 7 days, >= 3 versions
  lithos_clean --delete-unused -v --keep-recent 1h -D 7
                                               delete them, sparing images made < 1h ago
"""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lithos_clean", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show used and unused images, and delete unused ones.")
    p.add_argument("-C", "--config", type=Path, default=Path("/etc/lithos/master.yaml"),
                   metavar="FILE", help="master config (default %(default)s)")
    p.add_argument("--keep-recent", type=_duration, metavar="DELTA",
                   help="never count as unused an image dir created or modified within "
                        "DELTA (e.g. 1h, 30min, 2days)")
    p.add_argument("-D", "--history-days", type=float, metavar="DAYS",
                   help="keep images of configs used within the last DAYS days")
    p.add_argument("--vmin", "--versions-min", dest="vmin", type=int, default=0,
                   metavar="NUM", help="keep at least NUM past configs (default 0)")
    p.add_argument("--vmax", "--versions-max", dest="vmax", type=int, default=1000,
                   metavar="NUM", help="keep at most NUM past configs (default 1000)")
    p.add_argument("-v", "--verbose", action="store_true", help="say what is deleted")
    action = p.add_mutually_exclusive_group()
    for flag, help_text in (("--used", "print used images (default)"),
                            ("--unused", "print unused images (a dry run)"),
                            ("--delete-unused", "delete unused images")):
        action.add_argument(flag, dest="action", action="store_const",
                            const=flag.strip("-"), help=help_text)
    p.add_argument("--clean-logs", action="store_true",
                   help="with --unused/--delete-unused: also config-log files no longer "
                        "needed for the history")
    p.add_argument("--version", action="version", version=VERSION)
    p.set_defaults(action="used")
    return p


@dataclass(slots=True)
class ImageDir:
    """What lithos_clean found of one image dir: its levels, auto-clean flags, errors."""

    levels: set[int] = field(default_factory=set)
    auto_clean: set[bool] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Survey:
    """lithos_clean's look at the host: images in use, image dirs, unused logs."""

    used: set[Path] = field(default_factory=set)
    dirs: dict[Path, ImageDir] = field(default_factory=dict)
    unused_logs: list[Path] = field(default_factory=list)

    def bad(self, d: Path, error: str) -> None:
        self.dirs.setdefault(d, ImageDir()).errors.append(error)


def _warn(text: str) -> None:
    print(f"lithos_clean: warning: {text}", file=sys.stderr)


def _error(text: str) -> None:
    print(f"lithos_clean: error: {text}", file=sys.stderr)


def valid_image(name: str, levels: int) -> bool:
    parts = name.split("/")
    return not name.startswith("/") and len(parts) == levels and \
        all(p not in ("", ".", "..") for p in parts)


def survey(master: MasterConfig, args: argparse.Namespace, now: float) -> Survey:
    """Used images and image dirs of every sandbox. Raises ConfigError (abort)."""
    s = Survey()
    for name, path in list_sandboxes(master).items():
        sandbox = load_sandbox(path)
        d = s.dirs.setdefault(sandbox.image_dir, ImageDir())
        d.auto_clean.add(sandbox.auto_clean)
        if not sandbox.auto_clean:
            continue
        d.levels.add(sandbox.image_dir_levels)
        _sandbox_used(s, master, name, sandbox, args, now)
    for path, d in s.dirs.items():
        if len(d.auto_clean) > 1:
            d.errors.append(f"Conflicting `auto-clean` setting for \"{path}\"")
        if len(d.levels) > 1:
            d.errors.append(f"Conflicting image dir levels for \"{path}\"")
    return s


def _sandbox_used(s: Survey, master: MasterConfig, name: str, sandbox: SandboxConfig,
                  args: argparse.Namespace, now: float) -> None:
    root = sandbox.image_dir
    pfile = process_config_path(master, sandbox)
    if pfile.exists():
        try:
            for process in load_processes(pfile).values():
                s.used.add(root / process.image)
        except ConfigError as e:
            s.bad(root, f"sandbox {name}: process config does not load: {e}")
    if sandbox.used_images_list is not None:
        try:
            lines = sandbox.used_images_list.read_text().splitlines()
        except OSError as e:
            s.bad(root, f"{sandbox.used_images_list}: cannot read used-images-list: "
                        f"{e.strerror}")
            return
        for line in (x.strip() for x in lines):
            if not line:
                continue
            if valid_image(line, sandbox.image_dir_levels):
                s.used.add(root / line)
            else:
                _warn(f"Image name \"{line}\" from file \"{sandbox.used_images_list}\" "
                      f"is invalid (image-dir-levels is {sandbox.image_dir_levels})")
    elif master.config_log_dir is not None:
        _history(s, master.config_log_dir, name, sandbox, args, now)
    else:
        s.bad(root, f"Neither `config-log-dir` nor `used-images-list` is set for sandbox "
                    f"\"{name}\". Can't clean images.")


def log_files(config_log_dir: Path, sandbox: str) -> list[Path]:
    base = config_log_dir / f"{sandbox}.log"
    return [base] + [base.with_name(f"{base.name}.{n}") for n in range(1, LOG_ROTATIONS + 1)]


def _history(s: Survey, log_dir: Path, name: str, sandbox: SandboxConfig,
             args: argparse.Namespace, now: float) -> None:
    files = log_files(log_dir, name)
    lines: list[tuple[LogLine, str]] = []
    for index, path in enumerate(files):
        try:
            text = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        except OSError as e:
            s.bad(sandbox.image_dir, f"{path}: cannot read the config log: {e.strerror}")
            return
        numbered = [(n, t) for n, t in enumerate(text, 1) if t.strip()]
        for n, t in reversed(numbered):  # newest first
            line = parse_line(t, index, n)
            if line.images is None:
                _warn(f"Broken line {path}: {n}")
            lines.append((line, f"{path}:{n}"))
    kept = select(versions(lines), now, args.history_days, args.vmin, args.vmax)
    for v in kept:
        if v.images is None:
            s.bad(sandbox.image_dir, f"{v.where}: a broken config-log line is within the "
                                     f"kept history")
            continue
        for image in v.images:
            if valid_image(image, sandbox.image_dir_levels):
                s.used.add(sandbox.image_dir / image)
    needed = max((i for v in kept for i in v.files), default=0)
    s.unused_logs.extend(p for p in files[needed + 1:] if p.exists())


def unused_images(s: Survey, keep_recent_s: float | None, now: float) -> list[Path]:
    out: list[Path] = []
    for root, d in sorted(s.dirs.items()):
        if d.errors or d.auto_clean != {True}:
            continue
        levels = next(iter(d.levels), 1)
        for path in _walk(root, levels):
            if path in s.used:
                continue
            if keep_recent_s is not None and _recent(path, now - keep_recent_s):
                continue
            out.append(path)
    return out


def _walk(root: Path, levels: int) -> list[Path]:
    """Directories exactly `levels` deep; no symlinks, hidden or backup (`~`) names."""
    found = [root]
    for _ in range(levels):
        deeper: list[Path] = []
        for d in found:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            deeper.extend(Path(e.path) for e in entries
                          if not e.name.startswith(".") and not e.name.endswith("~")
                          and e.is_dir(follow_symlinks=False))
        found = deeper
    return found


def _recent(path: Path, since: float) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return True  # unknown age: spare it
    # Linux has no birth time in stat(2); ctime is at least as recent, so it spares
    # every image the original would spare (and a few more: the safe side)
    return st.st_mtime > since or st.st_ctime > since or not stat.S_ISDIR(st.st_mode)


def debug_path(path: Path) -> str:
    """A path the way the original prints it (Rust debug format: quoted, escaped)."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def main(argv: list[str] | None = None) -> int:
    """Run lithos_clean; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        master = load_master(args.config)
    except ConfigError as e:
        _error(f"Can't parse config: {e}")
        return 1
    now = time.time()
    try:
        s = survey(master, args, now)
    except ConfigError as e:
        _error(f"Error finding out used images: {e}")
        return 1
    for root, d in sorted(s.dirs.items()):
        for error in d.errors:
            _error(error)
        if d.errors:
            _error(f"Can't reliably find out used images in the directory \"{root}\"")
    if args.action == "used":
        for path in sorted(s.used):
            print(debug_path(path))
        return 0
    unused = unused_images(s, args.keep_recent, now)
    logs = s.unused_logs if args.clean_logs else []
    if args.action == "unused":
        for path in unused + logs:
            print(debug_path(path))
        return 0
    failed = 0
    for path in unused:
        if args.verbose:
            print(f"{_stamp()}: Deleting {debug_path(path)}")
        try:
            shutil.rmtree(path)
        except OSError as e:
            _error(f"Error removing {debug_path(path)}: {e}")
            failed = 1
    for path in logs:
        if args.verbose:
            print(f"{_stamp()}: Deleting log {debug_path(path)}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return failed


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
