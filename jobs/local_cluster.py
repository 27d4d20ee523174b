"""A Spark standalone cluster on this machine (one master, one worker, 127.0.0.1 only) for `make run-cluster`
and the cluster test, from the pip-installed Spark's `spark-class`.

    eval "$(python -m jobs.local_cluster start --dir airflow_home/cluster)"   # prints the driver's env
    python -m jobs.local_cluster stop --dir airflow_home/cluster

Ports are picked free so a test and a user's own cluster do not collide. Logs (master.log, worker.log,
and the executors' under work/) and the state `stop` reads (cluster.json) live in the given folder.
The worker runs with this checkout first on PYTHONPATH, so executors import the same `jobs` package
as the driver even when it is not the one pip-installed, and with conf/spark as SPARK_CONF_DIR, so the
executors' log4j2 keeps a failed task's error text (which can quote a value) out of their logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs.errors import IdresError

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPARK_CONF_DIR = PROJECT_ROOT / "conf" / "spark"  # log4j2.properties of the cluster's JVMs
# The master's REST submission server would take the fixed port 6066; drivers here use the RPC port.
DAEMON_PROPERTIES = "spark.master.rest.enabled false\n"

LOOPBACK_ENV = {"SPARK_LOCAL_IP": HOST, "SPARK_LOCAL_HOSTNAME": HOST}

# Processes started by this interpreter, so stopping them also reaps them.
_STARTED: dict[int, subprocess.Popen] = {}


class LocalClusterError(IdresError):
    """The local cluster could not be started or stopped; names the log to read."""


@dataclass(frozen=True)
class LocalCluster:
    """A running master and worker: where to submit, where to look, and their process ids."""

    master_url: str
    web_ui_url: str
    log_dir: str
    master_pid: int
    worker_pid: int

    def connection(self) -> str:
        """The Airflow `spark_default` connection (AIRFLOW_CONN_SPARK_DEFAULT) that submits to this master."""
        host, port = self.master_url.rsplit(":", 1)
        return json.dumps({"conn_type": "spark", "host": host, "port": int(port)})

    def driver_env(self) -> dict[str, str]:
        """What a driver submitting here needs: the connection, and to bind to and advertise 127.0.0.1
        (Spark's spark.driver.host default comes from SPARK_LOCAL_HOSTNAME)."""
        return {"AIRFLOW_CONN_SPARK_DEFAULT": self.connection(), **LOOPBACK_ENV}

    def applications(self) -> list[dict]:
        """The master's running and completed applications (name, state, ...), from its UI's JSON."""
        status = _master_status(self.web_ui_url)
        return [*status.get("activeapps", []), *status.get("completedapps", [])]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _spark_class() -> str:
    script = Path(sys.executable).parent / "spark-class"
    if not script.exists():
        raise LocalClusterError(f"spark-class not found next to {sys.executable}; install the project (make install)")
    return str(script)


def _daemon_env() -> dict[str, str]:
    """The master's and worker's environment. Spark's scripts look for SPARK_HOME through the `python3` first on
    PATH, which need not be this one (no .venv on PATH): they get this interpreter's pip-installed Spark."""
    import pyspark

    python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        **os.environ,
        **LOOPBACK_ENV,
        "PYTHONPATH": python_path,
        "SPARK_CONF_DIR": str(SPARK_CONF_DIR),
    }


def _launch(spark_class: str, args: list[str], log_file: Path) -> int:
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [spark_class, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_daemon_env(),
            start_new_session=True,  # a terminal's Ctrl-C goes to the caller, which stops the cluster in order
        )
    _STARTED[proc.pid] = proc
    return proc.pid


