"""``@record``: the dataclass-style classes of the deploy path (defaults, factories,
``__post_init__``, the errors a wrong call gets, subclasses, slotted classes)."""

from __future__ import annotations

import pytest

from tweaks.record import field, record


@record
class Disk:
    target: str
    bus: str
    queues: int = 0
    notes: list[str] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or f"{self.bus}:{self.target}"


class FastDisk(Disk):  # not decorated itself: its own default
    queues: int = 4


@record
class Slotted:
    __slots__ = ("name", "size")
    name: str
    size: int


def test_defaults_factories_and_post_init() -> None:
    a, b = Disk("vda", "virtio"), Disk(target="vda", bus="virtio", queues=2)
    assert (a.target, a.bus, a.queues, a.notes, a.label) == ("vda", "virtio", 0, [], "virtio:vda")
    assert b.queues == 2 and a.notes is not b.notes, "each instance gets its own list"
    assert a == Disk("vda", "virtio") and a != b
    assert repr(a) == "Disk(target='vda', bus='virtio', queues=0, notes=[], label='virtio:vda')"
    assert FastDisk("sda", "scsi").queues == 4 and Disk("sda", "scsi").queues == 0
    assert (Slotted("v", 1).name, Slotted(size=2, name="w").size) == ("v", 2)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: Disk("vda"), "Disk() missing argument 'bus'"),
    (lambda: Disk("vda", "virtio", target="vdb"), "Disk() got 'target' twice"),
    (lambda: Disk("vda", "virtio", size=1), "Disk() got unexpected size"),
    (lambda: Disk("a", "b", 1, [], "c", "d"), "Disk() takes 5 arguments, 6 given"),
])
def test_a_wrong_call_says_what_is_wrong(call, message: str) -> None:
    with pytest.raises(TypeError) as exc:
        call()
    assert str(exc.value) == message
