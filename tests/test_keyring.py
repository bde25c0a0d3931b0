import base64
import re

import pytest

from backup_assets.core.codec.keyring import ENV_VAR, Keyring, generate_entry
from backup_assets.core.errors import ArchiveError, ConfigError

K1 = base64.b64encode(b"\x01" * 32).decode()
K2 = base64.b64encode(b"\x02" * 32).decode()


def test_parse_order_active_and_get():
    kr = Keyring.parse(f"new:{K2}, old:{K1}")
    assert kr.active.id == "new" and kr.active.key == b"\x02" * 32
    assert kr.get("old").key == b"\x01" * 32
    assert kr.ids == ("new", "old") and "old" in kr and len(kr) == 2


def test_from_env_uses_given_mapping():
    assert Keyring.from_env({ENV_VAR: f"a:{K1}"}).active.id == "a"


def test_get_unknown_names_the_key_id():
    with pytest.raises(ArchiveError, match="'gone'"):
        Keyring.parse(f"a:{K1}").get("gone")


@pytest.mark.parametrize(
    "text, what",
    [
        (None, "not set"),
        ("", "empty"),
        ("   ", "empty"),
        (f"a:{K1},", "empty"),
        ("nocolon", "expected id:base64key"),
        (f"bad id:{K1}", "invalid key id"),
        (f"{'x' * 65}:{K1}", "invalid key id"),
        ("a:", "key is empty"),
        ("a:@@@notbase64@@@", "not valid standard base64"),
        ("a:" + base64.b64encode(b"\x03" * 16).decode(), "16 bytes, need 32"),
        (f"a:{K1},a:{K2}", "duplicate key id 'a'"),
    ],
)
def test_errors_name_variable_and_problem_without_key_material(text, what):
    with pytest.raises(ConfigError) as exc:
        Keyring.parse(text)
    msg = str(exc.value)
    assert ENV_VAR in msg and what in msg
    for secret in (K1, K2, "notbase64", base64.b64encode(b"\x03" * 16).decode()):
        assert secret not in msg


def test_repr_hides_keys():
    kr = Keyring.parse(f"a:{K1}")
    assert K1 not in repr(kr) and "\\x01" not in repr(kr.active) and "x01" not in repr(kr.active)


def test_generate_entry_round_trips():
    entry = generate_entry()
    kid, _, b64 = entry.partition(":")
    assert re.fullmatch(r"k\d{8}-[0-9a-f]{6}", kid)
    assert len(base64.b64decode(b64)) == 32
    kr = Keyring.parse(f"{generate_entry('mine')},{entry}")
    assert kr.active.id == "mine" and kid in kr
    assert generate_entry("x") != generate_entry("x")
    with pytest.raises(ConfigError):
        generate_entry("no spaces")
