"""Watch our interface over rtnetlink (pyroute2): deletion stops the daemon, MTU changes
reach the Device, exactly as wireguard-go reacts to ``ip link del`` and ``ip link set mtu``."""

from __future__ import annotations

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK


class LinkWatch:
    def __init__(self, name: str) -> None:
        self._ipr = IPRoute()
        self._ipr.bind(groups=RTMGRP_LINK)
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            self._ipr.close()
            raise OSError(f"interface {name!r} vanished right after creation")
        self.index = found[0]
        link = self._ipr.get_links(self.index)[0]
        self.mtu: int = link.get_attr("IFLA_MTU")

    def fileno(self) -> int:
        return self._ipr.fileno()

    def set_txqueuelen(self, packets: int) -> None:
        self._ipr.link("set", index=self.index, txqlen=packets)

    def set_mtu(self, mtu: int) -> None:
        self._ipr.link("set", index=self.index, mtu=mtu)
        self.mtu = mtu

    def poll(self) -> tuple[bool, int | None]:
        """Read pending link events: (our interface was deleted, its new MTU if changed)."""
        deleted, mtu = False, None
        for msg in self._ipr.get():
            if msg.get("index") != self.index:
                continue
            if msg.get("event") == "RTM_DELLINK":
                deleted = True
            elif msg.get("event") == "RTM_NEWLINK":
                new_mtu = msg.get_attr("IFLA_MTU")
                if new_mtu and new_mtu != self.mtu:
                    self.mtu = mtu = new_mtu
        return deleted, mtu

    def close(self) -> None:
        self._ipr.close()
