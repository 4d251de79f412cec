"""read_in_image: a path resolved with the image as `/`, never escaping it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protocol.config import ConfigError, read_in_image

BACKENDS = [pytest.param(True, id="openat2"), pytest.param(False, id="walk")]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_text("HOST SECRET")
    root = tmp_path / "img"
    (root / "config").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "config/main.yaml").write_text("executable: /bin/x\n")
    (root / "etc/secret").write_text("image secret")
    (root / "config/abs").symlink_to("/etc/secret")          # absolute: inside the image
    (root / "config/up").symlink_to("../../../../secret")     # climbs: clamped at root
    (root / "config/dir").symlink_to("/config")
    (root / "config/out").symlink_to(tmp_path / "secret")     # absolute host path
    (root / "config/loop").symlink_to("loop")
    (root / "config/fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "config/fifo")
    return root


@pytest.mark.parametrize("openat2", BACKENDS)
def test_plain_and_relative_paths(image: Path, openat2: bool) -> None:
    assert read_in_image(image, "/config/main.yaml", use_openat2=openat2) == b"executable: /bin/x\n"
    assert read_in_image(image, "config/main.yaml", use_openat2=openat2) == b"executable: /bin/x\n"
    assert read_in_image(image, "/config/dir/main.yaml", use_openat2=openat2).startswith(b"exe")


@pytest.mark.parametrize("openat2", BACKENDS)
def test_absolute_symlink_resolves_inside_image(image: Path, openat2: bool) -> None:
    assert read_in_image(image, "/config/abs", use_openat2=openat2) == b"image secret"


@pytest.mark.parametrize("openat2", BACKENDS)
def test_dotdot_cannot_climb_out(image: Path, openat2: bool) -> None:
    with pytest.raises(ConfigError):
        read_in_image(image, "/../secret", use_openat2=openat2)
    assert read_in_image(image, "/../../etc/secret", use_openat2=openat2) == b"image secret"


@pytest.mark.parametrize("openat2", BACKENDS)
def test_symlink_pointing_out_is_contained(image: Path, openat2: bool) -> None:
    for path in ("/config/up", "/config/out"):
        with pytest.raises(ConfigError) as err:
            read_in_image(image, path, use_openat2=openat2)
        text = str(err.value)
        assert str(image) in text and path in text and "ENOENT" in text


@pytest.mark.parametrize("openat2", BACKENDS)
def test_errors_name_image_path_reason(image: Path, openat2: bool) -> None:
    with pytest.raises(ConfigError, match="ELOOP"):
        read_in_image(image, "/config/loop", use_openat2=openat2)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_in_image(image, "/config/fifo", use_openat2=openat2)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_in_image(image, "/config", use_openat2=openat2)
    with pytest.raises(ConfigError, match="image root cannot be opened"):
        read_in_image(image / "nope", "/x", use_openat2=openat2)


@pytest.mark.parametrize("openat2", BACKENDS)
def test_size_bounded(image: Path, openat2: bool) -> None:
    with open(image / "config/big", "wb") as f:
        f.truncate(50 * 1024 * 1024)
    with pytest.raises(ConfigError, match="larger than"):
        read_in_image(image, "/config/big", use_openat2=openat2)
    assert len(read_in_image(image, "/config/big", limit=50 * 1024 * 1024,
                             use_openat2=openat2)) == 50 * 1024 * 1024


def test_no_fd_leak(image: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    for openat2 in (True, False):
        read_in_image(image, "/config/abs", use_openat2=openat2)
        with pytest.raises(ConfigError):
            read_in_image(image, "/config/up", use_openat2=openat2)
    assert set(os.listdir("/proc/self/fd")) == before


def test_kernel_openat2_is_really_used(image: Path) -> None:
    from protocol.config.image import _openat2
    root = os.open(image, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = _openat2(root, "/config/abs", os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert os.read(fd, 100) == b"image secret"
        finally:
            os.close(fd)
    finally:
        os.close(root)


@pytest.mark.parametrize("openat2", BACKENDS)
def test_chained_links_with_dotdot(image: Path, openat2: bool) -> None:
    (image / "config/chain").symlink_to("/config/dir/../../../etc/secret")
    (image / "config/chain2").symlink_to("chain")
    assert read_in_image(image, "/config/chain2", use_openat2=openat2) == b"image secret"
    assert read_in_image(image, "/config/dir/../etc/secret", use_openat2=openat2) == \
        b"image secret"


def test_load_container_in_image_names_the_file(image: Path) -> None:
    from protocol.config import load_container_in_image
    assert load_container_in_image(image, "/config/main.yaml").executable == "/bin/x"
    (image / "config/bad.yaml").write_text("executable: /x\nkill-timeout: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_container_in_image(image, "/config/bad.yaml")
    [p] = err.value.problems
    assert (p.file, p.key) == (str(image / "config/bad.yaml"), "kill-timeout")
    with pytest.raises(ConfigError) as err:
        load_container_in_image(image, "/config/none.yaml")
    [p] = err.value.problems
    assert p.file == str(image / "config/none.yaml") and f"in image {image}" in p.message


def test_without_ctypes_loaded_the_default_walks(image: Path) -> None:
    """The supervisor's case: a process without ctypes reads through the walk, the same
    file, and does not load ctypes for it (issue #10)."""
    repo = Path(__file__).resolve().parents[3]
    site = str(Path(yaml.__file__).resolve().parents[1])  # for the -S child
    code = ("import sys\nfrom protocol.config import read_in_image\n"
            f"print(read_in_image({str(image)!r}, '/config/abs').decode(), "
            "'ctypes' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": os.pathsep.join([str(repo), site])}, check=True,
                         timeout=60)  # fmt: skip
    assert out.stdout.split() == ["image", "secret", "False"]