def _master_status(web_ui_url: str) -> dict:
    try:
        with urllib.request.urlopen(f"{web_ui_url}/json/", timeout=2) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def wait_until_alive(cluster: LocalCluster, timeout: float) -> None:
    """Return once the master reports itself and a worker ALIVE; raise after timeout seconds or if one exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, pid in (("master", cluster.master_pid), ("worker", cluster.worker_pid)):
            if not _alive(pid):
                raise LocalClusterError(f"the Spark {name} exited while starting; see {cluster.log_dir}/{name}.log")
        status = _master_status(cluster.web_ui_url)
        if status.get("status") == "ALIVE" and any(w.get("state") == "ALIVE" for w in status.get("workers", [])):
            return
        time.sleep(0.5)
    raise LocalClusterError(
        f"no ALIVE worker at {cluster.web_ui_url} after {timeout:.0f} s; see master.log and worker.log in "
        f"{cluster.log_dir}"
    )


def start_cluster(log_dir: Path | str, cores: int = 2, memory: str = "2g", timeout: float = 120) -> LocalCluster:
    """Start a master and one worker (cores, memory) on 127.0.0.1, wait until the worker is ALIVE, and
    record them in log_dir/cluster.json. Stops what it started if the cluster does not come up."""
    log_path = Path(log_dir).resolve()
    log_path.mkdir(parents=True, exist_ok=True)
    spark_class = _spark_class()
    master_port, master_ui_port, worker_port, worker_ui_port = (free_port() for _ in range(4))
    master_url = f"spark://{HOST}:{master_port}"
    properties = log_path / "spark-daemons.conf"
    properties.write_text(DAEMON_PROPERTIES, encoding="utf-8")
    common = ["--host", HOST, "--properties-file", str(properties)]
    master_pid = _launch(
        spark_class,
        [MASTER_CLASS, *common, "--port", str(master_port), "--webui-port", str(master_ui_port)],
        log_path / "master.log",
    )
    worker_options = {
        "--port": str(worker_port),
        "--webui-port": str(worker_ui_port),
        "--cores": str(cores),
        "--memory": memory,
        "--work-dir": str(log_path / "work"),
    }
    worker_pid = _launch(
        spark_class,
        [WORKER_CLASS, *common, *(item for pair in worker_options.items() for item in pair), master_url],
        log_path / "worker.log",
    )
    cluster = LocalCluster(master_url, f"http://{HOST}:{master_ui_port}", str(log_path), master_pid, worker_pid)
    try:
        wait_until_alive(cluster, timeout)
    except BaseException:
        stop_cluster(cluster)
        raise
    (log_path / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=2), encoding="utf-8")
    return cluster


def _alive(pid: int) -> bool:
    """True while pid is a Spark master or worker (so a recycled pid is never signalled)."""
    if pid in _STARTED:
        return _STARTED[pid].poll() is None
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return any(name.encode() in args for name in (MASTER_CLASS, WORKER_CLASS))


def _group_running(pgid: int) -> bool:
    """True while any process of the process group is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group ended meanwhile
        os.killpg(pgid, signum)


def _terminate(pid: int, timeout: float) -> None:
    """Stop a daemon's whole process group (_launch makes each daemon a group leader): until spark-class execs
    the JVM, it runs Spark's launcher in a subshell, which would outlive a signal to spark-class alone."""
    if not _alive(pid):
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) or _group_running(pid):
        if time.monotonic() > deadline:
            _signal_group(pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc = _STARTED.pop(pid, None)
    if proc is not None:
        proc.wait()


def stop_cluster(cluster: LocalCluster, timeout: float = 30) -> None:
    """Stop the worker, then the master (SIGTERM, SIGKILL after timeout seconds); a no-op for stopped ones."""
    _terminate(cluster.worker_pid, timeout)
    _terminate(cluster.master_pid, timeout)
    (Path(cluster.log_dir) / STATE_FILE).unlink(missing_ok=True)


@contextmanager
def local_cluster(
    log_dir: Path | str, cores: int = 2, memory: str = "2g", timeout: float = 120
) -> Iterator[LocalCluster]:
    """A running local cluster for the duration of the block, stopped on the way out whatever happens."""
    cluster = start_cluster(log_dir, cores=cores, memory=memory, timeout=timeout)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def recorded_cluster(log_dir: Path | str) -> LocalCluster | None:
    """The cluster `start` recorded in log_dir, if any."""
    state = Path(log_dir) / STATE_FILE
    if not state.exists():
        return None
    return LocalCluster(**json.loads(state.read_text(encoding="utf-8")))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a Spark standalone master and worker on 127.0.0.1")
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", required=True, help="folder for the logs and the cluster's state")
    parser.add_argument("--cores", type=int, default=2, help="worker cores")
    parser.add_argument("--memory", default="2g", help="worker memory, e.g. 2g")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for an ALIVE worker")
    args = parser.parse_args(argv)
    previous = recorded_cluster(args.dir)
    try:
        if args.action == "stop":
            if previous is not None:
                stop_cluster(previous)
            return
        if previous is not None and _alive(previous.master_pid):
            raise LocalClusterError(f"a cluster started from {args.dir} is still running; stop it first")
        cluster = start_cluster(args.dir, cores=args.cores, memory=args.memory, timeout=args.timeout)
    except LocalClusterError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"Spark master {cluster.master_url} (UI {cluster.web_ui_url}), logs in {cluster.log_dir}", file=sys.stderr)
    for key, value in cluster.driver_env().items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
