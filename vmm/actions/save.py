"""``save``: the checkpoint override (``-l save=save``); see ``vmm.checkpoint``."""

from __future__ import annotations

from .. import checkpoint
from ..entry import VmmRequest


def run(req: VmmRequest) -> None:
    checkpoint.save(req.args, req.stdin)
