"""A scratch PostgreSQL 15 cluster of a test's own (initdb into a temporary folder, its own port), for tests
that must restart, archive, back up and restore a server, which the machine's main cluster must never do.

PostgreSQL refuses to run as root, and pgBackRest refuses most commands as root. Tests run as root here, so
the cluster's folder is made outside pytest's tmp_path (``/tmp/pytest-of-root`` is 0700: the postgres user
cannot enter it), owned by ``postgres``, and every server and pgBackRest command goes through
``runuser -u postgres``. Run as another user, the commands run as that user and own everything themselves.
"""

from __future__ import annotations

import configparser
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.tools import PG_BIN, require_tool

ROOT_OWNER = "postgres"


def owner() -> str:
    """Who runs the clusters: ``postgres`` when the tests run as root, else the current user."""
    return ROOT_OWNER if os.geteuid() == 0 else getpass.getuser()


def as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", ROOT_OWNER, "--", *argv]


def run_as_owner(argv: list[str], *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(as_owner(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def scratch_root(prefix: str) -> Iterator[Path]:
    """A folder the cluster's owner owns, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # see the module docstring
    try:
        root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(root, ROOT_OWNER, ROOT_OWNER)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_owned_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if os.geteuid() == 0:
        shutil.chown(path, ROOT_OWNER, ROOT_OWNER)
    return path


def write_owned(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    if os.geteuid() == 0:
        shutil.chown(path, ROOT_OWNER, ROOT_OWNER)
    return path


class ScratchCluster:
    """One data directory and one port; started and stopped with pg_ctl as the owner."""

    def __init__(self, root: Path, name: str, port: int | None = None) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            require_tool(tool, package="postgresql-15", where=PG_BIN)
        if os.geteuid() == 0:
            require_tool("runuser", package="util-linux")
        self.root = root
        self.data = root / name
        self.port = port or free_port()
        self.log = root / f"{name}.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{owner()}@127.0.0.1:{self.port}/{database}"

    def initdb(self, *, profile: Path | None = None, settings: dict[str, str] | None = None) -> None:
        """initdb, then the profile included and ``settings`` after it (later lines win)."""
        run_as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", owner(), "--auth=trust", "-E", "UTF8"])
        lines = []
        if profile is not None:
            write_owned(self.data / "rmbg-profile.conf", profile.read_text())
            lines.append("include 'rmbg-profile.conf'")
        values = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            **(settings or {}),
        }
        lines += [f"{k} = {v}" for k, v in values.items()]
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.write("\n# tests/support/pgcluster.py\n" + "\n".join(lines) + "\n")

    def start(self, *options: str) -> float:
        """pg_ctl start (waiting until it accepts connections); the seconds it took."""
        if not self.log.exists():
            write_owned(self.log, "", 0o644)
        extra = ["-o", " ".join([f"-p {self.port}", *options])]
        started = time.monotonic()
        run_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120",
                      *extra, "start"], timeout=180)
        return time.monotonic() - started

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            run_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], check=False)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def pgbackrest_config(template: Path, root: Path, *, stanza: str, cluster: ScratchCluster) -> Path:
    """The project's pgbackrest.conf with its paths pointed into ``root`` and its stanza at ``cluster``."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(template.read_text())
    for key, sub in (("repo1-path", "repo"), ("spool-path", "spool"), ("log-path", "log"), ("lock-path", "lock")):
        parser.set("global", key, str(make_owned_dir(root / sub, 0o750)))
    sections = [s for s in parser.sections() if s != "global"]
    for s in sections:
        parser.remove_section(s)
    parser.add_section(stanza)
    parser.set(stanza, "pg1-path", str(cluster.data))
    parser.set(stanza, "pg1-port", str(cluster.port))
    parser.set(stanza, "pg1-socket-path", str(root))
    path = root / "pgbackrest.conf"
    with path.open("w") as fh:
        parser.write(fh)
    path.chmod(0o640)
    if os.geteuid() == 0:
        shutil.chown(path, ROOT_OWNER, ROOT_OWNER)
    return path
