"""Bad configs never take down running services (issue #11; E-33, 2.5, decision 4).

One live lithos_tree runs two sandboxes: `fz` (the one the configs are pushed to,
two instances) and `bystander` (one instance). Hypothesis generates process and
sandbox configs: valid-looking structure with one mutation (YAML that does not
parse, wrong types, unknown keys, huge or negative values, a missing image or
container config, bad tags, a secret that does not decrypt), arbitrary bytes, a
directory or nothing in place of the file. Properties:

- lithos_switch (in process, `supervisor.switch.main`) refuses a broken config:
  exit 1, a message naming the problem, no traceback, the target file and the
  running knots unchanged; a config it accepts is installed and takes effect.
- a config written in place and reloaded (Reload on the control socket, or SIGHUP
  which re-executes lithos_tree, as the manual says) leaves every running knot of
  the tree alive with the same pid; lithos_tree and a supervisor stay alive; the
  failure is reported (ReloadOk.config_errors, the status' config_error, or the
  supervisor's `config failed to load` log line).

Examples are few and derandomized for CI; LITHOS_FUZZ_EXAMPLES=200 runs more.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.config import check as lithos_check
from supervisor import switch
from tests.chaos.treefix import destroy, make_tree
from tests.e2e.conftest import Lithos

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

EXAMPLES = int(os.environ.get("LITHOS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 12, deadline=None, derandomize=not EXAMPLES, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

APP = """
executable: /bin/sh
arguments: ["-c", "echo up $LITHOS_NAME; exec sleep 100000"]
user-id: 1000
group-id: 1000
restart-timeout: 0
kill-timeout: 1
variables:
  mode: !Choice [fast, slow]
"""
SECRET_APP = APP + 'secret-environ:\n  TOKEN: "v2:AAAA:AAAA:notbase64!!"\n'
UNMAPPED_APP = APP + "volumes:\n  /data: !Persistent {path: /not-mapped}\n"

GOOD_ENTRY = {"image": "app.v1", "config": "/config/app.yaml", "instances": 2,
              "variables": {"mode": "fast"}}
GOOD = yaml.safe_dump({"a": GOOD_ENTRY})
BYSTANDER = "b: {image: app.v1, config: /config/app.yaml, variables: {mode: slow}}\n"
SANDBOX_EXTRA = "allow-users: [0-65535]\nallow-groups: [0-65535]\n"


class Tree:
    """The module's live tree, the knots' pidfds, and the good configs to restore."""

    def __init__(self, lithos: Lithos) -> None:
        self.lithos = lithos
        self.procs = lithos.config_dir / "processes" / "fz.yaml"
        self.sandbox = lithos.config_dir / "sandboxes" / "fz.yaml"
        self.good_sandbox = b""
        self.pidfds: dict[str, tuple[int, int]] = {}  # instance -> (pid, pidfd)

    def baseline(self) -> None:
        """Records the running knots (after the tree settled on the good configs)."""
        self.close()
        for name, pid in self.lithos.running().items():
            self.pidfds[name] = (pid, os.pidfd_open(pid))

    def close(self) -> None:
        for _pid, fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()

    def assert_untouched(self) -> None:
        """Every recorded knot is alive (its pidfd not readable) and still listed."""
        dead = [n for n, (_p, fd) in self.pidfds.items() if select.select([fd], [], [], 0)[0]]
        assert not dead, f"knots died: {dead}"
        running = self.lithos.running()
        assert {n: p for n, (p, _fd) in self.pidfds.items()} == running
        assert self.lithos.proc is not None and self.lithos.proc.poll() is None

    def restore(self) -> None:
        _replace(self.procs, GOOD.encode())
        _replace(self.sandbox, self.good_sandbox)


def _replace(path: Path, data: bytes | None) -> None:
    """`path` becomes a file holding data, a directory (data None), whatever it was."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)


@pytest.fixture(scope="module")
def tree() -> Iterator[Tree]:
    lithos = make_tree("fuzz")
    t = Tree(lithos)
    try:
        lithos.image("app.v1", {"app.yaml": APP})
        lithos.image("secret.v1", {"app.yaml": SECRET_APP})
        lithos.image("unmapped.v1", {"app.yaml": UNMAPPED_APP})
        lithos.sandbox("fz", processes=GOOD)
        lithos.sandbox("bystander", processes=BYSTANDER)
        t.good_sandbox = t.sandbox.read_bytes()
        lithos.start()
        for name in ("fz/a.0", "fz/a.1", "bystander/b.0"):
            lithos.wait_stdio(name.split("/")[0], rf"up {name}$")
        t.baseline()
        assert sorted(t.pidfds) == ["bystander/b.0", "fz/a.0", "fz/a.1"]
        yield t
    finally:
        t.close()
        destroy(lithos)


