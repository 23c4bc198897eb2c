"""What the image-datastore (DS_MAD) actions share: the request's validated image and
datastore, addon-storpool's object names, the staging host, and the one way a volume is
filled with data (a staging volume, renamed when complete).

Settings an action reads come from the datastore's TEMPLATE attribute of that name, else
the driver configuration file, else a default (``setting``).

Crash safety of an import (cp, mkfs with a file system): data is written into the staging
volume ``<PX>-img-<ID>-<md5("<PX>-img-<ID>\\n")>`` (addon-storpool's name for it, so either
driver cleans up after the other) and only a complete volume is renamed to
``<PX>-img-<ID>``. A re-run deletes a leftover staging volume first; a failure deletes it;
an existing ``<PX>-img-<ID>`` is never written to (the action fails instead).

A backend that cannot rename (LINSTOR) gets the data written into the image's own volume,
created with the tag ``incomplete=1`` that is removed once the data is complete: a re-run
deletes such a leftover (and only such a one) and starts again.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping

from lxml import etree

from onelib import log, numbers, paths, xmldoc
from onelib.config import SANE_MAX
from onelib.errors import DriverError
from onelib.hostcmd import Host

from . import images, naming
from .driver import Driver
from .entry import DsRequest

_VOLUME = re.compile(r"[A-Za-z0-9_.-]{1,190}")
_TEMPLATE = re.compile(r"[A-Za-z0-9_-]{1,190}")
TRUE = frozenset({"1", "yes", "y", "true", "on"})
INCOMPLETE = "incomplete"   # tag of an image volume being filled in place (no rename)


def check_volume(name: str, what: str = "volume name") -> str:
    if not _VOLUME.fullmatch(name) or name in ("list", "status"):
        raise DriverError(f"{what} {name!r} is not an acceptable volume name")
    return name


def volume_from_source(source: str, what: str = "SOURCE") -> str:
    """The volume an image SOURCE names: ``one-img-7`` (this driver) or
    ``one-ds-100/one-img-7`` (addon-storpool's SOURCE form)."""
    parts = source.split("/")
    if len(parts) == 2 and _TEMPLATE.fullmatch(parts[0]):
        return check_volume(parts[1], what)
    if len(parts) != 1:
        raise DriverError(f"image {what} {source!r} does not name a volume")
    return check_volume(source, what)


class DsAction:
    """One DS action's request, validated before anything is changed."""

    def __init__(self, request: DsRequest, *, driver: Driver | None = None) -> None:
        self.request = request
        self.datastore = request.datastore
        self.ds_id = xmldoc.integer(self.datastore, "ID", f"{request.action}: DATASTORE")
        if self.ds_id < 0:
            raise DriverError(f"{request.action}: DATASTORE/ID {self.ds_id} is not a datastore id")
        self.ds_attrs = xmldoc.template_attrs(self.datastore.find("TEMPLATE"))
        self.driver = driver or Driver(request.driver, self.datastore)
        self.names = self.driver.names
        if not _TEMPLATE.fullmatch(self.names.px):
            raise DriverError(f"ONE_PX={self.names.px!r} is not an acceptable name prefix")

    # --- input ---------------------------------------------------------------------------------
    @property
    def image(self) -> etree._Element:
        return self.request.image

    def image_id(self, *, match_argv: bool = True) -> int:
        """IMAGE/ID; oned passes the same id as the action's argument."""
        image_id = xmldoc.integer(self.image, "ID", f"{self.request.action}: IMAGE")
        if image_id < 0:
            raise DriverError(f"{self.request.action}: IMAGE/ID {image_id} is not an image id")
        if match_argv and image_id != self.request.id:
            raise DriverError(f"{self.request.action}: IMAGE/ID {image_id} differs from the id argument "
                              f"{self.request.id}")
        return image_id

    def image_template(self) -> dict[str, str]:
        return xmldoc.template_attrs(self.image.find("TEMPLATE"))

    def image_volume(self, image_id: int) -> str:
        """The image's volume: from its SOURCE when it has one (either SOURCE form), else by id."""
        source = xmldoc.text(self.image, "SOURCE")
        return self.source_volume(source) if source else self.names.image(image_id)

    def source_volume(self, source: str, what: str = "SOURCE") -> str:
        """The volume an image SOURCE (or a clone's PATH) names, in the driver's SOURCE form."""
        volume = self.names.source_volume(source)
        if self.names.qualified:  # pool/name (rbd): both parts checked, the pool kept
            pool, slash, name = volume.partition("/")
            if not slash:
                raise DriverError(f"image {what} {source!r} does not name an image as pool/name")
            return f"{check_volume(pool, what)}/{check_volume(name, what)}"
        return volume_from_source(volume, what)

    def snapshot_id(self) -> int:
        snap = xmldoc.integer(self.image, "TARGET_SNAPSHOT", f"{self.request.action}: IMAGE")
        if snap < 0:
            raise DriverError(f"{self.request.action}: IMAGE/TARGET_SNAPSHOT {snap} is not a snapshot id")
        return snap

    def setting(self, name: str, default: str = "") -> str:
        value = self.ds_attrs.get(name, "").strip()
        return value or self.driver.config.get(name, default).strip() or default

    def flag(self, name: str) -> bool:
        return self.setting(name).lower() in TRUE

    def seconds(self, name: str, default: int) -> float:
        raw = self.setting(name, str(default))
        return float(numbers.whole(raw, f"{name}=", minimum=1, maximum=SANE_MAX, unit="a number of seconds"))

    # --- names and places ----------------------------------------------------------------------
    def staging_name(self, image_id: int) -> str:
        final = self.names.image(image_id)
        digest = hashlib.md5(f"{final}\n".encode(), usedforsecurity=False).hexdigest()
        return self.names.staging(image_id, digest)

    def staging_host(self, seed: int, attr: str = "BRIDGE_LIST") -> str:
        """The host that stages data: one of BRIDGE_LIST (round robin by ``seed``, so a re-run
        picks the same one), or "" (the front-end itself) when the list is empty."""
        if self.driver.backend_class.disk_form == "network":
            return ""   # a network backend's data is reached from the front-end itself (rbd: librbd)
        hosts = paths.host_list(self.setting(attr), attr) or paths.host_list(self.setting("BRIDGE_LIST"), "BRIDGE_LIST")
        return hosts[seed % len(hosts)] if hosts else ""

    def staging_dir(self) -> str:
        directory = paths.clean_path(self.setting("STAGING_DIR", "/var/tmp"), "STAGING_DIR")
        if not re.fullmatch(r"/[A-Za-z0-9._/-]*", directory):
            raise DriverError(f"STAGING_DIR {directory!r} is not a plain path")
        return directory

    def tags(self) -> dict[str, str]:
        """An image volume's tags: virt=one, nloc=<PX>, and what the backend adds from the
        image's attributes (``Backend.image_tags``)."""
        out = naming.tags(self.names)
        image = self.image_template() if self.request.root.find("IMAGE") is not None else {}
        out.update(self.driver.backend_class.image_tags(image, self.driver.config))
        return out

    # --- volumes -------------------------------------------------------------------------------
    def require_absent(self, name: str) -> None:
        backend = self.driver.backend
        found = backend.get(name)
        if found is not None and not backend.can_rename and not found.snapshot and found.tags.get(INCOMPLETE):
            backend.delete(name)    # an interrupted in-place import: start again
            return
        if found is not None:
            raise DriverError(f"volume {name} already exists; not overwriting it (delete it first if it is stale)")

    def fill_volume(self, *, final: str, size: int, placement: str, tags: Mapping[str, str],
                    host_name: str, staging: str, write: Callable[[Host, str], None]) -> None:
        """Create the staging volume, attach it to the staging host, ``write(host, device)``,
        detach it and rename it to ``final``. On any failure the staging volume is deleted."""
        backend = self.driver.backend
        ref = self.driver.host(host_name)      # resolved before anything is created
        shell = self.driver.shell(host_name)
        in_place = not backend.can_rename      # callers made sure ``final`` is absent
        if in_place:
            staging, tags = final, {**tags, INCOMPLETE: "1"}
        else:
            backend.delete(staging)            # a crashed run's leftover (absent: one call)
        backend.create(staging, size, placement=placement, tags=tags)
        try:
            device = backend.attach(staging, ref)
            write(shell, device)
            backend.detach(staging, ref, force=True)
            if in_place:
                backend.set_tags(final, {INCOMPLETE: ""})
            else:
                self._rename(staging, final)
        except BaseException:
            try:
                backend.delete(staging)
            except DriverError as exc:
                log.error(f"could not delete the staging volume {staging}: {exc} (a re-run deletes it)")
            raise

    def _rename(self, staging: str, final: str) -> None:
        backend = self.driver.backend
        try:
            backend.rename(staging, final)
        except DriverError as exc:
            # the reply may be lost although the rename happened: look before failing
            try:
                done = backend.get(staging) is None and backend.get(final) is not None
            except DriverError:
                raise exc from None
            if not done:
                raise

    def write_image(self, shell: Host, source: str, fmt: str, device: str, scratch: str) -> None:
        """Put the image file ``source`` (on the front-end, format ``fmt``) onto ``device`` of
        the staging host as raw data."""
        timeout = self.seconds("IMPORT_TIMEOUT", 86400)
        if shell.local and fmt == "raw" and not images.is_target(device):
            # a raw image needs no conversion: a straight direct-I/O copy is what dd does
            shell.run(["dd", f"if={source}", f"of={device}", "bs=4M", "oflag=direct", "conv=fsync",
                       "status=none"], timeout=timeout)
        elif shell.local:
            shell.run(images.convert_argv(source, fmt, device), timeout=timeout)
        elif fmt == "raw":
            images.stream_to(shell, ["dd", f"of={device}", "bs=4M", "iflag=fullblock", "oflag=direct",
                                     "conv=fsync", "status=none"], source, timeout=timeout)
        else:
            directory = self.staging_dir()
            remote = os.path.join(directory, f"{scratch}.img")
            shell.run(["mkdir", "-p", "--", directory])
            with images.removing(remote, shell):
                images.stream_to(shell, ["dd", f"of={remote}", "bs=4M", "status=none"], source, timeout=timeout)
                shell.run(images.convert_argv(remote, fmt, device), timeout=timeout)
