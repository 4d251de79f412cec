"""supervisor.main.parse_args: the command line broker/daemon.py builds, without argparse."""

from __future__ import annotations

import pytest

from supervisor.main import Args, UsageError, main, parse_args


def test_the_brokers_command_line() -> None:
    argv = ["--config", "/etc/lithos/master.yaml", "--fd", "7", "--user", "65534:65534",
            "--log-level", "debug"]
    assert parse_args(argv) == Args("/etc/lithos/master.yaml", 7, "65534:65534", "debug")


def test_the_metrics_base_x_m1() -> None:
    argv = ["--config", "/m.yaml", "--fd", "3", "--metrics-base", "/run/cantal/lithos"]
    assert parse_args(argv).metrics_base == "/run/cantal/lithos"
    assert parse_args(argv[:4]).metrics_base is None  # <runtime-dir>/metrics


def test_equals_form_and_the_flag() -> None:
    assert parse_args(["--config=/m.yaml", "--fd=3", "--log-stderr"]) == Args(
        "/m.yaml", 3, log_stderr=True)


@pytest.mark.parametrize(("argv", "error"), [
    (["--fd", "3"], "--config is required"),
    (["--config", "/m.yaml"], "--fd is required"),
    (["--config", "/m.yaml", "--fd", "three"], "--fd: 'three' is not a number"),
    (["--config", "/m.yaml", "--fd"], "--fd needs a value"),
    (["--config", "/m.yaml", "--fd", "3", "--bogus"], "unknown argument '--bogus'"),
])
def test_a_wrong_command_line_is_one_clear_error(argv: list[str], error: str) -> None:
    with pytest.raises(UsageError, match=f"^{error}$"):
        parse_args(argv)


def test_main_says_what_is_wrong_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/m.yaml"]) == 2
    err = capsys.readouterr().err
    assert "usage: lithos-supervisor --config MASTER --fd N" in err
    assert err.endswith("lithos-supervisor: error: --fd is required\n")
