"""The mesh in TUN mode as a test lab: every member in a network namespace of its own.

    with tun_lab(tmp_path) as make:
        t = make(["n1", "n2"])                 # namespaces for the coordinator, n1, n2; one LAN
        t.start_coordinator()
        t.start_nodes(["n1", "n2"], t.mesh.token(reusable=True), extra=LOG_TOML)
        conf = client_config(t, "laptop", "client")
        bring_up_client(t, t.namespaces["laptop"], conf)   # needs a namespace of that name

The coordinator runs as always (embedded, in its own namespace); each node runs
``pyralog node`` with ``[wireguard] backend = "userspace"`` inside its namespace, so its
mesh address is on a real TUN interface served by its ``pyralog-wg`` child. Stock
WireGuard clients (wireguard-go + ``wg setconf``) join from the wg-quick file
``pyralog-admin client add`` prints. Traffic only goes between the lab's own namespaces.

Leaving ``tun_lab`` stops every node (SIGTERM; each stops its pyralog-wg) and the stock
clients, prints each member's log (pytest shows it when the test failed), checks that no
process and no WireGuard interface is left in any namespace, and then ``Lab.close``
removes the namespaces and checks those are gone too; all of it whatever the test did.

Importable by name from any test (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlab import MeshLab, Proc
from netns import UAPI_DIR, Lab, Namespace, WireGuard
from processes import console_script, stop_process

COORDINATOR_PORT = 51820  # each namespace has its own ports: fixed ones cannot collide
API_PORT = 7700
INFO_PORT = 7701
ENROLL_TIMEOUT = 45.0  # several nodes enrolling at once on a busy 2-core machine

# What a stock tool does over the mesh: a plain kernel socket, no Pyralog code.
WHOAMI = textwrap.dedent(
    """
    import json, socket, sys
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
        s.sendall(b"GET /v1/whoami HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    print(json.dumps({"status": int(head.split()[1]), "body": json.loads(body)}))
    """
)


@dataclass
class TunMesh:
    """A MeshLab whose members live in the namespaces of a Lab, all on one switch."""

    lab: Lab
    mesh: MeshLab
    namespaces: dict[str, Namespace]
    lan: dict[str, str]  # name -> LAN address
    nodes: dict[str, Proc] = field(default_factory=dict)
    interfaces: dict[str, str] = field(default_factory=dict)  # node -> interface name

    @property
    def coordinator_endpoint(self) -> str:
        return f"{self.lan['coordinator']}:{COORDINATOR_PORT}"

    def start_coordinator(self, store: str = "coordinator.db") -> Proc:
        return self.mesh.start_coordinator(
            port=COORDINATOR_PORT,
            prefix=self.namespaces["coordinator"].argv(),
            endpoints=[self.coordinator_endpoint],
            store=store,
        )

    def start_nodes(self, names: list[str], token: str, extra: str = "") -> list[Proc]:
        """``pyralog node`` (userspace backend, as root: TUN) in each one's namespace, all
        started at once; returns when every one is up (enrolled, interface configured).
        ``extra``: TOML appended to each node's wireguard.toml."""
        procs = []
        for name in names:
            self.interfaces[name] = self.lab.ifname("m")
            procs.append(
                self.mesh.start_node(
                    name,
                    token,
                    backend="userspace",
                    prefix=self.namespaces[name].argv(),
                    interface=self.interfaces[name],
                    coordinators=[self.coordinator_endpoint],
                    nobody=False,
                    wait=False,
                    extra=extra,
                )
            )
        for proc in procs:
            self.mesh.wait_up(proc, timeout=ENROLL_TIMEOUT)
            self.nodes[proc.name] = proc
        return procs

    def address(self, name: str) -> str:
        return self.mesh.address_of(self.nodes[name])

    def whoami(self, ns: Namespace, address: str, port: int = INFO_PORT) -> dict[str, Any]:
        """GET /v1/whoami with a plain kernel socket from inside ``ns``."""
        done = ns.run(sys.executable, "-c", WHOAMI, address, str(port), check=False, timeout=20)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def admin_in(self, ns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
        """``pyralog-admin --url http://COORDINATOR-MESH-ADDRESS:7700 ARGS`` inside ``ns``."""
        url = f"http://{self.mesh.status()['coordinator']['address']}:{API_PORT}"
        argv = [str(console_script("pyralog-admin")), "--url", url, *args]
        return ns.run(*argv, check=False, timeout=30)

    def leftovers(self) -> list[str]:
        """Processes and WireGuard interfaces still in the lab's namespaces, UAPI sockets
        of the nodes' interfaces still in /var/run/wireguard."""
        found = []
        for ns in self.lab.namespaces:
            for pid in ns.pids():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                found.append(f"{ns.name}: process {pid} {cmd.decode(errors='replace')}")
            for link in ns.links():
                if link.startswith("pw"):
                    found.append(f"{ns.name}: interface {link}")
        for name in self.interfaces.values():
            if (UAPI_DIR / f"{name}.sock").exists():
                found.append(f"UAPI socket {name}.sock")
        return found


MakeTun = Callable[..., TunMesh]


@contextlib.contextmanager
def tun_lab(root: Path) -> Iterator[MakeTun]:
    """``make(names, coordinator_toml="")``: a namespace for the coordinator and for each
    name, on one LAN, the MeshLab's files under ``root``; torn down (and checked clean)
    whatever the test did. What a caller starts in the namespaces itself it stops before
    leaving the ``with`` block (anything still running then counts as left behind)."""
    with Lab() as lab:
        made: list[TunMesh] = []

        def make(names: list[str], coordinator_toml: str = "") -> TunMesh:
            everyone = ["coordinator", *names]
            namespaces = {n: lab.namespace(n[:6]) for n in everyone}
            addresses = lab.switch([namespaces[n] for n in everyone])
            mesh = MeshLab(root, unprivileged=False, coordinator_toml=coordinator_toml)
            made.append(TunMesh(lab, mesh, namespaces, dict(zip(everyone, addresses, strict=True))))
            return made[-1]

        try:
            yield make
        finally:
            for t in made:
                t.mesh.close()
            # The stock clients (wireguard-go, started through the Lab) too, so that
            # whatever is still running now was left behind by a node.
            for wg in lab.daemons:
                if wg.proc is not None:
                    stop_process(wg.proc)
            left = [x for t in made for x in t.leftovers()]
            for t in made:  # shown by pytest when the test fails
                shown: set[Path] = set()
                for proc in t.mesh.procs:
                    if proc.process.returncode not in (0, -signal.SIGTERM):
                        print(f"--- {proc.name} exited {proc.process.returncode} ---")
                    if proc.log not in shown:  # a restarted node appends to its log
                        shown.add(proc.log)
                        print(f"--- {proc.name} log ---\n{proc.output()[-6000:]}")
            assert not left, f"left behind after the nodes stopped: {left}"


# -- stock WireGuard clients ------------------------------------------------------------------


def strip_wg_quick(text: str) -> tuple[str, str, list[str]]:
    """(text for ``wg setconf``, the Address, every AllowedIPs network) of a wg-quick file."""
    wg_quick_only = {"address", "dns", "mtu", "table", "preup", "postup", "predown",
                     "postdown", "saveconfig"}  # fmt: skip
    kept, address, allowed = [], "", []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        name = key.strip().lower()
        if sep and name == "address":
            address = value.strip()
        if sep and name == "allowedips":
            allowed += [a.strip() for a in value.split(",") if a.strip()]
        if not (sep and name in wg_quick_only):
            kept.append(line)
    return "\n".join(kept) + "\n", address, allowed


def bring_up_client(t: TunMesh, ns: Namespace, config: Path) -> WireGuard:
    """A stock client as wg-quick would make it, by hand: wireguard-go, ``wg setconf``,
    the address, the link, a route for each AllowedIPs."""
    text, address, allowed = strip_wg_quick(config.read_text())
    stripped = t.lab.tmp / f"{config.stem}.setconf"
    stripped.write_text(text)
    os.chmod(stripped, 0o600)
    wg = t.lab.wireguard(ns, "go")
    wg.wg("setconf", wg.ifname, str(stripped))
    ns.ip("address", "add", address, "dev", wg.ifname)
    ns.ip("link", "set", wg.ifname, "up")
    for net in allowed:
        ns.ip("route", "replace", net, "dev", wg.ifname)
    return wg


def client_config(t: TunMesh, name: str, role: str) -> Path:
    """``pyralog-admin client add --name NAME --role ROLE``: the wg-quick file (0600)."""
    path = t.mesh.root / f"{name}.conf"
    argv = [str(console_script("pyralog-admin")), "--socket", str(t.mesh.coordinator.socket),
            "client", "add", "--name", name, "--role", role, "-o", str(path)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    return path
