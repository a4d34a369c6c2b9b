"""Who may use a shared Easel: credentials, where they come from, and limits on failed sign-ins.

The page (Gradio's login form) and the HTTP API (HTTP Basic, as A1111 clients send) read the same
`Credentials`. Passwords may be given hashed (`pbkdf2_sha256$<iterations>$<salt>$<hash>`, Django's
format: `python launch.py --hash-password` prints one); every comparison is constant-time, and a
wrong user name costs as much time as a wrong password.
"""

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import EaselError

HASH_PREFIX = "pbkdf2_sha256"
PBKDF2_ITERATIONS = 600_000
GENERATED_USER = "easel"
_VERIFIED_CACHE = 256  # HTTP Basic sends the password with every request: remember recent good ones


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(12)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{HASH_PREFIX}${iterations}${salt}${base64.b64encode(digest).decode()}"


def password_matches(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` (a hash as above, or the password itself)."""
    if stored.startswith(HASH_PREFIX + "$"):
        try:
            _, iterations, salt, expected = stored.split("$", 3)
            candidate = hash_password(password, int(iterations), salt)
        except ValueError:
            return False
        return hmac.compare_digest(candidate.encode(), f"{HASH_PREFIX}${iterations}${salt}${expected}".encode())
    # Plain: compare digests, so the time does not depend on where the strings differ or their length.
    return hmac.compare_digest(hashlib.sha256(password.encode()).digest(), hashlib.sha256(stored.encode()).digest())


def parse_credentials(text: str, where: str) -> dict[str, str]:
    """`user:pass[,user2:pass2]`, or one per line (a file; `#` starts a comment): name → password or hash."""
    users: dict[str, str] = {}
    for line in text.replace("\r", "").split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for pair in line.split(","):  # a hash has no commas (base64), so hashed lines split the same way
            pair = pair.strip()
            name, sep, password = pair.partition(":")
            if not sep or not name.strip() or not password:
                raise EaselError(
                    f"{where}: '{pair[:40]}' is not user:password. Write each login as name:password, "
                    "separated by commas or one per line."
                )
            users[name.strip()] = password
    return users


@dataclass
class Credentials:
    users: dict[str, str]   # name → password or hash
    _secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    _verified: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, user: str | None, password: str | None) -> bool:
        if not isinstance(user, str) or not isinstance(password, str):
            return False
        key = hmac.new(self._secret, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
        # An unknown name is checked against a hash too, so its answer takes as long as a wrong password.
        stored = self.users.get(user, _DUMMY_HASH)
        good = password_matches(password, stored) and user in self.users
        if good:
            with self._lock:
                self._verified[key] = True
                while len(self._verified) > _VERIFIED_CACHE:
                    self._verified.popitem(last=False)
        return good


_DUMMY_HASH = hash_password("not a password", salt="easel-dummy")


@dataclass(frozen=True)
class Access:
    """Who may use this server: None means open (only on this computer, or --insecure)."""

    page: Credentials | None
    api: Credentials | None
    notice: str | None = None   # what to tell the person at the terminal (a new password, once)


def credentials_from(inline: str | None, file: Path | None, flag: str) -> Credentials | None:
    users: dict[str, str] = {}
    if inline:
        users.update(parse_credentials(inline, flag))
    if file:
        try:
            users.update(parse_credentials(Path(file).read_text(encoding="utf-8"), str(file)))
        except OSError as error:
            raise EaselError(f"Could not read the password file {file}: {error.strerror}. Check the path.") from None
    return Credentials(users) if users else None


def generated_access(access_file: Path) -> tuple[Credentials, str]:
    """The stored access password's credentials, creating one the first time.

    Returns the credentials and a notice: the new password (shown once, stored only hashed), or
    where the earlier one is kept."""
    if access_file.exists():
        users = parse_credentials(access_file.read_text(encoding="utf-8"), str(access_file))
        return Credentials(users), (
            f"Other computers sign in as '{GENERATED_USER}' with the access password created on the first "
            f"--listen start. Forgot it? Delete {access_file} and start again for a new one."
        )
    password = secrets.token_urlsafe(12)
    access_file.parent.mkdir(parents=True, exist_ok=True)
    # Created private (0600) before anything is written to it.
    descriptor = os.open(access_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(f"# Easel's access password for --listen, hashed. Delete this file for a new one.\n"
                     f"{GENERATED_USER}:{hash_password(password)}\n")
    return Credentials({GENERATED_USER: hash_password(password)}), (
        f"Easel is shared on your network, so it needs a password. Sign in as '{GENERATED_USER}' with "
        f"password: {password}\nIt is shown only this once (kept hashed in {access_file}); "
        "use --auth user:password to choose your own."
    )


def server_access(
    listen: bool,
    auth: str | None,
    auth_file: Path | None,
    api_auth: str | None,
    insecure: bool,
    access_file: Path,
) -> Access:
    """Decide who may use the server. Sharing on the network never opens an unguarded door unless
    the user asks for it with --insecure."""
    page = credentials_from(auth, auth_file, "--auth")
    notice = None
    if page is None and listen and not insecure:
        page, notice = generated_access(access_file)
    if page is None and listen:
        notice = "--insecure: anyone on your network can use Easel without a password."
    api = credentials_from(api_auth, None, "--api-auth") or page
    return Access(page=page, api=api, notice=notice)


class LoginLimiter:
    """Failed sign-ins per client address: a few are free, then each one doubles the wait.

    Thread-safe; remembers at most `max_clients` addresses (the oldest are forgotten)."""

    def __init__(self, free_failures: int = 5, first_wait: float = 2.0, max_wait: float = 900.0,
                 max_clients: int = 10_000, clock=time.monotonic):
        self.free_failures = free_failures
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address → (count, blocked until)
        self._lock = threading.Lock()

    def wait_seconds(self, address: str) -> float:
        """How long this address must wait before it may try again (0: now)."""
        with self._lock:
            count, until = self._failures.get(address, (0, 0.0))
            return max(0.0, until - self._clock())

    def failed(self, address: str) -> None:
        with self._lock:
            count, _ = self._failures.pop(address, (0, 0.0))
            count += 1
            extra = count - self.free_failures
            wait = min(self.max_wait, self.first_wait * 2 ** (extra - 1)) if extra > 0 else 0.0
            self._failures[address] = (count, self._clock() + wait)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


def too_many_attempts_message(seconds: float) -> str:
    return f"Too many wrong passwords from your computer. Wait {max(1, round(seconds))} seconds, then try again."
