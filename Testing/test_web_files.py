"""What `synbt web` may touch and who may connect (no browser, no trame)."""
import os

import pytest

from SynBTLib.errors import SynBTError
from SynBTLib.web.files import access_token, is_loopback, list_cases, resolve_inside


def _case(folder):
    folder.mkdir(parents=True)
    for k in range(2):
        (folder / f"phase_{k}.nii.gz").write_bytes(b"")
    return folder


def test_resolve_inside_refuses_escapes(tmp_path):
    root = tmp_path / "data"
    inside = _case(root / "a")
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "link_out")
    assert resolve_inside(root, "a") == inside.resolve()
    assert resolve_inside(root, "a/../a") == inside.resolve()
    for bad in ("../secret", "a/../../secret", "/etc/passwd", str(tmp_path / "secret"), "link_out", "link_out/x", "", "a\x00"):
        with pytest.raises(SynBTError, match="served folder"):
            resolve_inside(root, bad)


def test_list_cases_finds_case_folders_only(tmp_path):
    root = tmp_path / "data"
    _case(root / "p1")
    _case(root / "group" / "p2")
    (root / "empty").mkdir()
    os.symlink(tmp_path, root / "loop")  # a link out of the folder is not followed
    _case(tmp_path / "outside")
    assert list_cases(root) == ["p1", "group/p2"]


def test_token_policy():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    local = access_token("127.0.0.1", None)  # a token on loopback too: a web page could reach the socket
    assert local and len(local) >= 16 and access_token("127.0.0.1", None) != local
    token = access_token("0.0.0.0", None)
    assert token and len(token) >= 16 and access_token("0.0.0.0", None) != token  # random each start
    assert access_token("0.0.0.0", "a-long-enough-token") == "a-long-enough-token"
    with pytest.raises(SynBTError, match="token"):
        access_token("0.0.0.0", "short")
