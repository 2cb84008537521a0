"""``pyralog coordinator`` and ``pyralog node``: the mesh's two long-running commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from pyralog.cli.stopping import stop_event


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    coord = sub.add_parser(
        "coordinator", help="run the mesh coordinator (membership, enrollment, peer updates)"
    )
    coord.add_argument("--config", "-c", required=True, help="coordinator.toml")
    coord.add_argument(
        "--init", action="store_true", help="write a starting coordinator.toml if none exists"
    )
    node = sub.add_parser("node", help="run a mesh node from wireguard.toml")
    node.add_argument("--config", "-c", required=True, help="wireguard.toml")


async def _until_signalled(body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = stop_event()
    await body(stop)


def _fail(command: str, message: object) -> int:
    print(f"pyralog {command}: {message}", file=sys.stderr)
    return 1


def run_coordinator(args: argparse.Namespace) -> int:
    from pyralog.mesh import coordinator, coordinator_config
    from pyralog.mesh.keyfile import KeyFileError
    from pyralog.mesh.store import StoreError
    from pyralog.mesh.tomlsection import ConfigError

    path = Path(args.config)
    if args.init and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(coordinator_config.default_text(), encoding="utf-8")
        print(f"pyralog coordinator: wrote {path}", file=sys.stderr)
    try:
        config = coordinator_config.load(path)
        asyncio.run(_until_signalled(lambda stop: coordinator.run(config, stop)))
    except (ConfigError, KeyFileError, StoreError) as e:
        return _fail("coordinator", e)
    except OSError as e:
        return _fail("coordinator", f"cannot start: {e}")
    except KeyboardInterrupt:
        return 130
    return 0


def run_node(args: argparse.Namespace) -> int:
    from pyralog.mesh import config as mesh_config
    from pyralog.mesh import node
    from pyralog.mesh.backend import BackendError
    from pyralog.mesh.join import EnrollmentError
    from pyralog.mesh.keyfile import KeyFileError
    from pyralog.mesh.state import StateError
    from pyralog.mesh.tomlsection import ConfigError

    # Library log lines (the broker's refused or malformed connections, storage errors).
    logging.basicConfig(
        level=logging.INFO, format="pyralog node: %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = mesh_config.load(args.config)
        asyncio.run(_until_signalled(lambda stop: node.run(config, stop)))
    except (
        ConfigError,
        KeyFileError,
        StateError,
        EnrollmentError,
        BackendError,
        node.NodeError,
    ) as e:
        return _fail("node", e)
    except OSError as e:
        return _fail("node", f"cannot start: {e}")
    except KeyboardInterrupt:
        return 130
    return 0
