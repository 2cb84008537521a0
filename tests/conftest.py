"""Shared pytest configuration: the `privileged` marker skips with a reason without root;
the etcd fixtures (tests/etcd.py) are available to every test."""

from __future__ import annotations

import os
import shutil

import pytest

pytest_plugins = ["etcd"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    skip = pytest.mark.skip(
        reason="needs root and iproute2 (TUN devices, network namespaces); CI runs as root"
    )
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)
