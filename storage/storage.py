"""One place that turns a storage URL into an Optuna storage that is safe to share.

SQLite: the folder is created, the file is switched to WAL (persistent in the file, so readers
such as optuna-dashboard never block the writers), every connection waits up to
``lock_timeout`` seconds for a lock instead of failing with "database is locked", and every
transaction starts with ``BEGIN IMMEDIATE`` (see :func:`_serialize_sqlite_transactions`), without
which two workers can take the same queued trial.
PostgreSQL (``postgresql+psycopg://…``, the ``postgres`` extra): connections are checked before
use and a connection attempt gives up after ``CONNECT_TIMEOUT`` (10 s) instead of hanging.
Every RDB storage runs heartbeats: a trial whose worker died is marked FAIL once its heartbeat
is ``grace_period`` seconds old, and is queued again once (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import functools
import random
import shlex
import shutil
import re
import sqlite3
import textwrap
from urllib.parse import quote, unquote_plus
import time
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.storages._rdb import models as _optuna_models  # its table names only
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import URL, make_url

__all__ = ["DEFAULT_STORAGE", "StorageError", "check_writable", "dashboard_command", "hide_password", "open_storage",
           "sqlite_path", "storage_failure"]

#: Where ``study.run`` keeps its studies unless told otherwise (relative to the working folder).
DEFAULT_STORAGE = "sqlite:///studies/lr-study.db"
#: Seconds a PostgreSQL connection attempt may take (libpq's connect_timeout) before it fails, not hangs.
CONNECT_TIMEOUT = 10

_EXAMPLES = "e.g. sqlite:///studies/lr-study.db or postgresql+psycopg://user:password@host:5432/db"


class StorageError(RuntimeError):
    """A storage URL that cannot be used; the message is one line naming it and why, with every
    password in it masked (:func:`hide_password`: a driver's own error may quote it)."""

    def __init__(self, message: str) -> None:
        super().__init__(hide_password(message))


#: A database URL's password, whatever characters it holds: from ``scheme://user:`` to the first
#: ``@`` that a host and the end of the authority follow (a raw ``@``, a space or a quote in the
#: password is still the password; SQLAlchemy and libpq accept them), and a ``password=`` query
#: value. Masking by a character class stopped at the first space or quote and left the rest.
#: Within one line, and not a port (``http://host:8080/`` followed by an ``@`` later on the line).
_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s:/@'\"]*:)(?!\d+(?:[/?#\s]|$))(?P<pw>[^\n]{0,256}?)"
                       r"@(?=[^@\s/?#'\"]*(?:[/?#\s'\"]|$))|(?P<query>[?&]password=)(?P<qv>[^&#\s]*)")
#: every password seen in a URL this process masked, in each spelling (as typed, percent-decoded,
#: percent-encoded): an error message of a driver may quote it without its URL around it
_SECRETS: set[str] = set()
_SHORTEST_SECRET = 4  # shorter ones are masked in their URL only: "***" for every "ab" would garble the text


def hide_password(text: str) -> str:
    """``text`` with the password of every database URL in it shown as ``***``, as SQLAlchemy's
    ``render_as_string(hide_password=True)`` shows it: for anything printed or stored (a command
    line, a message, a stored attr), so that a study's readers never see the database password,
    whatever characters it holds; a password seen once is masked wherever it appears again."""
    def mask(m: re.Match) -> str:
        secret = m["pw"] if m["head"] else m["qv"]
        # with a raw "@" the driver takes what follows it for the host, and says so in its errors
        for piece in [secret, *(secret[i + 1:] for i, c in enumerate(secret) if c == "@")]:
            if len(piece) >= _SHORTEST_SECRET:
                _SECRETS.update({piece, unquote_plus(piece), quote(unquote_plus(piece), safe="")})
        return m["head"] + "***@" if m["head"] else m["query"] + "***"

    def known(text: str) -> str:
        for secret in sorted(_SECRETS, key=len, reverse=True):  # the longest first: "a b" before "a"
            text = text.replace(secret, "***")
        return text

    return known(_PASSWORD.sub(mask, known(text)))


def _one_line(e: BaseException) -> str:
    return textwrap.shorten(str(e), width=300, placeholder=" …")  # whole words


