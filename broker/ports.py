"""The broker's listening TCP sockets (T-13..T-17, E-15..E-17).

Owns every listening socket the broker opens for `tcp-ports` and their lifetime:
- one socket per (host, port), shared by every instance that uses the address, across
  sandboxes; the first opener's options win (T-14);
- `reuse-port: true` is what the manual promises, not what the original does (T-15):
  each instance gets its own socket, bound with SO_REUSEPORT and owned by it alone;
- a socket is closed as soon as no live instance uses it (T-16, E-16), so a port whose
  instances are all dead stops listening;
- across a broker re-exec the fds survive (T-17, E-17): `export()` names them,
  `prepare_for_exec()` clears CLOEXEC just before exec, `PortTable.adopt()` takes
  them back after it and trusts only an fd whose getsockname matches its entry.
The table handles IPv6 addresses as well, but a `tcp-ports` `host` is IPv4 only, as in
the original (protocol/config/container.py refuses another). The sockets are
created with the broker's own credentials: the original's setfsuid to the socket
owner (T-13 step 1) is not done here. This module never decides whether an instance
may use a port (see policy.py) and imports nothing of ours.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Iterable, Mapping

from protocol.structs import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar
    _Key = TypeVar("_Key")

log = logging.getLogger(__name__)

EXPORT_VERSION = 1


class PortError(Exception):
    """A socket could not be opened; the text names the address, the step and the errno."""


@dataclass(frozen=True, slots=True)
class SocketSettings:
    """The options of one `tcp-ports` entry (1.4.2), with the manual's defaults."""

    reuse_addr: bool = True
    reuse_port: bool = False
    set_non_block: bool = False
    listen_backlog: int = 128


