"""Shared fixtures: the real MNIST files, found through STUDY_DATA_DIR."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import optuna
import pytest

from objectives import load_mnist

# every test puts back the signal handlers, torch threads and Optuna verbosity an in-process command changed
pytest_plugins = ["process_state"]


def pytest_configure(config: pytest.Config) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The in-process commands share out the cores other programs leave free, measured once per
    # process (study.cli.busy_cores): measured here, before the suite's own processes run, so that
    # the zygote importing or a worker ending as the first in-process command started does not
    # give every later one a single thread (a session measured so ran its in-process tests 1.3 to
    # 1.9x slower).
    from study.cli import busy_cores

    busy_cores()
    if os.environ.get("STUDY_DATA_DIR"):
        # absolute, for the processes that tests start in other working folders
        os.environ["STUDY_DATA_DIR"] = str(Path(os.environ["STUDY_DATA_DIR"]).resolve())
    # The zygote (tests/cli_helpers.py) imports torch and the commands for the process tests while
    # the tests are collected, instead of at the first process test (about 4 s saved). Not for the
    # quick subset, which starts no process, nor for a collection only.
    if not config.option.collectonly and "not slow" not in (config.option.markexpr or ""):
        import cli_helpers  # after STUDY_DATA_DIR is made absolute: the processes' environment is copied now

        cli_helpers.start_zygote()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder with the four standard MNIST files; the tests need the real data."""
    value = os.environ.get("STUDY_DATA_DIR")
    if not value:
        pytest.fail("STUDY_DATA_DIR is not set: point it at a folder with the four MNIST IDX files "
                    "(e.g. STUDY_DATA_DIR=../shared/data/mnist)", pytrace=False)
    return Path(value)


@pytest.fixture(scope="session")
def mnist_5k(mnist_dir: Path):
    """5,000 training images and 2,000 validation images, on the CPU."""
    return fewer_validation_images(load_mnist(mnist_dir, device="cpu", train_samples=5000))


@pytest.fixture(scope="session")
def mnist_2k(mnist_dir: Path):
    """2,000 training images and 2,000 validation images, on the CPU."""
    return fewer_validation_images(load_mnist(mnist_dir, device="cpu", train_samples=2000))


def fewer_validation_images(data, n: int = 2000):
    """``data`` with the first ``n`` of its 10k validation images: for tests that compare two
    engines or two runs epoch by epoch, where evaluating the whole 10k at every epoch (in float64)
    was most of the work and the comparison is the same on any images."""
    from objectives import MnistData

    return MnistData(train_x=data.train_x, train_y=data.train_y, val_x=data.val_x[:n], val_y=data.val_y[:n],
                     test_x=data.test_x, test_y=data.test_y)


@pytest.fixture(autouse=True)
def _studies_validate_on_2k(request: pytest.FixtureRequest):
    """Every test's studies validate their trials on the first 2,000 of the 10k validation images
    (:func:`fewer_validation_images`), in this process and in the commands it starts
    (``cli_helpers.DEFAULT_ENV``, ``VALIDATE_ON_2K``: their spawned workers too). What the tests
    check of a study (what it prunes, drops, counts, queues, stores and prints; what its processes
    do) is the same on any images, and validating 10k images at every epoch was over half of a
    small trial's work. A test marked ``full_validation`` gets all 10k, as a user's study does.
    The report's final word is not affected (it chooses on the 10k and tests on the test set, as
    always); a module-scoped fixture, set up before this, uses :func:`validating_on_2k` itself."""
    import cli_helpers

    if request.node.get_closest_marker("full_validation"):
        cli_helpers.DEFAULT_ENV = cli_helpers.ENV
        try:
            yield
        finally:
            cli_helpers.DEFAULT_ENV = cli_helpers.VALIDATE_ON_2K
        return
    with validating_on_2k():
        yield


@contextlib.contextmanager
def validating_on_2k():
    """Studies run in this process in the block validate on 2,000 images (what every test gets:
    :func:`_studies_validate_on_2k`), for a module-scoped fixture."""
    import objectives.objective as objective_module

    load = objective_module.load_mnist
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(objective_module, "load_mnist", lambda *args, **kwargs: fewer_validation_images(load(*args, **kwargs)))
        yield


@pytest.fixture
def mnist_copy(mnist_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the four files (gzip, flat), for tests that damage or move them."""
    out = tmp_path / "mnist"
    out.mkdir()
    for path in mnist_dir.glob("*-ubyte.gz"):
        shutil.copy(path, out / path.name)
    assert len(list(out.iterdir())) == 4, f"expected the four MNIST .gz files in {mnist_dir}"
    return out


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on a free loopback port, in a temporary folder, for this session.

    Run as the unprivileged ``postgres`` user when the tests run as root (the server refuses
    root). ``.ci/run`` installs the Debian package when it is missing.
    """
    import subprocess

    from cli_helpers import free_port
    import tempfile

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.fail("PostgreSQL server binaries not found: apt-get install postgresql", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="lr-study-pg-"))
    base.chmod(0o755)
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    run(initdb, "-D", str(data), "-A", "trust", "-U", "lrstudy", "-E", "UTF8", "--no-sync")
    def stop() -> None:  # for a test of a server that goes away mid-study; start() brings it back
        run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")

    def start() -> None:
        run(pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60", "start", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200")

    start()
    try:
        yield {"port": port, "base": f"postgresql+psycopg://lrstudy@127.0.0.1:{port}", "stop": stop, "start": start}
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server; its URL."""
    import sqlalchemy

    # PostgreSQL cuts names at 63 bytes: a readable prefix and a hash of the whole test id, so that
    # two parametrizations of one test never share (and try to drop) one database; they did, and
    # the drop failed while this process still held pooled connections to the previous one
    import hashlib

    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40] + "_" + digest
    engine = sqlalchemy.create_engine(f"{postgres_server['base']}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return f"{postgres_server['base']}/{name}"