def _remember_secrets(parsed: URL) -> None:
    """The password of a parsed URL, and any ``password`` query value, in every spelling, for
    :func:`hide_password` (a query value may hold a space that ends the URL in a text)."""
    query = parsed.query.get("password")
    for secret in [parsed.password, *([query] if isinstance(query, str) else query or ())]:
        if secret is not None and len(str(secret)) >= _SHORTEST_SECRET:
            secret = str(secret)
            _SECRETS.update({secret, quote(secret, safe=""), quote(secret, safe="").replace("%20", "+")})


def _parse(url: str) -> URL:
    hide_password(url)  # its password remembered, even in a URL SQLAlchemy cannot parse
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise StorageError(f"malformed storage URL {url!r} ({_one_line(e)}); {_EXAMPLES}") from None
    _remember_secrets(parsed)
    try:
        parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(
            f"unsupported storage URL {url!r}: no database dialect {parsed.drivername!r}; {_EXAMPLES}"
        ) from None
    return parsed


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, else None."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(parsed.database) if parsed.database and parsed.database != ":memory:" else None


NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "ceph", "glusterfs", "lustre", "9p")


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the file system holding ``path`` (the longest matching mount point)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    target, best, kind = str(path.resolve()), "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = fields[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


#: the tables an Optuna storage holds (its schema's, and Alembic's for its migrations)
_OPTUNA_TABLES = frozenset({"studies", "study_directions", "study_system_attributes", "study_user_attributes",
                            "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes",
                            "trial_user_attributes", "trial_values", "trials", "version_info", "alembic_version"}) \
    | frozenset(_optuna_models.BaseModel.metadata.tables)  # and any a later Optuna adds


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` that cannot change a byte of it."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)


def _optuna_names(tables: set[str]) -> bool:
    """Whether every table but SQLite's own (``sqlite_*``) has a name Optuna (or Alembic) uses."""
    return {t for t in tables if not t.startswith("sqlite_")} <= _OPTUNA_TABLES


def _optuna_tables(path: Path, tables: set[str]) -> bool:
    """Whether ``tables`` of the SQLite file ``path`` are an Optuna storage's: Optuna's names only
    (SQLite's own ``sqlite_*`` aside), version_info among them with Optuna's columns."""
    if "version_info" not in tables or not _optuna_names(tables):
        return False
    connection = _read_only(path)
    try:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(version_info)")}
    finally:
        connection.close()
    return {"schema_version", "library_version"} <= columns


def _half_made(path: Path, tables: set[str]) -> bool:
    """Whether ``tables`` of the SQLite file ``path`` are an Optuna storage that another process is
    creating now (or was killed creating): some of Optuna's tables, not yet version_info, every one
    empty. Optuna creates its tables one statement at a time, so a process started a moment after
    another on a new file saw ``studies`` alone and refused it as another program's database;
    nothing of anyone's is in empty tables of Optuna's names, and Optuna completes the schema."""
    if "version_info" in tables or not _optuna_names(tables):
        return False
    connection = _read_only(path)
    try:
        return not any(connection.execute(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone()[0]
                       for table in tables if not table.startswith("sqlite_"))
    finally:
        connection.close()


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of the SQLite file ``path``, read without changing a byte of it (a read-only
    connection; it still sees what other processes' open transactions have committed), after
    SQLite's ``quick_check`` of the whole file: a damaged one (garbage written into its middle)
    raises ``sqlite3.DatabaseError`` here, before anything is written into it."""
    connection = _read_only(path)
    try:
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"damaged: {'; '.join(problems)}")
        return {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        connection.close()


def _prepare_sqlite(url: str, parsed: URL, create: bool = True) -> None:
    if not parsed.database or parsed.database == ":memory:":
        raise StorageError(
            f"in-memory SQLite ({url!r}) cannot be shared by workers or read by the dashboard; "
            "give a file, e.g. sqlite:///studies/lr-study.db"
        )
    path = Path(parsed.database)
    if not create and not path.exists():
        raise StorageError(f"no database at {path} (storage {url!r}); give the --storage that study.run used")
    kind = filesystem_type(path.parent)
    if kind in NETWORK_FILESYSTEMS:  # WAL needs shared memory between the processes: one host only
        raise StorageError(
            f"storage {url!r} is on a network file system ({kind}), where SQLite cannot lock safely; "
            "use PostgreSQL for studies shared between machines (postgresql+psycopg://…)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the folder {path.parent} for storage {url!r} ({_one_line(e)})") from None
    if path.is_dir():
        raise StorageError(f"storage {url!r} names a folder, not a database file: {path}")
    if path.exists() and path.stat().st_size > 0:
        # Another program's database is left exactly as it is: Optuna would add its tables to it
        # (and WAL would rewrite its header). An Optuna storage has Optuna's tables and no other,
        # its version_info with Optuna's columns (a version_info table alone was taken for one).
        try:
            tables = _sqlite_tables(path)
        except sqlite3.DatabaseError as e:
            raise StorageError(_sqlite_problem(url, path, e)) from None
        if tables and not _optuna_tables(path, tables) and not _half_made(path, tables):
            shown = ", ".join(sorted(tables)[:5]) + (", …" if len(tables) > 5 else "")
            raise StorageError(f"storage {url!r}: {path} is a database of another program (tables: {shown}), not an "
                               "Optuna storage; left as it is: give another file")
    try:
        connection = sqlite3.connect(path, timeout=60)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.DatabaseError as e:  # OperationalError (cannot open) is a subclass
        raise StorageError(_sqlite_problem(url, path, e)) from None


#: SQLite's primary result codes for a file that is damaged or is not a database at all
_SQLITE_DAMAGED = {11: "SQLITE_CORRUPT", 26: "SQLITE_NOTADB"}
_SQLITE_DISK = {10: "SQLITE_IOERR", 13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN", 8: "SQLITE_READONLY"}


def _sqlite_problem(url: str, path: Path, e: sqlite3.DatabaseError) -> str:
    """One line for ``e`` on the SQLite file ``path``: a damaged file is told apart from a disk
    that is full or cannot be written (SQLite's result code; the free space), so that nobody
    restores an old copy over an intact database and loses the trials since."""
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if primary in _SQLITE_DAMAGED or (primary is None and ("not a database" in str(e) or "malformed" in str(e))):
        return (f"storage {url!r}: {path} is not a usable SQLite database ({_one_line(e)}); left as it is: "
                "restore it from a copy, or give another file")
    if primary == 13 or (free is not None and free < 1 << 20):
        return (f"storage {url!r}: the disk of {path} is full ({_one_line(e)}; {free or 0:,} bytes free); the "
                "database is left as it is: free some space and run the same command again")
    if primary in _SQLITE_DISK:
        return (f"storage {url!r}: {path} cannot be read or written ({_one_line(e)}, {_SQLITE_DISK[primary]}: "
                "the disk, its permissions or a lock, not the file's content); left as it is")
    return f"storage {url!r}: {path} is not a usable SQLite database ({_one_line(e)}); left as it is"


def _serialize_sqlite_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Make each transaction on ``engine`` (whose connections are opened with
    ``isolation_level=None``) hold SQLite's write lock from its first statement.

    Optuna updates a trial's state by reading it and then writing it in one transaction, with
    ``SELECT … FOR UPDATE``, which SQLite ignores; and Python's sqlite3 opens the transaction
    only at the write, so the read is not part of it. Two workers can then both see a queued
    (WAITING) trial, both mark it RUNNING and both run it (measured: 4 processes asking for 40
    queued trials got 22 to 25 distinct ones; optuna/optuna#4621), and the second to finish
    dies on "Cannot tell a COMPLETE trial". This is SQLAlchemy's documented recipe for
    serializable SQLite transactions: the driver's own BEGIN is turned off (the connect
    argument) and every transaction begins with BEGIN IMMEDIATE, so each read-then-write runs
    alone. Readers in other processes (the dashboard) are not blocked: WAL gives them a snapshot.
    """

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_storage(
    url: str = DEFAULT_STORAGE,
    *,
    heartbeat_interval: int = 60,
    grace_period: int | None = None,
    max_retry: int = 1,
    lock_timeout: float = 60.0,
    create: bool = True,
    on_heartbeat_error: Callable[[str], None] | None = None,
    call_guard: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
) -> RDBStorage:
    """An Optuna RDB storage for ``url`` with heartbeats and the settings described above.

    Args:
        url: SQLAlchemy URL (``sqlite:///FILE``, ``postgresql+psycopg://…``, any RDB URL).
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: seconds without a heartbeat before a trial counts as dead (default: twice
            the interval).
        max_retry: how many times a dead worker's trial is queued again.
        lock_timeout: SQLite only: seconds a connection waits for a lock.
        create: False for a reader (``study.report``): a SQLite file that does not exist is an
            error, not a new empty database.
        on_heartbeat_error: called with the database's one-line reason when a heartbeat could not
            be recorded after its retries (see :class:`_SteadyHeartbeats`); default: nothing.
        call_guard: a context manager entered around each of the storage's calls, each of which
            is one transaction or more (the commands give ``study.interrupt.interrupts_held``: a
            KeyboardInterrupt raised inside SQLAlchemy left SQLite's write lock held); default:
            nothing.

    Raises:
        StorageError: a malformed or unsupported URL, a folder that cannot be created, a file that
            is not a database, a server that cannot be reached.
    """
    if heartbeat_interval < 1 or (grace_period is not None and grace_period < 1) or max_retry < 0:
        raise ValueError(f"bad heartbeat settings: {heartbeat_interval=}, {grace_period=}, {max_retry=}")
    parsed = _parse(url)
    engine_kwargs: dict[str, object]
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite(url, parsed, create)
        engine_kwargs = {"connect_args": {"timeout": lock_timeout, "isolation_level": None}}
    elif parsed.get_backend_name() == "postgresql":
        # many workers: keep a small pool each, drop dead connections, never hang on connect
        engine_kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4,
                         "connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    shown = hide_password(url)  # SQLAlchemy's rendering left what follows a raw '@' in the password
    try:
        for attempt in range(_SCHEMA_TRIES):
            try:
                with warnings.catch_warnings():
                    # heartbeats are marked experimental in Optuna; they are what makes crashes recoverable
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = _SteadyHeartbeats(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period or 2 * heartbeat_interval,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                    )
                storage.on_heartbeat_error = on_heartbeat_error
                if call_guard is not None:
                    storage.call_guard = call_guard
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                    sqlalchemy.exc.OperationalError) as e:
                # Processes started together on a new database race to create Optuna's tables and
                # its version row ("UNIQUE constraint failed: alembic_version", "relation already
                # exists"); the losers find the schema made on the next try.
                if attempt == _SCHEMA_TRIES - 1 or not _lost_schema_race(e):
                    raise
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
        if parsed.get_backend_name() == "sqlite":
            _serialize_sqlite_transactions(storage.engine)
        return storage
    except ImportError as e:  # the dialect exists but its database driver is not installed
        raise StorageError(
            f"storage {shown!r} needs the database driver for {parsed.drivername!r}, which is not "
            f"installed ({_one_line(e.__cause__ or e)}); for PostgreSQL: pip install 'lr-study[postgres]'"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, OSError) as e:
        raise StorageError(f"cannot open storage {shown!r}: {_one_line(e)}") from None


_SCHEMA_TRIES = 5


class _SteadyHeartbeats(RDBStorage):
    """An RDBStorage whose ``record_heartbeat`` never raises. Optuna's heartbeat thread (one trial
    at a time) and ``study.recovery.Heartbeats`` (the fused engine) both stop for good on their
    first exception, printing a thread traceback: one transient error (a lock held too long, a
    full disk, a server restarting) then leaves every trial in flight to be failed as dead. Here
    a failed heartbeat is retried after 0.5, 1, 2, … s (within a quarter of the interval), then
    given up until the next beat, and ``on_heartbeat_error`` hears the reason."""

    on_heartbeat_error: Callable[[str], None] | None = None
    #: entered around each call of the storage's own (see :func:`open_storage`)
    call_guard: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    #: who claims the trials this process sets RUNNING (``study.recovery.owner()``): written as the
    #: trial's ``worker`` attr in the same call, so that no signal between ``ask`` and the objective
    #: leaves a trial that names no process; None: not claimed here
    claim_as: str | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # a process's own way of saying it (often not picklable), its trials and its name
        for own in ("on_heartbeat_error", "call_guard", "_started_here", "last_started", "claim_as"):
            state.pop(own, None)
        return state

    @property
    def started_here(self) -> set[int]:
        """The ids of the trials this process set RUNNING (created, or taken from the queue) and
        has not finished: for an interruption to find a trial it left RUNNING outside the
        objective (a signal inside ``study.ask``, after the trial's row was written)."""
        if "_started_here" not in self.__dict__:
            self._started_here: set[int] = set()
        return self._started_here

    #: the id of the trial this process set RUNNING last (None: none yet): one trial at a time, the
    #: one an interruption ended, also when Optuna failed it before the objective said why
    last_started: int | None = None

    def _started(self, trial_id: int) -> None:
        self.started_here.add(trial_id)
        self.last_started = trial_id
        if self.claim_as is not None:
            self.set_trial_user_attr(trial_id, "worker", self.claim_as)

    def _create_new_trial(self, study_id: int,
                          template_trial: optuna.trial.FrozenTrial | None = None) -> optuna.trial.FrozenTrial:
        # the private method: Optuna's cache in front of an RDBStorage (every study's) calls it,
        # not create_new_trial
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == optuna.trial.TrialState.RUNNING:
            self._started(trial._trial_id)
        return trial

    def set_trial_state_values(self, trial_id: int, state: optuna.trial.TrialState,
                               values: Sequence[float] | None = None) -> bool:
        done = super().set_trial_state_values(trial_id, state, values)
        if done and state == optuna.trial.TrialState.RUNNING:
            self._started(trial_id)
        elif state.is_finished():
            self.started_here.discard(trial_id)
        return done

    def record_heartbeat(self, trial_id: int) -> None:
        budget = max(0.5, (self.heartbeat_interval or 1) / 4)
        delay, waited = 0.5, 0.0
        while True:
            try:
                super().record_heartbeat(trial_id)
                return
            except Exception as e:  # noqa: BLE001 - the database's failures come in many types
                reason = storage_failure(e)
                if reason is None:
                    raise  # not the database: a bug
                if waited + delay > budget:
                    if self.on_heartbeat_error is not None:
                        self.on_heartbeat_error(reason)
                    return
                time.sleep(delay)
                waited += delay
                delay *= 2


def _guarded(name: str, own: Callable | None) -> Callable:
    """``name`` of ``_SteadyHeartbeats`` within its ``call_guard``: its ``own`` method, else
    RDBStorage's as found at each call (as plain inheritance would find it)."""

    @functools.wraps(own or getattr(RDBStorage, name))
    def call(self: _SteadyHeartbeats, *args: object, **kwargs: object) -> object:
        with self.call_guard():
            if own is not None:
                return own(self, *args, **kwargs)
            return getattr(super(_SteadyHeartbeats, self), name)(*args, **kwargs)

    return call


# every method of RDBStorage's and this class's own (a call within another call only nests)
for _name in [n for n, f in {**vars(RDBStorage), **vars(_SteadyHeartbeats)}.items()
              if isinstance(f, types.FunctionType) and not n.startswith("__")]:
    setattr(_SteadyHeartbeats, _name, _guarded(_name, vars(_SteadyHeartbeats).get(_name)))
del _name


def check_writable(storage: RDBStorage, study_name: str) -> None:
    """Raise the database's own error (SQLAlchemy's) if the study ``study_name`` cannot be written
    (a read-only file or server, a read-only role, an immutable file): its row is updated to
    itself in a transaction that is rolled back, so nothing changes. For a command that writes to
    the study only after minutes of work (study.report's final word)."""
    study_id = storage.get_study_id_from_name(study_name)
    with getattr(storage, "call_guard", contextlib.nullcontext)(), storage.engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(sqlalchemy.text("UPDATE studies SET study_name = study_name WHERE study_id = :id"),
                               {"id": study_id})
        finally:
            transaction.rollback()


def _lost_schema_race(e: sqlalchemy.exc.SQLAlchemyError) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("unique constraint", "already exists", "duplicate key", "duplicate table"))


def storage_failure(e: BaseException) -> str | None:
    """If ``e`` (or an exception it was raised from or during) is the database failing (SQLAlchemy,
    the sqlite3 driver, Optuna's StorageInternalError: a full disk, a read-only or corrupt file, a
    server gone), the database's own one-line reason; else None. Optuna wraps such failures in
    other errors (a "Should not reach" RuntimeError when telling a trial fails), so the whole
    chain is searched, and the innermost database error gives the reason."""
    reasons: list[str] = []
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, optuna.exceptions.StorageInternalError)) \
                or type(e).__module__.startswith("psycopg"):
            orig = e.orig if isinstance(e, sqlalchemy.exc.DBAPIError) and e.orig is not None else e
            reasons.append(_one_line(orig).split(" [SQL:")[0].strip() or type(orig).__name__)
        e = e.__cause__ or e.__context__
    if not reasons:
        return None
    meaningful = [r for r in reasons if len(r.strip("()[] ")) > 2]
    return (meaningful or reasons)[-1]  # the innermost that says something


def dashboard_command(url: str) -> str:
    """The ``optuna-dashboard`` command for ``url``, with SQLite paths made absolute, shell-quoted,
    and any password shown as ``***`` (give it through ``PGPASSWORD`` or ``~/.pgpass`` instead)."""
    path = sqlite_path(url)
    if path is not None:
        url = f"sqlite:///{path.resolve()}"
    return f"optuna-dashboard {shlex.quote(hide_password(url))}"