@dataclass(frozen=True, slots=True)
class Address:
    """An IP literal in canonical form (`::0` and `::` are one address) and a port."""

    host: str
    port: int

    @classmethod
    def parse(cls, host: str, port: int) -> Address:
        """Raises: PortError for a host that is not an IP literal or a port out of range."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise PortError(f"tcp-ports {port}: host: {host!r} is not an IP address") from None
        if not 0 <= port <= 65535:
            raise PortError(f"tcp-ports {port}: port must be in 0..65535")
        return cls(str(ip), port)

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """What the table holds for one socket (for lithos_ps and tests)."""

    address: Address
    fd: int
    instances: frozenset[str]
    settings: SocketSettings


class _Listener:
    """One owned listening socket; `close()` is idempotent."""

    def __init__(self, sock: socket.socket, address: Address, settings: SocketSettings) -> None:
        self.sock = sock
        self.address = address
        self.settings = settings
        self.bound_port = sock.getsockname()[1]  # differs from address.port for port 0
        self.instances: set[str] = set()

    def close(self) -> None:
        self.sock.close()  # socket.close() is idempotent and makes fileno() -1


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _open(address: Address, settings: SocketSettings) -> socket.socket:
    # Python creates sockets with SOCK_CLOEXEC (PEP 446): nothing leaks into a
    # child unless it is passed explicitly; only prepare_for_exec() clears it.
    try:
        sock = socket.socket(address.family, socket.SOCK_STREAM)
    except OSError as e:
        raise PortError(f"tcp-ports {address}: socket: {_errname(e)}") from e
    step = "setsockopt"
    try:
        if address.family == socket.AF_INET6:
            # Keep `::` and `0.0.0.0` two separate addresses, as the table keys them.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if settings.reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        step = "bind"
        sock.bind((address.host, address.port))
        step = "listen"
        sock.listen(settings.listen_backlog)
        if settings.set_non_block:
            # O_NONBLOCK is on the open file description: every dup shares it (1.4.2).
            step = "set-non-block"
            sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise PortError(f"tcp-ports {address}: {step}: {_errname(e)}") from e
    return sock


class PortTable:
    """Listening sockets by address, reference-counted by instance name (`web/app.0`).

    The fds returned by `acquire` stay owned by the table: callers pass them to a
    child (pass_fds, dup2) but never close them.
    """

    def __init__(self) -> None:
        self._shared: dict[Address, _Listener] = {}
        self._private: dict[tuple[Address, str], _Listener] = {}  # reuse-port sockets

    def acquire(self, instance: str, host: str, port: int, settings: SocketSettings) -> int:
        """The fd of the listening socket for `instance` at host:port; opens it if needed.

        Raises:
            PortError: `tcp-ports 0.0.0.0:80: bind: EADDRINUSE` and the like.
        """
        address = Address.parse(host, port)
        if settings.listen_backlog < 0:
            # listen(2) would quietly treat it as 0; a config error must be visible.
            raise PortError(
                f"tcp-ports {address}: listen-backlog: {settings.listen_backlog} must be >= 0"
            )
        if settings.reuse_port:
            listener = self._private.get((address, instance))
            if listener is None:
                listener = _Listener(_open(address, settings), address, settings)
                self._private[address, instance] = listener
                log.info(
                    "Socket %s open as %d (reuse-port, for %s)",
                    address,
                    listener.sock.fileno(),
                    instance,
                )
        else:
            listener = self._shared.get(address)
            if listener is None:
                listener = _Listener(_open(address, settings), address, settings)
                self._shared[address] = listener
                log.info("Socket %s open as %d", address, listener.sock.fileno())
            elif listener.settings != settings and instance not in listener.instances:
                log.info(
                    "Socket %s: %s asks for %s; the first opener's %s stay while it is open",
                    address,
                    instance,
                    settings,
                    listener.settings,
                )
        listener.instances.add(instance)
        return listener.sock.fileno()

    def release(self, instance: str) -> list[Address]:
        """`instance` died or stopped: close every socket no live instance uses any more."""
        return self.retain(i for i in self._instances() if i != instance)

    def retain(self, live: Iterable[str]) -> list[Address]:
        """Keep only the users in `live` (T-12, T-16, T-34 step 4); returns closed addresses."""
        keep = set(live)
        return _drop_unused(self._shared, keep) + _drop_unused(self._private, keep)

    def _instances(self) -> set[str]:
        return {i for lst in self._listeners() for i in lst.instances}

    def _listeners(self) -> list[_Listener]:
        return [*self._shared.values(), *self._private.values()]

    def sockets(self) -> list[SocketInfo]:
        """Every socket in the table, by fd."""
        infos = [
            SocketInfo(lst.address, lst.sock.fileno(), frozenset(lst.instances), lst.settings)
            for lst in self._listeners()
        ]
        return sorted(infos, key=lambda i: i.fd)

    def close(self) -> None:
        """Close every socket (broker shutdown)."""
        self.retain(())

    # ---- re-exec (T-17, E-17) -------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """A JSON-able description of every socket, for the broker after exec."""
        return {
            "version": EXPORT_VERSION,
            "sockets": [
                {
                    "fd": lst.sock.fileno(),
                    "host": lst.address.host,
                    "port": lst.address.port,
                    "bound-port": lst.bound_port,
                    "reuse-addr": lst.settings.reuse_addr,
                    "reuse-port": lst.settings.reuse_port,
                    "set-non-block": lst.settings.set_non_block,
                    "listen-backlog": lst.settings.listen_backlog,
                    "instances": sorted(lst.instances),
                }
                for lst in self._listeners()
            ],
        }

    def prepare_for_exec(self) -> None:
        """Clear CLOEXEC on every socket; call right before execve, nothing in between."""
        for lst in self._listeners():
            os.set_inheritable(lst.sock.fileno(), True)

    def exec_failed(self) -> None:
        """Undo prepare_for_exec after a failed execve, so no child inherits the sockets."""
        for lst in self._listeners():
            os.set_inheritable(lst.sock.fileno(), False)

    @classmethod
    def adopt(cls, exported: Mapping[str, Any]) -> PortTable:
        """The table after exec, from `export()`'s output; sets CLOEXEC again.

        An entry whose fd is not the listening socket it claims is logged and left
        alone: not adopted, not closed (it is not known to be ours).

        Raises:
            PortError: when `exported` is not an export of this version at all.
        """
        if not isinstance(exported, Mapping) or exported.get("version") != EXPORT_VERSION:
            raise PortError(f"exported sockets: want a mapping with version {EXPORT_VERSION}")
        table = cls()
        for entry in exported.get("sockets", ()):
            listener = _adopt_one(entry)
            if listener is None:
                continue
            table_key: Any = listener.address
            target: dict[Any, _Listener] = table._shared
            if listener.settings.reuse_port:
                owner = next(iter(listener.instances), "")
                table_key, target = (listener.address, owner), table._private
            if table_key in target or not listener.instances:
                log.warning(
                    "Socket %s (fd %d): duplicate or unused entry in export, not adopted",
                    listener.address,
                    listener.sock.fileno(),
                )
                listener.sock.detach()
                continue
            os.set_inheritable(listener.sock.fileno(), False)
            target[table_key] = listener
            log.info("Recovered fd %d as %s", listener.sock.fileno(), listener.address)
        return table


def _drop_unused(table: dict[_Key, _Listener], keep: set[str]) -> list[Address]:
    closed = []
    for key, listener in list(table.items()):
        listener.instances &= keep
        if not listener.instances:
            log.info(
                "Socket %s (fd %d) closed: no live instance uses it",
                listener.address,
                listener.sock.fileno(),
            )
            listener.close()
            del table[key]
            closed.append(listener.address)
    return closed


def _adopt_one(entry: Any) -> _Listener | None:
    """Wrap one exported fd if it really is the listening socket the entry names."""
    try:
        fd = entry["fd"]
        address = Address.parse(entry["host"], entry["port"])
        bound_port = entry["bound-port"]
        settings = SocketSettings(
            reuse_addr=entry["reuse-addr"],
            reuse_port=entry["reuse-port"],
            set_non_block=entry["set-non-block"],
            listen_backlog=entry["listen-backlog"],
        )
        instances = set(entry["instances"])
        if not isinstance(fd, int) or not all(isinstance(i, str) for i in instances):
            raise TypeError("fd must be an int and instances strings")
    except (KeyError, TypeError, PortError) as e:
        log.warning("exported socket entry %r is malformed (%s): not adopted", entry, e)
        return None
    try:
        is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError as e:
        log.warning("fd %d claimed as socket %s: %s: not adopted", fd, address, _errname(e))
        return None
    if not is_socket:
        log.warning("fd %d claimed as socket %s is not a socket: not adopted", fd, address)
        return None
    sock = socket.socket(fileno=fd)
    family = sock.family
    if family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        log.warning(
            "fd %d claimed as socket %s is a %s socket: not adopted", fd, address, family.name
        )
        return None
    try:
        actual = Address.parse(*sock.getsockname()[:2])
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        is_tcp = sock.type == socket.SOCK_STREAM
    except (OSError, PortError, TypeError) as e:  # not an IP socket at all
        sock.detach()
        log.warning("fd %d claimed as socket %s: %s: not adopted", fd, address, e)
        return None
    if actual != Address(address.host, bound_port) or not listening or not is_tcp:
        sock.detach()  # the fd is not ours to close
        log.warning(
            "fd %d is %s (listening: %s), not the socket %s the export claims: not adopted",
            fd,
            actual,
            listening,
            address,
        )
        return None
    listener = _Listener(sock, address, settings)
    listener.instances = instances
    return listener
