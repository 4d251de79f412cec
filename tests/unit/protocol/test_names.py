"""protocol/names.py: the one grammar of sandbox, process and instance names (T-51)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.names import InstanceName, instance_name, is_name, parse_instance_name

names = st.text("abcXYZ019_-", min_size=1, max_size=64)


def test_parse_and_build() -> None:
    assert parse_instance_name("web/django.3") == InstanceName("web", "django", 3)
    assert parse_instance_name("a-b/c_d.0").entry == ("a-b", "c_d")
    assert instance_name("web", "django", 0) == "web/django.0"


@pytest.mark.parametrize("bad", [
    "web.3", "web/django", "/django.1", "web/.1", "web/django.x", "web/a.b.12",
    "web/django.01", "web/django.1000000", "we b/x.1", "wéb/x.1", "../x.1",
    "web/django.3\n", "x" * 65 + "/a.1",
])
def test_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an instance name SANDBOX/PROCESS.N"):
        parse_instance_name(bad)


@given(names, names, st.integers(0, 999_999))
def test_round_trip(sandbox: str, process: str, index: int) -> None:
    assert parse_instance_name(instance_name(sandbox, process, index)) == InstanceName(
        sandbox, process, index)


def test_is_name() -> None:
    assert is_name("web_1-a")
    assert not is_name("") and not is_name("a.b") and not is_name("x" * 65)
