"""Client-registered system shared-memory regions (the v2 shared-memory extension).

A client creates a POSIX segment, registers ``(name, key, offset, byte_size)``, and then names
the region in infer requests instead of sending tensor bytes. The gateway never copies those
bytes: it hands the worker a descriptor into the client's segment, and the worker writes
outputs straight into the client's output region.

Client shared memory is a way into the server's address space, so:

* it is off unless the gateway is started with ``--allow-client-shm``;
* keys are ``/name`` with a plain segment name — no ``..``, no extra ``/``, bounded length —
  and never inside Inferoxy's own segment prefix;
* ``offset + byte_size`` is checked against the segment's real size at register time and
  again at every use (a client may shrink its segment later; touching pages past the end of
  a file mapping is SIGBUS);
* no error message carries a key or a path.

I/O here is ``os.stat`` on ``/dev/shm`` names only; the registry keeps no mapping.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from shm.segment import SHM_DIR

KEY_RE = re.compile(r"^/?([A-Za-z0-9_][A-Za-z0-9_.-]{0,199})$")
REGION_NAME_RE = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable, no spaces


class RegionError(ValueError):
    """A registration or a use of a region is invalid; safe to show the client."""


class RegionNotFound(RegionError):
    pass


class RegionsDisabled(RegionError):
    pass


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    key: str  # as the client gave it, e.g. "/input0"
    segment: str  # the /dev/shm name
    offset: int
    byte_size: int

    def status(self) -> dict[str, object]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


def _segment_size(segment: str) -> int:
    try:
        return os.stat(os.path.join(SHM_DIR, segment)).st_size
    except FileNotFoundError:
        raise RegionError("the region's shared-memory segment does not exist") from None
    except OSError:
        raise RegionError("the region's shared-memory segment cannot be read") from None


class RegionRegistry:
    def __init__(self, *, enabled: bool, own_prefix: str, max_regions: int = 256) -> None:
        self.enabled = enabled
        self.own_prefix = own_prefix  # e.g. "ifx": Inferoxy's segments are "ifx-<pid>-..."
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise RegionsDisabled(
                "client shared memory is disabled on this server (start it with "
                "--allow-client-shm)"
            )

    def register(self, name: object, key: object, offset: object, byte_size: object) -> Region:
        self._require_enabled()
        if not isinstance(name, str) or not REGION_NAME_RE.fullmatch(name):
            raise RegionError("region name must be 1-128 printable characters without spaces")
        if name in self._regions:
            raise RegionError(f"a region named {name!r} is already registered")
        if len(self._regions) >= self.max_regions:
            raise RegionError(f"too many registered regions (limit {self.max_regions})")
        match = KEY_RE.fullmatch(key) if isinstance(key, str) else None
        if match is None or match[1] in (".", ".."):
            raise RegionError("key must be '/name' with letters, digits, '_', '.', '-'")
        segment = match[1]
        if segment.startswith(f"{self.own_prefix}-"):
            raise RegionError("key lies in the server's own shared-memory namespace")
        for label, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RegionError(f"{label} must be a non-negative integer")
        assert isinstance(offset, int) and isinstance(byte_size, int)
        if byte_size == 0:
            raise RegionError("byte_size must be positive")
        size = _segment_size(segment)
        if offset + byte_size > size:
            raise RegionError(
                f"offset {offset} + byte_size {byte_size} exceeds the segment's {size} bytes"
            )
        region = Region(name, key, segment, offset, byte_size)  # type: ignore[arg-type]
        self._regions[name] = region
        return region

    def replace_all(self, regions: list[Region]) -> None:
        """Hold exactly ``regions`` (a replica of the registry kept by another process)."""
        self._regions = {r.name: r for r in regions}

    def unregister(self, name: str | None) -> None:
        """Unregister one region, or all with ``None`` (unknown names are not an error)."""
        self._require_enabled()
        if name is None:
            self._regions.clear()
        else:
            self._regions.pop(name, None)

    def status(self, name: str | None = None) -> list[Region]:
        self._require_enabled()
        if name is None:
            return list(self._regions.values())
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"no region named {name!r} is registered")
        return [region]

    def resolve(self, name: object, offset: object, byte_size: object, needed: int | None,
                tensor: str) -> tuple[str, int, int]:
        """Where a tensor of ``needed`` bytes (None: unknown yet) lives in a region.

        Returns ``(segment, absolute offset, byte_size)``; re-checks the segment's size now.
        """
        self._require_enabled()
        region = self._regions.get(name) if isinstance(name, str) else None
        if region is None:
            raise RegionNotFound(f"{tensor}: no region named {name!r} is registered")
        if offset is None:
            offset = 0
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RegionError(f"{tensor}: shared_memory_offset must be a non-negative integer")
        if byte_size is None:
            byte_size = region.byte_size - offset
        if isinstance(byte_size, bool) or not isinstance(byte_size, int) or byte_size <= 0:
            raise RegionError(f"{tensor}: shared_memory_byte_size must be a positive integer")
        if offset + byte_size > region.byte_size:
            raise RegionError(
                f"{tensor}: offset {offset} + byte_size {byte_size} exceeds the region's "
                f"{region.byte_size} bytes"
            )
        if needed is not None and needed != byte_size:
            raise RegionError(
                f"{tensor}: shared_memory_byte_size is {byte_size}, the tensor takes {needed}"
            )
        start = region.offset + offset
        if start + byte_size > _segment_size(region.segment):
            raise RegionError(f"{tensor}: the region's segment is now smaller than registered")
        return region.segment, start, byte_size
