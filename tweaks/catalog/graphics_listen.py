"""graphics_listen: VNC/SPICE graphics listen on a given address (migrate rules: the
destination host's, ``dest.address``).

A domain whose graphics listen on its host's own address cannot listen on that address
once it runs on another host, so the live migration moves the address with it. The
``listen`` attribute of ``<graphics>`` and each ``<listen type='address'>`` are set;
wildcards (``0.0.0.0``, ``::``), which are valid on every host, are kept unless
``wildcards`` says otherwise, and sockets, networks and ``type='none'`` are never touched.
"""

from __future__ import annotations

import ipaddress
import re

from ..errors import ParamError
from ..params import Bool, Format
from ..tweak import Context, Tweak

GRAPHICS = ("vnc", "spice", "rdp")
WILDCARDS = frozenset({"0.0.0.0", "::", "[::]"})
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")


def parse_address(text: str) -> str:
    """An IPv4/IPv6 address (normalised) or a DNS host name."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(text) and not text.replace(".", "").isdigit():
        return text
    raise ParamError("not an IP address or host name")


class GraphicsListen(Tweak):
    summary = "VNC/SPICE listen address (migrate: the destination host's)"
    params = (
        Format("address", "the address graphics listen on: an IP address or host name", parser=parse_address,
               syntax="IP address|host name", max_len=255),
        Bool("wildcards", "also replace the wildcard addresses 0.0.0.0 and ::", default=False),
    )

    def apply(self, ctx: Context) -> None:
        address: str = ctx.params["address"]
        keep_wildcards = not ctx.params["wildcards"]
        found = False
        for graphics in ctx.root.iterfind("devices/graphics"):
            if graphics.get("type") not in GRAPHICS:
                continue
            pairs = [(graphics, "listen")] if graphics.get("listen") is not None else []
            pairs += [(el, "address") for el in graphics.iterfind("listen")
                      if el.get("type") == "address" and el.get("address") is not None]
            for el, name in pairs:
                current = el.get(name) or ""
                found = True
                if keep_wildcards and current in WILDCARDS:
                    ctx.note(f"kept the wildcard listen address {current}")
                    continue
                ctx.editor.set_attr(el, name, address)
        if not found:
            ctx.note("no graphics listen on an address")


TWEAK = GraphicsListen()