# -- strategies -------------------------------------------------------------------

ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.text(min_size=5000, max_size=5000, alphabet="x"),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=2),
)
INSTANCES = st.one_of(st.integers(-(2**40), -1), st.integers(10**4, 2**70), ODD)
IMAGES = st.one_of(st.sampled_from(["nope.v9", "", "..", "/abs", "a/b", "app.v1/..",
                                    "secret.v1", "app.v1\0"]), ODD)
CONFIGS = st.one_of(st.sampled_from(["/config/missing.yaml", "config/app.yaml",
                                     "/config/../app.yaml", "/", "/config"]), ODD)
VARIABLES = st.one_of(st.just({"mode": "medium"}), st.just({}), st.just({"other": "x"}),
                      st.just({"mode": "fast", "extra": "1"}), ODD)
KEYS = ["image", "config", "instances", "variables", "kind", "extra-secrets-namespaces",
        "ip-addresses"]


@st.composite
def process_config(draw: st.DrawFn) -> bytes:
    """A process config: the good one with one mutation, or something else entirely."""
    entry = dict(GOOD_ENTRY)
    how = draw(st.sampled_from(["instances", "image", "config", "variables", "unknown",
                                "drop", "kind", "entry", "top", "tag", "text", "bytes",
                                "name"]))
    doc: object = {"a": entry}
    if how in ("instances", "image", "config", "variables"):
        strategy = {"instances": INSTANCES, "image": IMAGES, "config": CONFIGS,
                    "variables": VARIABLES}[how]
        entry[how] = draw(strategy)
    elif how == "unknown":
        entry[draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in KEYS))] = \
            draw(ODD)
    elif how == "drop":
        del entry[draw(st.sampled_from(["image", "config"]))]
    elif how == "kind":
        entry["kind"] = draw(st.one_of(st.sampled_from(["daemon", "Daemon ", "Kill"]), ODD))
    elif how == "entry":
        doc = {"a": draw(ODD)}
    elif how == "top":
        doc = draw(st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.text()))
    elif how == "name":
        doc = {draw(st.sampled_from(["a b", "a/b", "", "-", "a" * 300, "é"])): entry}
    elif how == "tag":
        tag = draw(st.sampled_from(["!Bogus", "!TcpPort", "!Choice", "!!python/object",
                                    "!Sequence", "!!binary"]))
        field = draw(st.sampled_from(["instances", "image", "variables"]))
        text = yaml.safe_dump(doc).replace(f"{field}:", f"{field}: {tag}", 1)
        return text.encode()
    text = yaml.safe_dump(doc, allow_unicode=True)
    if how == "text":
        cut = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["\t", ": :", "{", "[", "&a *b", "\0", "---\n---",
                                     "*x", "%YAML 9.9\n"]))
        return (text[:cut] + junk + text[cut:]).encode()
    if how == "bytes":
        return draw(st.binary(max_size=200))
    return text.encode()


@st.composite
def sandbox_config(draw: st.DrawFn, image_dir: Path) -> bytes | None:
    """A sandbox config with one mutation; None stands for a directory in its place."""
    base = {"image-dir": str(image_dir), "allow-users": ["0-65535"],
            "allow-groups": ["0-65535"]}
    how = draw(st.sampled_from(["value", "unknown", "drop", "bytes", "dir", "text"]))
    if how == "dir":
        return None
    if how == "bytes":
        return draw(st.binary(max_size=200))
    if how == "value":
        key = draw(st.sampled_from(["image-dir", "allow-users", "allow-groups",
                                    "image-dir-levels", "secrets-private-key",
                                    "allow-tcp-ports", "used-images-list", "bridged-network"]))
        base[key] = draw(st.one_of(ODD, st.sampled_from(["/nonexistent", "relative", "-1",
                                                          "/etc/passwd"])))
    elif how == "unknown":
        base[draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in base))] = draw(ODD)
    elif how == "drop":
        del base["image-dir"]
    text = yaml.safe_dump(base, allow_unicode=True)
    if how == "text":
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["\t", "{", ": :", "!Bogus "])) + text[cut:]
    return text.encode()


# -- pushing ----------------------------------------------------------------------

