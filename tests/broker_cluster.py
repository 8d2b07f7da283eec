"""A RabbitMQ cluster of three nodes on this machine, run from the installed rabbitmq-server:
for the tests that take broker nodes away (the `rabbitmq_cluster` fixture) and, through
``scripts/rabbitmq-cluster``, for an admin or a benchmark. With one node, it is the
RabbitMQ of their own that the tests stopping and starting RabbitMQ use (`rabbitmq_node`).

Each node has its own name (``<prefix>-a@localhost``, ...), AMQP port, distribution port,
configuration, data and log folders under one folder, and the nodes share an Erlang cookie
of their own; they listen on 127.0.0.1 only and use the machine's epmd. The machine's own
node (``rabbit@localhost`` on 5672) is left alone. The second and third nodes join the
first with ``join_cluster``; a quorum queue declared afterwards has a member on each node.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

# The server's own scripts: /usr/sbin's wrappers run them as the rabbitmq user, which could
# read neither this cluster's folders nor its cookie.
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
LETTERS = "abc"
START_TIMEOUT = 120  # seconds for a node to boot, on a busy 2-core machine


@dataclass(frozen=True)
class Node:
    name: str  # without the host: dcmdb-a
    amqp_port: int
    dist_port: int

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"


class Cluster:
    """Up to three nodes under ``base``; ``ports`` are (AMQP, distribution) pairs, one per
    node."""

    def __init__(self, base: Path, prefix: str, ports: Iterable[tuple[int, int]]) -> None:
        self.base = base
        ports = list(ports)
        assert 1 <= len(ports) <= len(LETTERS), "one to three nodes"
        self.nodes = [
            Node(f"{prefix}-{letter}", amqp, dist)
            for letter, (amqp, dist) in zip(LETTERS, ports, strict=False)
        ]

    # -- state kept in the folder, so that `scripts/rabbitmq-cluster stop` finds the nodes

    def save(self) -> None:
        (self.base / "cluster.json").write_text(
            json.dumps({"nodes": [asdict(n) for n in self.nodes]}, indent=2)
        )

    @classmethod
    def load(cls, base: Path) -> Cluster:
        saved = json.loads((base / "cluster.json").read_text())
        cluster = cls.__new__(cls)
        cluster.base = base
        cluster.nodes = [Node(**n) for n in saved["nodes"]]
        return cluster

    def urls(self, vhost: str = "") -> str:
        """What DCMDB_BROKER_URL is set to: every node's URL, separated by commas."""
        return ",".join(node.url(vhost) for node in self.nodes)

    # -- the nodes' lives

    def start(self) -> None:
        """Start the nodes and join the second and third to the first."""
        self.base.mkdir(parents=True, exist_ok=True)
        cookie = self.base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(32)))
            cookie.chmod(0o400)
        self.save()
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._await_boot(node)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", seed.node)
            self.ctl(node, "start_app")
        self.ctl(seed, "await_online_nodes", str(len(self.nodes)))

    def stop(self) -> None:
        """Stop every node that runs, each waiting for its process to end."""
        for node in self.nodes:
            if self.pid(node) is not None:
                self.ctl(node, "shutdown", check=False)

    def kill(self, node: Node) -> None:
        """SIGKILL the node's Erlang VM, as a crash or a power cut would end it."""
        pid = self.pid(node)
        assert pid is not None, f"{node.node} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid):
            assert time.monotonic() < deadline, f"{node.node} outlived SIGKILL"
            time.sleep(0.05)

    def restart(self, node: Node) -> None:
        """Start a node that was killed or stopped; it rejoins the cluster it was in."""
        self._launch(node)
        self._await_boot(node)

    def stop_app(self) -> None:
        """RabbitMQ stopped on every node, their Erlang VMs left running (``stop_app``)."""
        for node in self.nodes:
            self.ctl(node, "stop_app")

    def start_app(self) -> None:
        """RabbitMQ started again on every node (``start_app``)."""
        for node in self.nodes:
            self.ctl(node, "start_app")

    def pid(self, node: Node) -> int | None:
        """The OS process of the node's Erlang VM, while it runs."""
        try:
            pid = int(self._folder(node).joinpath("pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def running(self) -> list[Node]:
        return [node for node in self.nodes if self.pid(node) is not None]

    def _folder(self, node: Node) -> Path:
        return self.base / node.name

    def _launch(self, node: Node) -> None:
        folder = self._folder(node)
        folder.mkdir(exist_ok=True)
        (folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
            # A node that comes back waits for the others as long as the tests need.
            "mnesia_table_loading_retry_limit = 20\n"
        )
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "rabbitmq-env.conf").write_text("")  # not the machine's /etc/rabbitmq one
        (folder / "pid").unlink(missing_ok=True)
        log = open(folder / "console.log", "ab")  # noqa: SIM115 - the node's, kept open by it
        subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(node),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            start_new_session=True,  # outlives the command that started it
        )
        log.close()

    def _await_boot(self, node: Node) -> None:
        self.ctl(node, "wait", str(self._folder(node) / "pid"), "--timeout", str(START_TIMEOUT))

    def _env(self, node: Node) -> dict[str, str]:
        folder = self._folder(node)
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.base),  # where the Erlang VM and the CLI find the cookie
            "RABBITMQ_NODENAME": node.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(folder / "plugins-expand"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    # -- asking the nodes

    def ctl(self, node: Node, *args: str, check: bool = True, tool: str = "rabbitmqctl") -> str:
        """A CLI tool's answer (``rabbitmqctl`` unless told) from ``node``."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / tool), "-q", "-n", node.node, *args],
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 30,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} on {node.node} failed: {done.stderr or done.stdout}"
            )
        return done.stdout

    def any_running(self) -> Node:
        running = self.running()
        assert running, "no node of the cluster runs"
        return running[0]

    def add_vhost(self, vhost: str) -> None:
        node = self.any_running()
        self.ctl(node, "add_vhost", vhost)
        self.ctl(node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        self.ctl(self.any_running(), "delete_vhost", vhost, check=False)

    def queue_members(self, vhost: str) -> dict[str, set[str]]:
        """Each queue of ``vhost`` and the nodes that hold a replica of it."""
        out = self.ctl(
            self.any_running(), "list_queues", "-p", vhost, "name", "members", "--formatter", "json"
        )
        return {q["name"]: set(q["members"]) for q in json.loads(out)}

    def await_quorum_safe(self, node: Node) -> None:
        """Wait until ``node`` may go without taking a quorum queue's majority with it:
        every quorum queue has enough members up to date elsewhere."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.ctl(node, "check_if_node_is_quorum_critical", tool="rabbitmq-queues")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _alive(pid: int) -> bool:
    """Running, neither gone nor a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


DEFAULT_FOLDER = Path(os.environ.get("TMPDIR", "/tmp")) / "dcmdb-rabbitmq-cluster"
DEFAULT_PORTS = ((5673, 25673), (5674, 25674), (5675, 25675))


def main(argv: list[str] | None = None) -> int:
    """``scripts/rabbitmq-cluster``: start, stop, kill or restart the nodes of a cluster."""
    parser = argparse.ArgumentParser(
        prog="scripts/rabbitmq-cluster",
        description="A three-node RabbitMQ cluster on this machine (nodes dcmdb-a, -b and -c"
        "@localhost, AMQP on 5673-5675, distribution on 25673-25675), for trying dcmdb"
        " against a cluster: DCMDB_BROKER_URL set to what `start` prints.",
    )
    parser.add_argument("action", choices=["start", "stop", "status", "kill", "restart"])
    parser.add_argument("node", nargs="?", choices=list(LETTERS), help="for kill and restart")
    parser.add_argument("--dir", type=Path, default=DEFAULT_FOLDER, help="its folder")
    args = parser.parse_args(argv)
    if args.action == "start":
        busy = [p for pair in DEFAULT_PORTS for p in pair if _listening(p)]
        if busy:
            parser.error(f"ports in use: {busy} (a cluster already running? stop it first)")
        cluster = Cluster(args.dir, "dcmdb", DEFAULT_PORTS)
        cluster.start()
        print(f"DCMDB_BROKER_URL={cluster.urls()}")
        return 0
    cluster = Cluster.load(args.dir)
    if args.action == "stop":
        cluster.stop()
    elif args.action == "status":
        print(cluster.ctl(cluster.any_running(), "cluster_status"))
    else:
        if args.node is None:
            parser.error(f"{args.action} needs a node: a, b or c")
        node = cluster.nodes[LETTERS.index(args.node)]
        if args.action == "kill":
            cluster.kill(node)
        else:
            cluster.restart(node)
    return 0


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
