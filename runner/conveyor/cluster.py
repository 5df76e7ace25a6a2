"""The embedded PostgreSQL cluster: a private server under the project directory.

It is what `make run`, `conveyor db ...` and the test suite start. It listens on a
unix socket inside its own directory and on one loopback TCP port, preloads pg_cron,
and is reachable only by the user who created it (socket permissions 0700; TCP asks
for a generated password).

PostgreSQL refuses to run as root. When Conveyor runs as root, the cluster's files
belong to an unprivileged system user and every server command runs as that user.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from conveyor import settings
from conveyor.errors import ConveyorError

# The longest unix socket path the kernel accepts is 107 bytes (sun_path is 108 with a NUL).
_MAX_SOCKET_PATH = 107


def server_bin_dir() -> Path:
    """The bin directory of the newest installed PostgreSQL server (15 or newer)."""
    override = os.environ.get("CONVEYOR_PG_BIN")
    if override:
        return Path(override)
    candidates = []
    for postgres in Path("/usr/lib/postgresql").glob("*/bin/postgres"):
        try:
            candidates.append((int(postgres.parent.parent.name), postgres.parent))
        except ValueError:
            continue
    candidates = [c for c in candidates if c[0] >= 15]
    if not candidates:
        found = shutil.which("pg_ctl")
        if found:
            return Path(found).resolve().parent
        raise ConveyorError(
            "no PostgreSQL server (15 or newer) is installed: run `make bootstrap` as root, "
            "or install the Debian packages postgresql and postgresql-NN-cron"
        )
    return max(candidates)[1]


@dataclass(frozen=True)
class ServerUser:
    """The operating-system user that owns the cluster's files and runs the server."""

    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def resolve_server_user() -> ServerUser:
    """The current user, or, as root, an unprivileged system user (created if needed)."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    name = settings.server_os_user()
    if name is None:
        name = "postgres" if _user_exists("postgres") else "conveyor"
    if not _user_exists(name):
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
    entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise ConveyorError(f"CONVEYOR_PG_OS_USER={name} is root; PostgreSQL refuses to run as root")
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Cluster:
    """One private PostgreSQL cluster living in `root` (data/, run/, server.log, cluster.json)."""

    root: Path
    port: int
    dbname: str = "conveyor"
    superuser: str = "postgres"
    # The database whose pg_cron scheduler runs; by default the Conveyor database itself.
    cron_dbname: str | None = None

    @classmethod
    def embedded(cls) -> Cluster:
        """The project's embedded cluster, configured from the environment."""
        root = settings.embedded_dir()
        state = root / "cluster.json"
        if state.exists():
            saved = json.loads(state.read_text())
            return cls(
                root=root,
                port=saved["port"],
                dbname=saved["dbname"],
                superuser=saved["superuser"],
                cron_dbname=saved.get("cron_dbname"),
            )
        return cls(root=root, port=settings.embedded_port())

    # --- paths ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    # --- connection strings --------------------------------------------------------

    def url(self, dbname: str | None = None, *, tcp: bool = False) -> str:
        """A libpq URL usable by psql and psycopg: over the unix socket by default."""
        db = quote(dbname or self.dbname)
        if tcp:
            password = quote(self.password_file.read_text().strip(), safe="")
            return f"postgresql://{self.superuser}:{password}@127.0.0.1:{self.port}/{db}"
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{self.superuser}@/{db}?host={host}&port={self.port}"

    # --- lifecycle -----------------------------------------------------------------

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialized():
            return False
        result = self._run_as_server(["pg_ctl", "status", "-D", str(self.data_dir)], check=False)
        return result.returncode == 0

    def start(self) -> bool:
        """Create the cluster if needed and start it. Returns False if it was already running."""
        user = resolve_server_user()
        if not self.is_initialized():
            self._init(user)
        if self.is_running():
            return False
        result = self._run_as_server(
            ["pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60"],
            check=False,
        )
        if result.returncode != 0:
            raise ConveyorError(
                f"the embedded PostgreSQL did not start (port {self.port}): "
                f"{_tail(self.log_file) or result.stderr.strip() or result.stdout.strip()}"
            )
        self._wait_ready()
        self._ensure_database(self.dbname)
        if self.cron_dbname and self.cron_dbname != self.dbname:
            self._ensure_database(self.cron_dbname)
        return True

    def stop(self) -> bool:
        """Stop the server (fast shutdown). Returns False if it was not running."""
        if not self.is_running():
            return False
        self._run_as_server(["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60"])
        return True

    def server_version(self) -> str | None:
        version_file = self.data_dir / "PG_VERSION"
        return version_file.read_text().strip() if version_file.exists() else None

    # --- internals -----------------------------------------------------------------

    def _init(self, user: ServerUser) -> None:
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise ConveyorError(
                f"the socket path {socket_path} is longer than {_MAX_SOCKET_PATH} bytes; "
                "set CONVEYOR_EMBEDDED_DIR to a shorter directory"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        password = secrets.token_urlsafe(24)
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        if not user.is_current:
            for path in (self.root, self.socket_dir):
                os.chown(path, user.uid, user.gid)
            self._check_reachable(user)
        pwfile = self.root / ".initdb-password"
        pwfile.write_text(password + "\n")
        try:
            if not user.is_current:
                os.chown(pwfile, user.uid, user.gid)
            self._run_as_server(
                [
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        cron_db = self.cron_dbname or self.dbname
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# --- Conveyor's embedded cluster ---\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "unix_socket_permissions = 0700\n"
                "shared_preload_libraries = 'pg_cron'\n"
                f"cron.database_name = '{cron_db}'\n"
                # Background workers: pg_cron jobs need no password or loopback connection.
                "cron.use_background_workers = on\n"
                "max_worker_processes = 32\n"
                "timezone = 'UTC'\n"
                # Conveyor's queries are short; JIT compilation would cost more than it saves.
                "jit = off\n"
                "log_timezone = 'UTC'\n"
            )
        self.state_file.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "dbname": self.dbname,
                    "superuser": self.superuser,
                    "cron_dbname": self.cron_dbname,
                },
                indent=2,
            )
            + "\n"
        )

    def _check_reachable(self, user: ServerUser) -> None:
        probe = subprocess.run(
            ["test", "-w", str(self.root)],
            user=user.uid,
            group=user.gid,
            extra_groups=[],
            cwd="/",
            check=False,
        )
        if probe.returncode != 0:
            fallback = Path("/var/lib/conveyor") / hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
            raise ConveyorError(
                f"the server runs as the unprivileged user {user.name!r}, which cannot reach "
                f"{self.root} (a parent directory is private); set CONVEYOR_EMBEDDED_DIR to a "
                f"directory it can reach, e.g. CONVEYOR_EMBEDDED_DIR={fallback}"
            )

    def _run_as_server(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = resolve_server_user()
        program = str(server_bin_dir() / argv[0])
        as_other = not user.is_current
        result = subprocess.run(
            [program, *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root if self.root.exists() else "/",
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            user=user.uid if as_other else None,
            group=user.gid if as_other else None,
            extra_groups=[] if as_other else None,
        )
        if check and result.returncode != 0:
            raise ConveyorError(
                f"{argv[0]} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()}"
            )
        return result

    def _connect(self, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.superuser,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._connect("postgres"):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ConveyorError(
                        f"the embedded PostgreSQL does not accept connections: {exc}"
                    ) from exc
                time.sleep(0.1)

    def _ensure_database(self, dbname: str) -> None:
        with self._connect("postgres") as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))


def _tail(path: Path, lines: int = 5) -> str:
    if not path.exists():
        return ""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except PermissionError:
        return ""
