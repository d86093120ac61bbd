"""POSIX shared-memory segments over ``/dev/shm``, without ``multiprocessing.shared_memory``.

``multiprocessing.shared_memory`` registers every attach with the resource tracker, which
unlinks the *owner's* segment when the attaching process exits (docs/facts.md). So segments are
plain files in ``/dev/shm`` opened with ``os.open`` and mapped with ``mmap``: the owner
creates and unlinks, everyone else only attaches.

Naming: every segment is ``{prefix}-{owner_pid}-{rest}``. The owner pid in the name lets a
restarted gateway sweep the segments of dead owners (``sweep_stale``).

Error messages never contain segment names or paths: errors can reach clients (gateway/errors.py).
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import re
from types import TracebackType

import numpy as np

from shm.descriptor import BYTES_DTYPE, Descriptor

SHM_DIR = "/dev/shm"

# Names arrive over the wire: no "/", no "..", nothing that could leave SHM_DIR.
SEGMENT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_]+$")

DEFAULT_PREFIX = "ifx"


def check_name(name: str) -> str:
    """``name`` if it is a valid segment name; ``ValueError`` otherwise."""
    # "." and ".." match the character class but are directory entries, not segments.
    if not SEGMENT_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError("invalid shared-memory segment name")
    return name


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, check_name(name))


def _check_range(offset: int, nbytes: int, size: int) -> None:
    if offset < 0 or nbytes < 0 or offset + nbytes > size:
        raise ValueError(
            f"range of {nbytes} bytes at offset {offset} lies outside a {size}-byte segment"
        )


class Segment:
    """One mapped shared-memory segment: ``name`` (no ``/``), ``size`` bytes, ``buf``."""

    def __init__(self, name: str, size: int, buf: mmap.mmap, inode: int = 0) -> None:
        self.name = name
        self.size = size
        self.buf = buf
        self.inode = inode  # tells a re-created segment of the same name from this one
        self._address = 0

    @property
    def address(self) -> int:
        """Where the mapping starts in this process's memory."""
        if not self._address:
            probe = np.frombuffer(self.buf, dtype=np.uint8, count=1)
            self._address = probe.__array_interface__["data"][0]
            del probe  # its export of the mapping ends here
        return self._address

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create and map a new segment; ``FileExistsError`` if the name is taken.

        Pages are reserved up front (``posix_fallocate``): on tmpfs an over-committed mapping
        would otherwise die with SIGBUS on first write; this way a full ``/dev/shm`` is an
        ``OSError(ENOSPC)`` here. It costs about what the first write would have paid anyway.
        """
        if size <= 0:
            raise ValueError("segment size must be positive")
        path = _path(name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                # Filesystems without fallocate still work, with the SIGBUS risk.
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            buf = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            _unlink_path(path)
            raise
        os.close(fd)  # the mapping keeps the memory; the fd is no longer needed
        return cls(name, size, buf)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment read-write; ``FileNotFoundError`` if there is none."""
        path = _path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            # Re-raised without the filename so the path cannot leak into a client error.
            raise FileNotFoundError(errno.ENOENT, "shared-memory segment not found") from None
        try:
            st = os.fstat(fd)
            if st.st_size <= 0:
                raise ValueError("shared-memory segment is empty")
            buf = mmap.mmap(fd, st.st_size)
        finally:
            os.close(fd)
        return cls(name, st.st_size, buf, st.st_ino)

    def view(self, offset: int, dtype: str | np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A writable C-order array of ``dtype``/``shape`` over the bytes at ``offset``."""
        dt = np.dtype(dtype)
        if any(d < 0 for d in shape):
            raise ValueError("negative dimension in shape")
        count = math.prod(shape)
        _check_range(offset, count * dt.itemsize, self.size)
        # frombuffer, not ndarray(buffer=...): frombuffer holds a buffer export (a memoryview
        # base) for the array's life, so mmap.close refuses while it lives; ndarray(buffer=)
        # holds none, and closing the mmap under it leaves a dangling pointer (segfault).
        return np.frombuffer(self.buf, dtype=dt, count=count, offset=offset).reshape(shape)

    def memory(self, offset: int, nbytes: int) -> memoryview:
        """A writable ``memoryview`` of ``nbytes`` at ``offset`` (e.g. to ``recv_into``)."""
        _check_range(offset, nbytes, self.size)
        return memoryview(self.buf)[offset : offset + nbytes]

    def unlink(self) -> None:
        """Remove the name from ``/dev/shm``; mappings stay valid until closed."""
        _unlink_path(_path(self.name))

    def close(self) -> None:
        """Unmap, unless numpy views or memoryviews still export the buffer.

        ``mmap.close`` raises ``BufferError`` while exports live; then the mapping is left to
        be freed when the last view goes (the mmap object is only referenced by them).
        """
        try:
            self.buf.close()
        except BufferError:
            pass

    @property
    def closed(self) -> bool:
        return self.buf.closed

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Segment(name={self.name!r}, size={self.size})"


class SegmentCache:
    """Foreign segments attached on demand and kept mapped, keyed by name.

    Workers map the gateway's input segments and the gateway maps workers' output segments;
    mapping once per segment (not per request) keeps a descriptor round trip cheap. A
    segment's memory stays pinned while it is cached, even after its owner unlinks it: call
    ``forget`` when an owner goes away.
    """

    def __init__(self) -> None:
        self._segments: dict[str, Segment] = {}

    def get(self, name: str) -> Segment:
        segment = self._segments.get(name)
        if segment is None:
            segment = Segment.attach(name)
            self._segments[name] = segment
        return segment

    def view(self, desc: Descriptor, verify: bool = False) -> np.ndarray:
        """The writable array ``desc`` points at; ``ValueError`` if it is out of bounds.
        A BYTES descriptor gives its wire form as a flat ``uint8`` array (``shm.bytes_tensor``
        decodes it).

        ``verify`` is for segments someone else may shrink or re-create at any time (client
        regions): the file is stat'ed first, a re-created or grown one is mapped afresh, and
        a range past its current end is refused — touching it would be SIGBUS.
        """
        if verify:
            end = desc.offset + desc.nbytes
            try:
                st = os.stat(_path(desc.segment))
            except FileNotFoundError:
                raise ValueError("the region's shared-memory segment no longer exists") from None
            if st.st_size < end:
                raise ValueError("the region's shared-memory segment is smaller than the tensor")
            cached = self._segments.get(desc.segment)
            if cached is not None and (cached.inode != st.st_ino or cached.size < end):
                self._segments.pop(desc.segment).close()
        if desc.dtype == BYTES_DTYPE:  # a BYTES tensor: its wire form, as bytes
            return self.get(desc.segment).view(desc.offset, "uint8", (desc.size,))
        return self.get(desc.segment).view(desc.offset, desc.dtype, desc.shape)

    def locate(self, arr: np.ndarray) -> Descriptor | None:
        """The descriptor of a C-contiguous array that lies in a cached segment, else None
        (lets a view of a peer's slot travel on as a descriptor instead of as bytes)."""
        if not arr.flags.c_contiguous:
            return None
        start = arr.__array_interface__["data"][0]
        for name, segment in self._segments.items():
            if segment.closed:
                continue
            base = segment.address
            if base <= start and start + arr.nbytes <= base + segment.size:
                return Descriptor(name, start - base, arr.dtype.name, tuple(arr.shape))
        return None

    def prune(self) -> None:
        """Close and drop the cached segments whose owner has unlinked them."""
        for name in [n for n in self._segments if not os.path.exists(_path(n))]:
            self._segments.pop(name).close()

    def forget(self, name_prefix: str) -> None:
        """Close and drop every cached segment whose name starts with ``name_prefix``."""
        for name in [n for n in self._segments if n.startswith(name_prefix)]:
            self._segments.pop(name).close()

    def __contains__(self, name: object) -> bool:
        return name in self._segments

    def __len__(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()


def segment_name(prefix: str, owner_pid: int, rest: str) -> str:
    """``{prefix}-{owner_pid}-{rest}``, validated."""
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError("segment prefix must match [A-Za-z0-9_]+")
    if owner_pid <= 0:
        raise ValueError("owner pid must be positive")
    return check_name(f"{prefix}-{owner_pid}-{rest}")


def list_segments(prefix: str) -> list[str]:
    """Names in ``/dev/shm`` that start with ``{prefix}-``, sorted."""
    start = f"{prefix}-"
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if n.startswith(start) and SEGMENT_NAME_RE.fullmatch(n))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def sweep_stale(prefix: str) -> list[str]:
    """Unlink the segments ``{prefix}-{pid}-*`` of owners that are no longer running.

    Names whose pid part is not a plausible pid are not ours and are left alone. Pids are
    host pids: a segment must be named after a process visible in this pid namespace.
    """
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError("segment prefix must match [A-Za-z0-9_]+")
    removed: list[str] = []
    for name in list_segments(prefix):
        pid_part, sep, _ = name[len(prefix) + 1 :].partition("-")
        if not sep or not pid_part.isdecimal():
            continue
        pid = int(pid_part)
        # pid 0 would signal our own process group; anything past pid_max is not a pid.
        if pid <= 0 or pid >= 2**22:
            continue
        if not pid_alive(pid):
            _unlink_path(os.path.join(SHM_DIR, name))
            removed.append(name)
    return removed


def unlink_matching(name_prefix: str) -> int:
    """Unlink every ``/dev/shm`` entry whose name starts with ``name_prefix``; the count.

    An empty prefix is refused: it would match every segment on the host.
    """
    if not name_prefix or "/" in name_prefix:
        raise ValueError("name prefix must be non-empty and contain no '/'")
    count = 0
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return 0
    for name in entries:
        if name.startswith(name_prefix) and SEGMENT_NAME_RE.fullmatch(name):
            if _unlink_path(os.path.join(SHM_DIR, name)):
                count += 1
    return count


def _unlink_path(path: str) -> bool:
    """Unlink ``path``; False if it was already gone (another sweeper, or its owner)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
