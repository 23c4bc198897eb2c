"""``restore``: the checkpoint override (``-l restore=restore``); see ``vmm.checkpoint``."""

from __future__ import annotations

from .. import checkpoint
from ..entry import VmmRequest


def run(req: VmmRequest) -> None:
    checkpoint.restore(req.args, req.stdin)