def run_switch(tree: Tree, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = switch.main(["-C", str(tree.lithos.master), *args])
    return code, out.getvalue() + err.getvalue()


def check_code(tree: Tree) -> int:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        return lithos_check.main(["-C", str(tree.lithos.master)])


def reload_and_wait(tree: Tree, how: str) -> tuple[str, ...]:
    """Reload (control message or SIGHUP); waits for the fresh supervisor's `ready`."""
    lithos = tree.lithos
    mark = lithos.mark()
    errors: tuple[str, ...] = ()
    if how == "sighup":
        os.kill(lithos.pid, signal.SIGHUP)
    else:
        with lithos.control() as ch:
            ch.send(m.Reload(), 2)
            reply = ch.recv().message
        assert isinstance(reply, m.ReloadOk), reply
        errors = reply.config_errors
    lithos.wait_for(r"supervisor ready: ", timeout_s=60, start=mark)
    return errors


@FUZZ
@given(data=process_config())
def test_switch_refuses_broken_configs_and_changes_nothing(tree: Tree, data: bytes) -> None:
    new = tree.lithos.root / "new.yaml"
    new.write_bytes(data)
    before = tree.procs.read_bytes()
    code, said = run_switch(tree, "fz", str(new))
    assert "Traceback" not in said
    if code == 1:
        assert "unchanged" in said, said
        assert tree.procs.read_bytes() == before
        assert not (tree.procs.parent / ".tmp.fz").exists()
        tree.assert_untouched()
        return
    # Accepted: it must be a config that runs; it is installed; put the good one back.
    assert code == 0, said
    assert tree.procs.read_bytes() == data
    restore = tree.lithos.root / "good.yaml"
    restore.write_text(GOOD)
    code, said = run_switch(tree, "--wait", "--timeout", "60", "fz", str(restore))
    assert code == 0, said
    tree.baseline()


@FUZZ
@given(data=st.data())
def test_configs_written_in_place_keep_running_instances_decision4(
        tree: Tree, data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["processes", "sandbox", "absent"]), "which")
    if which == "sandbox":
        content = data.draw(sandbox_config(tree.lithos.image_dir), "sandbox")
        _replace(tree.sandbox, content)
    elif which == "absent":
        tree.procs.unlink()
    else:
        content = data.draw(st.one_of(process_config(), st.none()), "processes")
        _replace(tree.procs, content)
    how = data.draw(st.sampled_from(["reload", "reload", "sighup"]), "how")
    # lithos_check is the oracle: what it finds broken must keep every knot and be
    # reported; what it accepts (a mutation the YAML dump made harmless, an extra
    # variable) is a valid config and may restart them. An absent process config is
    # only a warning to lithos_check (T-26 gives the sandbox no processes); the tree
    # keeps what runs and says so (decision 4).
    broken = which == "absent" or check_code(tree) != 0
    mark = tree.lithos.mark()
    try:
        errors = reload_and_wait(tree, how)
        if broken:
            tree.assert_untouched()
        lines = "\n".join(tree.lithos.lines_since(mark))
        assert "Traceback" not in lines
        status = {sb.name: sb.config_error for sb in tree.lithos.status().sandboxes}
        reported = bool(errors or status.get("fz") or "fz: config failed to load" in lines
                        or "fz/a: config failed to load" in lines)
        assert reported == broken, (lines[-3000:], errors, status)
    finally:
        tree.restore()
    if broken:
        reload_and_wait(tree, "reload")
        tree.assert_untouched()
    else:  # back to the good config, and wait until the tree runs it
        good = tree.lithos.root / "good.yaml"
        good.write_text(GOOD)
        code, said = run_switch(tree, "--wait", "--timeout", "60", "fz", str(good))
        assert code == 0, said
        tree.baseline()
        assert sorted(tree.pidfds) == ["bystander/b.0", "fz/a.0", "fz/a.1"]


@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 3))
def test_a_valid_switch_takes_effect_e33(tree: Tree, count: int) -> None:
    new = tree.lithos.root / "count.yaml"
    new.write_text(yaml.safe_dump({"a": dict(GOOD_ENTRY, instances=count)}))
    try:
        code, said = run_switch(tree, "--wait", "--timeout", "60", "fz", str(new))
        assert code == 0, said
        running = sorted(n for n in tree.lithos.running() if n.startswith("fz/"))
        assert running == [f"fz/a.{i}" for i in range(count)]
    finally:
        new.write_text(GOOD)
        code, said = run_switch(tree, "--wait", "--timeout", "60", "fz", str(new))
    assert code == 0, said
    tree.baseline()


def test_a_switch_to_secrets_the_sandbox_cannot_decrypt_is_refused(tree: Tree) -> None:
    """The broker refuses a start with secret-environ and no secrets-private-key: the
    switch must refuse it too, not stop the running instances for it (#11)."""
    new = tree.lithos.root / "secret.yaml"
    new.write_text(yaml.safe_dump({"a": dict(GOOD_ENTRY, image="secret.v1")}))
    code, said = run_switch(tree, "fz", str(new))
    assert code == 1, said
    assert "secrets-private-key" in said and "unchanged" in said, said
    assert tree.procs.read_text() == GOOD
    tree.assert_untouched()


def test_a_switch_to_a_volume_outside_writable_paths_is_refused(tree: Tree) -> None:
    new = tree.lithos.root / "unmapped.yaml"
    new.write_text(yaml.safe_dump({"a": dict(GOOD_ENTRY, image="unmapped.v1")}))
    try:
        code, said = run_switch(tree, "fz", str(new))
        assert code == 1, said
        tree.assert_untouched()
    finally:
        if tree.procs.read_text() != GOOD:
            good = tree.lithos.root / "good.yaml"
            good.write_text(GOOD)
            run_switch(tree, "--wait", "--timeout", "60", "fz", str(good))
            tree.baseline()
