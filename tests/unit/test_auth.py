"""Credentials, the generated --listen password, and the failed sign-in limiter."""

import stat

import pytest

from app.auth import (
    GENERATED_USER,
    Credentials,
    LoginLimiter,
    hash_password,
    parse_credentials,
    password_matches,
    server_access,
)
from app.errors import EaselError


def test_hashed_and_plain_passwords_match_only_themselves():
    stored = hash_password("correct horse", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert password_matches("correct horse", stored)
    assert not password_matches("correct horsf", stored)
    assert password_matches("plain", "plain") and not password_matches("plain", "plain ")
    assert not password_matches("x", "pbkdf2_sha256$notanumber$salt$hash")


def test_credentials_check_names_and_passwords():
    credentials = Credentials({"ann": "pw1", "bob": hash_password("pw2", iterations=1000)})
    assert credentials.check("ann", "pw1") and credentials.check("bob", "pw2")
    assert credentials.check("bob", "pw2")  # again, from the cache of recent good sign-ins
    assert not credentials.check("ann", "pw2")
    assert not credentials.check("cid", "pw1")
    assert not credentials.check(None, "pw1") and not credentials.check("ann", None)


@pytest.mark.parametrize(
    "text, users",
    [
        ("ann:pw", {"ann": "pw"}),
        ("ann:pw,bob:p:w", {"ann": "pw", "bob": "p:w"}),
        ("# team\nann:pw\n\n bob : secret \n", {"ann": "pw", "bob": " secret"}),
    ],
)
def test_credentials_parse_from_flags_and_files(text, users):
    assert parse_credentials(text, "--auth") == users


@pytest.mark.parametrize("text", ["ann", "ann:", ":pw", "ann:pw,,"])
def test_malformed_credentials_say_how_to_write_them(text):
    with pytest.raises(EaselError, match="name:password"):
        parse_credentials(text, "--auth")


def test_listening_without_credentials_makes_a_password_once_and_keeps_it(tmp_path):
    access_file = tmp_path / "access-password.txt"
    first = server_access(True, None, None, None, False, access_file)
    password = first.notice.split("password: ")[1].split()[0]
    assert first.page.check(GENERATED_USER, password) and first.api is first.page
    assert stat.S_IMODE(access_file.stat().st_mode) == 0o600
    assert password not in access_file.read_text()  # stored hashed only
    again = server_access(True, None, None, None, False, access_file)
    assert again.page.check(GENERATED_USER, password)
    assert password not in again.notice and "Delete" in again.notice


def test_only_this_computer_or_insecure_opens_without_a_password(tmp_path):
    local = server_access(False, None, None, None, False, tmp_path / "a.txt")
    assert local.page is None and local.api is None and not (tmp_path / "a.txt").exists()
    open_door = server_access(True, None, None, None, True, tmp_path / "a.txt")
    assert open_door.page is None and "anyone on your network" in open_door.notice


def test_auth_file_and_separate_api_credentials(tmp_path):
    auth_file = tmp_path / "users.txt"
    auth_file.write_text(f"ann:{hash_password('pw', iterations=1000)}\n")
    access = server_access(True, "bob:pw2", auth_file, "robot:token", False, tmp_path / "a.txt")
    assert access.page.check("ann", "pw") and access.page.check("bob", "pw2")
    assert access.api.check("robot", "token") and not access.api.check("ann", "pw")
    with pytest.raises(EaselError, match="Could not read the password file"):
        server_access(True, None, tmp_path / "missing.txt", None, False, tmp_path / "a.txt")


def test_failed_sign_ins_are_free_a_few_times_then_each_doubles_the_wait():
    now = [100.0]
    limiter = LoginLimiter(free_failures=3, first_wait=2.0, max_wait=10.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.failed("10.0.0.2")
    assert limiter.wait_seconds("10.0.0.2") == 0
    limiter.failed("10.0.0.2")
    assert limiter.wait_seconds("10.0.0.2") == 2.0
    limiter.failed("10.0.0.2")
    assert limiter.wait_seconds("10.0.0.2") == 4.0
    for _ in range(5):
        limiter.failed("10.0.0.2")
    assert limiter.wait_seconds("10.0.0.2") == 10.0  # capped
    assert limiter.wait_seconds("10.0.0.3") == 0     # others are not affected
    now[0] += 10.0
    assert limiter.wait_seconds("10.0.0.2") == 0
    limiter.succeeded("10.0.0.2")
    limiter.failed("10.0.0.2")
    assert limiter.wait_seconds("10.0.0.2") == 0     # a good sign-in starts the count again


def test_the_limiter_forgets_the_oldest_addresses_beyond_its_size():
    limiter = LoginLimiter(free_failures=0, max_clients=2)
    for address in ("a", "b", "c"):
        limiter.failed(address)
    assert limiter.wait_seconds("a") == 0 and limiter.wait_seconds("c") > 0
