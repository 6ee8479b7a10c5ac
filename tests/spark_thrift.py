"""A Spark Thrift JDBC/ODBC server in local mode on loopback, for the tests that reach Spark as a
deployment does: through the engine's warehouse layer with a ``hive://`` URL (PyHive).

The server is the HiveThriftServer2 that pyspark's wheel ships (spark-hive-thriftserver jar; the
wheel has no start-thriftserver.sh, so it is started with spark-submit as that script does), with
a Derby metastore and a warehouse directory in a temporary folder. It is bounded: it must accept
connections within ``START_TIMEOUT`` seconds, it runs under coreutils ``timeout`` so it stops by
itself after ``LIFETIME`` seconds whatever happens to the test process, and ``stop()`` ends its
process group. The shop is copied from DuckDB as Parquet files that Spark tables point at.

Without Java or pyspark the caller skips with the reason, unless ENGINE_REQUIRE_SPARK=1 (.ci/run).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from servers import free_port

#: seconds the server may take to accept connections (a loaded 2-core machine took up to 70 s)
START_TIMEOUT = 240
#: seconds after which the server stops by itself (coreutils timeout), even if the tests hang
LIFETIME = 1800
#: a time zone far from UTC as the server's default: the engine's connections must set their own
SERVER_TIME_ZONE = "Pacific/Auckland"


def unavailable(reason: str):
    if os.environ.get("ENGINE_REQUIRE_SPARK"):
        pytest.fail(f"Spark is required here but cannot run: {reason}")
    pytest.skip(f"Spark unavailable: {reason}")


class ThriftServer:
    """``with ThriftServer() as server: server.url("shop")`` -> ``hive://engine@127.0.0.1:PORT/shop``."""

    def __init__(self):
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="engine-spark-"))
        self.log = self.directory / "thriftserver.log"
        self.process: subprocess.Popen | None = None
        self.started_in = 0.0

    def url(self, database: str = "default") -> str:
        return f"hive://engine@127.0.0.1:{self.port}/{database}"

    def start(self) -> "ThriftServer":
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            unavailable("no Java runtime (apt-get install openjdk-17-jre-headless)")
        try:
            import pyhive  # noqa: F401 - the hive:// SQLAlchemy dialect the engine connects with
            from pyspark.find_spark_home import _find_spark_home
        except ImportError as exc:
            unavailable(f"{exc.name} is not installed (pip install -e '.[test]')")
        home = Path(_find_spark_home())
        if not list((home / "jars").glob("spark-hive-thriftserver_*.jar")):
            unavailable(f"this pyspark has no spark-hive-thriftserver jar in {home / 'jars'}")
        d = self.directory
        command = [
            "timeout", "--kill-after=10", str(LIFETIME), str(home / "bin" / "spark-submit"),
            "--master", "local[2]", "--name", "engine-tests-thriftserver", "--driver-memory", "1g",
            "--class", "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
            "--driver-java-options", f"-Dderby.system.home={d / 'derby'} -XX:+UseSerialGC",
            "--conf", "spark.ui.enabled=false",
            "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
            "--conf", f"spark.sql.warehouse.dir={d / 'warehouse'}",
            "--conf", f"spark.sql.session.timeZone={SERVER_TIME_ZONE}",
            # small data: one shuffle partition, no adaptive re-planning, no whole-stage code generation
            # (the 17 due queries of a pass took 46 s instead of 66-73 s on this machine)
            "--conf", "spark.sql.shuffle.partitions=1", "--conf", "spark.sql.adaptive.enabled=false",
            "--conf", "spark.sql.codegen.wholeStage=false",
            "--hiveconf", f"hive.server2.thrift.port={self.port}",
            "--hiveconf", "hive.server2.thrift.bind.host=127.0.0.1",
            "--hiveconf", f"javax.jdo.option.ConnectionURL=jdbc:derby:;databaseName={d / 'metastore'};create=true",
            "spark-internal",
        ]
        env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1")
        started = time.monotonic()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        while time.monotonic() - started < START_TIMEOUT:
            if self.process.poll() is not None:
                self.stop()
                unavailable(f"the Thrift server exited with {self.process.returncode}: {self.tail()}")
            if self.accepts():
                self.started_in = time.monotonic() - started
                return self
            time.sleep(1)
        self.stop()
        pytest.fail(f"the Spark Thrift server did not accept connections within {START_TIMEOUT} s: {self.tail()}")

    def accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """The server going away at once (SIGKILL to its process group), as a crashed driver does."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """End the server's process group (spark-submit, its JVM); wait until the port is free."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "ThriftServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def copy_shop(duckdb_url: str, tables, server: ThriftServer, database: str) -> None:
    """The shop tables of a DuckDB file as Spark tables of ``database``: each written to Parquet by
    DuckDB (timestamps stay naive: Spark reads them as TIMESTAMP_NTZ), then declared in Spark."""
    folder = server.directory / "parquet" / database
    folder.mkdir(parents=True, exist_ok=True)
    duck = sa.create_engine(duckdb_url)
    with duck.begin() as conn:
        for name in tables:
            conn.execute(sa.text(f"COPY {name} TO '{folder / name}.parquet' (FORMAT parquet)"))
    duck.dispose()
    spark = sa.create_engine(server.url())
    with spark.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS {database}"))
        for name in tables:
            conn.execute(sa.text(f"CREATE TABLE {database}.{name} USING parquet LOCATION '{folder / name}.parquet'"))
    spark.dispose()
