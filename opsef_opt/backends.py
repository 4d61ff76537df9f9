"""The study's two databases: checked before any work, created so that a kill cannot break them.

Two promises live here:

- **Fail fast.** An Optuna storage or MLflow tracking URI that cannot be
  reached or written is reported in one line naming the key, within seconds
  and before anything is created (:func:`check_backends`).
- **Kill-safe creation.** A new SQLite database (``optuna.db``,
  ``mlflow.db``) is built under a temporary name and moved into place only
  when its tables are complete (:func:`ensure_sqlite`). A ``kill -9`` during
  creation leaves at most a temporary file, never a half-migrated database;
  two processes starting at once wait for each other on a lock file instead
  of migrating the same new database twice. A database left half-made by an
  older version (tables but no data) is moved aside and rebuilt.

Our SQLite databases run in WAL mode with ``synchronous=NORMAL``
(:func:`fast_commits`): a commit then appends to the write-ahead log without
waiting for the disk, which makes the dozen small commits of each trial
(Optuna's trial state, parameters and attributes; MLflow's run, params and
metrics) cheap. It stays safe against ``kill -9`` (the log is replayed on the
next open); only a power cut or OS crash may lose the last commits, never
corrupt the file. WAL needs a local disk: put ``studies/`` on NFS and use
PostgreSQL instead, as for several machines.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["BackendError", "check_backends", "check_storage", "check_tracking", "ensure_sqlite", "sqlite_path",
           "quiet_db_logs", "fast_commits"]

log = logging.getLogger("opsef_opt")

#: seconds a back-end may take to answer before it is reported unreachable
CONNECT_TIMEOUT = 5

_SQLITE_MAGIC = b"SQLite format 3\x00"

#: database files (path, inode) this process has already opened without error: the check is not
#: repeated for every storage opened on them; a file moved aside and rebuilt has a new inode
_verified: set[tuple[str, int]] = set()

#: resolved paths of the SQLite databases this process manages (their connections commit without fsync)
_fast: set[str] = set()


class BackendError(RuntimeError):
    """A storage or tracking URI that cannot be used; the message is one line naming the key."""


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (relative to the current directory), or None for other URLs."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def _check_sqlite_file(key: str, url: str, path: Path, creatable_under: Path | None) -> None:
    """The file is a SQLite database, or its folder exists (or is ours to create) and is writable."""
    if path.exists():
        if path.is_dir():
            raise BackendError(f"{key}={url}: {path} is a folder, not a database file")
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise BackendError(f"{key}={url}: {path} is not a SQLite database; point {key} to another file")
        if not os.access(path, os.W_OK):
            raise BackendError(f"{key}={url}: {path} is not writable")
        return
    folder = path.parent
    ours = creatable_under is not None and _is_within(folder, creatable_under)
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not ours and existing.resolve() != folder.resolve():
        raise BackendError(f"{key}={url}: folder {folder} does not exist; create it or choose another path")
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BackendError(f"{key}={url}: cannot create a database in {existing} (not a writable folder)")


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def check_storage(url: str, creatable_under: Path | None = None) -> None:
    """Raise :class:`BackendError` when the Optuna storage ``url`` cannot be used.

    SQLite: the file is a database or can be created (its folder exists, or
    lies under ``creatable_under``, which the tool creates). Server databases:
    a connection is opened with a timeout of :data:`CONNECT_TIMEOUT` seconds.
    """
    path = sqlite_path(url)
    if path is not None:
        _check_sqlite_file("storage", url, path, creatable_under)
        return
    if url.startswith("sqlite:"):
        return
    try:
        import sqlalchemy
    except ImportError:  # pragma: no cover - Optuna depends on SQLAlchemy
        return
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT})
    except ImportError as e:
        hint = " (pip install 'opsef-opt[postgres]')" if url.startswith("postgresql") else ""
        raise BackendError(f"storage={_hide_password(url)}: its database driver is not installed{hint}: {e}") from None
    except Exception as e:
        raise BackendError(f"storage={_hide_password(url)}: not a valid database URL: {_first_line(e)}") from None
    try:
        with engine.connect():
            pass
    except Exception as e:
        raise BackendError(f"storage={_hide_password(url)}: cannot connect: {_first_line(e)}") from None
    finally:
        engine.dispose()


def check_tracking(uri: str, creatable_under: Path | None = None) -> None:
    """Raise :class:`BackendError` when the MLflow tracking ``uri`` cannot be used.

    ``http(s)://`` servers must answer MLflow's ``/health`` within
    :data:`CONNECT_TIMEOUT` seconds; SQLite files are checked as for the
    storage; other schemes are left to MLflow.
    """
    path = sqlite_path(uri)
    if path is not None:
        _check_sqlite_file("tracking_uri", uri, path, creatable_under)
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT) as r:
                r.read(64)
        except urllib.error.HTTPError as e:
            raise BackendError(f"tracking_uri={uri}: the server answered {e.code} {e.reason} at {url}; "
                               f"is it an MLflow tracking server?") from None
        except (urllib.error.URLError, socket.timeout, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BackendError(f"tracking_uri={uri}: cannot reach the tracking server ({reason}); start it "
                               f"(mlflow server ...) or use the default SQLite store") from None


def check_backends(storage: str | None, tracking_uri: str | None, studies_dir: Path) -> None:
    """Check the storage and tracking URIs a command will use (``None``: not used)."""
    if storage is not None:
        check_storage(storage, studies_dir)
    if tracking_uri is not None:
        check_tracking(tracking_uri, studies_dir)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# --------------------------------------------------------------------------- kill-safe creation
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads) on ``path``; released when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_db_logs() -> Iterator[None]:
    """Hide the INFO lines database set-up prints (MLflow's table creation, Alembic's migrations)."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def _has_rows(path: Path, tables: tuple[str, ...]) -> bool:
    """True when any of ``tables`` in the SQLite file holds a row (tables that do not exist hold none)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        return any(con.execute(f'select 1 from "{t}" limit 1').fetchone() for t in tables if t in names)
    finally:
        con.close()


def ensure_sqlite(url: str, init: Callable[[str], None], data_tables: tuple[str, ...], what: str,
                  forget: Callable[[str], None] = lambda url: None) -> None:
    """Make sure the SQLite database of ``url`` exists, complete, before anyone opens it.

    ``init(url)`` creates the tables of a database at ``url`` (e.g. by
    opening it with MLflow or Optuna). A missing database is built under a
    temporary name next to it and renamed into place (atomic on POSIX); a
    lock file serialises processes that start at once. An existing database
    whose initialisation fails and whose ``data_tables`` hold no row (left
    half-made by a killed first start of an older version) is moved aside to
    ``<name>.broken-<time>`` and rebuilt; one holding data is reported.
    ``forget(url)`` drops what the library cached for a URL (an engine
    still connected to a file that was moved). Other URLs are left alone.
    """
    path = sqlite_path(url)
    if path is None:
        return
    with _file_lock(path.with_name(path.name + ".lock")):
        if path.exists() and path.stat().st_size > 0:
            fast_commits(path)  # before ``init`` opens it: that engine's connections are kept
        if _create(path, url, init, data_tables, what, forget):
            fast_commits(path)


def _create(path: Path, url: str, init: Callable[[str], None], data_tables: tuple[str, ...], what: str,
            forget: Callable[[str], None]) -> bool:
    """:func:`ensure_sqlite`'s work, under its lock; True when it built a new file."""
    if path.exists() and path.stat().st_size > 0:
        identity = (str(path.resolve()), path.stat().st_ino)
        if identity in _verified:
            return False
        try:
            with quiet_db_logs():
                init(url)
            _verified.add(identity)
            return False
        except Exception as e:
            if "locked" in str(e) or _has_rows(path, data_tables):
                raise BackendError(f"{what} database {path} cannot be opened ({_first_line(e)}); it holds "
                                   f"data, so it is left as it is: move it aside to start a new one") from None
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            forget(url)
            os.replace(path, aside)
            log.warning("%s database %s was left half-made by an interrupted start and held no data; "
                        "moved aside to %s and rebuilt", what, path, aside.name)
    # a name never used before: MLflow caches its store per URI, and a cached store of a deleted file
    # (the same folder built twice in one process) would not create the tables again
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}-{time.monotonic_ns()}")
    for stale in path.parent.glob(f".{path.name}.init-*"):
        stale.unlink(missing_ok=True)  # left by a start killed while building (we hold the lock)
    try:
        with quiet_db_logs():
            init(f"sqlite:///{tmp}")
        forget(f"sqlite:///{tmp}")
        os.replace(tmp, path)
        forget(url)  # an engine still connected to a file deleted meanwhile (a study folder removed in a notebook)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def fast_commits(path: Path) -> None:
    """Put the SQLite database at ``path`` in WAL mode; this process's connections to it skip the fsync.

    ``journal_mode=WAL`` is stored in the file (every later connection, of any
    process, uses it); ``synchronous=NORMAL`` is set on each new connection
    that SQLAlchemy (Optuna, MLflow) opens to a database in :data:`_fast`.
    """
    key = str(path.resolve())
    try:
        con = sqlite3.connect(key, timeout=60)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.Error as e:  # e.g. a read-only folder: the default journal works, only slower
        log.debug("WAL mode not set on %s: %s", key, e)
        return
    _fast.add(key)
    _listen()


def _listen() -> None:
    """Register (once) the SQLAlchemy hook that sets ``synchronous=NORMAL`` on our databases' connections."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)


def _on_connect(dbapi_connection, record) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    row = dbapi_connection.execute("PRAGMA database_list").fetchone()
    if row is not None and row[2] in _fast:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
