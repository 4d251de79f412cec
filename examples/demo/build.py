"""Builds the demo's image, devfs, data dir and secrets key under a root dir.

Nothing is downloaded: the image is busybox (Debian's busybox-static) plus the
host's /usr mounted read-only by the sandbox (readonly-paths), and the demo's
own code and container configs from examples/demo/image/. The secrets key is
made with ssh-keygen, and the worker's secret is encrypted with lithos_crypt's
code, so the demo shows the whole path a real secret takes.

Usage: python3 examples/demo/build.py [/run/lithos-demo]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEMO_SECRET = "the demo's secret value"


def build(root: Path) -> None:
    """Creates everything the demo configs point to, below `root`."""
    sys.path.insert(0, str(REPO))
    from protocol.secrets import encrypt
    from protocol.sshkeys import parse_public_key

    image = root / "images" / "demo.v1"
    if image.exists():
        shutil.rmtree(image)
    for d in ("etc", "tmp", "proc", "sys", "dev", "usr", "data", "code", "config"):
        (image / d).mkdir(parents=True)
    (image / "tmp").chmod(0o1777)
    # The host's /usr is mounted over /usr; these links make /bin/sh,
    # /lib64/ld-linux*.so and friends resolve inside the container (usr-merged).
    for link in ("bin", "sbin", "lib", "lib64"):
        os.symlink(f"usr/{link}", image / link)
    (image / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (image / "etc" / "resolv.conf").write_text("")
    (image / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\ndemo:x:1000:1000::/:/bin/sh\n")
    (image / "etc" / "group").write_text("root:x:0:\ndemo:x:1000:\n")
    for sub in ("code", "config"):
        for f in (HERE / "image" / sub).iterdir():
            shutil.copy(f, image / sub / f.name)

    key = root / "secrets.key"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lithos-demo", "-f", str(key)],
            check=True,
        )
    key.chmod(0o600)
    public = parse_public_key((root / "secrets.key.pub").read_text())
    worker = image / "config" / "worker.yaml"
    worker.write_text(
        worker.read_text().replace("@DEMO_SECRET@", encrypt(public, "", DEMO_SECRET))
    )

    subprocess.run([sys.executable, "-m", "knot.mkdev", str(root / "dev")], check=True, cwd=REPO)


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "/run/lithos-demo"))
