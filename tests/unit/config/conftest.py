"""Fixtures of the config suite: a clean host tree for lithos_check and loaders."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def host_tree(tmp_path: Path) -> Path:
    """master.yaml, one sandbox `web`, its processes and one image `web.v1`."""
    root = tmp_path
    (root / "dev").mkdir()
    write(root / "etc/master.yaml", f"""\
        devfs-dir: {root}/dev
        runtime-dir: {root}/run
        """)
    write(root / "etc/sandboxes/web.yaml", f"""\
        image-dir: {root}/images
        allow-users: [1-1000]
        allow-groups: [1-1000]
        allow-tcp-ports: [8000-8100]
        default-user: 1
        default-group: 1
        """)
    write(root / "etc/processes/web.yaml", """\
        django:
          image: web.v1
          config: /config/main.yaml
          instances: 2
          variables: {port: "8080", mode: fast}
        """)
    write(root / "images/web.v1/config/main.yaml", """\
        kind: Daemon
        user-id: 10
        group-id: 10
        variables:
          port: !TcpPort
          mode: !Choice [fast, slow]
        executable: /bin/server
        arguments: ["--port=@{port}", "--name=@{lithos:name}"]
        environ: {MODE: "@{mode}", PID: "@{lithos:pid}"}
        tcp-ports:
          "@{port}": {fd: 3}
        volumes:
          /tmp: !Tmpfs {size: 10Mi}
        """)
    return root
