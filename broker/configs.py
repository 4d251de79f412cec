"""The broker's reading of the configs: the sandbox files, the process configs and
the container configs inside images, cached by file identity.

Owns: the only file reads the broker does for policy. Every start re-validates
against what is on disk now, but a file whose (device, inode, size, mtime) did not
change is not parsed again, so 1000 starts cost one parse per file. Rules: the
request never names a path; paths come from the master config the broker loaded
itself; container configs are read inside the image without escaping it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from protocol.config import (
    ConfigError,
    ContainerConfig,
    MasterConfig,
    ProcessConfig,
    SandboxConfig,
    image_path,
    list_sandboxes,
    load_processes,
    load_sandbox,
    parse_container,
    process_config_path,
    read_in_image,
)
from protocol.errors import Denied
from protocol.records import DenyCode
from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar
    T = TypeVar("T")

_Key = tuple[int, int, int, int]
RACY_NS = 1_000_000_000


def _identity(path: Path) -> _Key | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(slots=True)
class _Entry:
    """One cached load: the (dev, ino, size, mtime) it read (None: unknown), its result."""

    key: _Key | None
    value: object


class ConfigCache:
    """Loads configs on demand; re-parses a file only when it changed on disk."""

    def __init__(self, master: MasterConfig) -> None:
        self.master = master
        self._files: dict[Path, _Entry] = {}
        self._containers: dict[tuple[Path, str], tuple[ContainerConfig, bytes]] = {}
        self._sandboxes: _Entry | None = None

    def _cached(self, path: Path, load: Callable[[Path], T]) -> T:
        key = _identity(path)
        entry = self._files.get(path)
        if entry is not None and key is not None and entry.key == key:
            return entry.value  # type: ignore[return-value]
        value = load(path)
        self._files[path] = _Entry(key, value)
        return value

    def sandbox_names(self) -> dict[str, Path]:
        """Listed again only when the directory changed (its mtime moves when an
        entry is added, removed or renamed): this runs at every start. A listing
        taken within a second of the mtime is not kept: the clock behind mtimes is
        coarse, and a file added in the same tick would not move it ("racy git")."""
        key = _identity(self.master.sandboxes_dir)
        cached = self._sandboxes
        if cached is not None and key is not None and cached.key == key:
            return cached.value  # type: ignore[return-value]
        names = list_sandboxes(self.master)
        settled = key is not None and time.time_ns() - key[3] > RACY_NS
        self._sandboxes = _Entry(key, names) if settled else None
        return names

    def sandbox(self, name: str) -> SandboxConfig:
        """Raises: Denied (UNKNOWN_SANDBOX or CONFIG_ERROR)."""
        path = self.master.sandboxes_dir / f"{name}.yaml"
        if name not in self.sandbox_names():
            raise Denied(
                DenyCode.UNKNOWN_SANDBOX,
                f"sandbox {name!r}: no {path} (sandboxes-dir in {self.master.path})",
            )
        try:
            return self._cached(path, load_sandbox)
        except ConfigError as e:
            raise Denied(DenyCode.CONFIG_ERROR, str(e)) from None

    def processes(self, sandbox: SandboxConfig) -> dict[str, ProcessConfig]:
        """Raises: Denied (CONFIG_ERROR)."""
        path = process_config_path(self.master, sandbox)
        try:
            return dict(self._cached(path, load_processes))
        except ConfigError as e:
            raise Denied(DenyCode.CONFIG_ERROR, str(e)) from None

    def container(
        self, sandbox: SandboxConfig, process: ProcessConfig
    ) -> tuple[ContainerConfig, bytes]:
        """The container config (and its bytes) of `process`, read inside its image.

        Raises: Denied (CONFIG_ERROR naming the image and the path).
        """
        image = image_path(sandbox, process)
        if not isinstance(image, Path):
            raise Denied(
                DenyCode.POLICY, f"{image.file}: {image.key}: {image.value} {image.message}"
            )
        try:
            data = read_in_image(image, process.config)
        except ConfigError as e:
            raise Denied(DenyCode.CONFIG_ERROR, str(e)) from None
        cached = self._containers.get((image, process.config))
        if cached is not None and cached[1] == data:
            return cached
        try:
            container = parse_container(data, f"{image}{process.config}")
        except ConfigError as e:
            raise Denied(DenyCode.CONFIG_ERROR, str(e)) from None
        self._containers[image, process.config] = (container, data)
        return container, data
