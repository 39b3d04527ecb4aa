"""Emulated memory: real host bytes at real addresses, so `ctypes.memmove` and numpy views work on them.

Three kinds of region:
- "device": acl.rt.malloc. Capacity = size rounded up to a 32-byte multiple plus 32 bytes, start 64-byte aligned,
  contents not zeroed (spec §1.2 [OFF]); the emulator fills fresh memory with 0xA5 so reading it early shows.
- "host": acl.rt.malloc_host. 64-byte aligned, not zeroed (spec §1.2 [OFF]).
- "dvpp": acl.media.dvpp_malloc, the media memory the DVPP reads and writes. Start 128-byte aligned, size rounded
  up to a 32-byte multiple plus 32 bytes (601 aclpythondevg_01_0195); device memory otherwise.
- "user": process memory handed out by acl.util.bytes_to_ptr / numpy_to_ptr. The emulator keeps the owning object
  alive while the region is registered (the most recent ones, bounded), so the address stays valid and unique.
"""
from __future__ import annotations

import bisect
import ctypes
from collections import OrderedDict

from atlas.board import acl_consts as C

from ._errors import Fail

# docs/emulator.md: the runtime answers a bad pointer with 107000, a free of memory it does not hold too (the
# driver's DRV_ERROR_INVALID_VALUE); 207002 ACL_ERROR_RT_MEMORY_FREE exists but no free path returns it.
PARAM_INVALID = C.ACL_ERROR_RT_PARAM_INVALID  # 107000: null, unknown, freed or overrun pointer
FREE_FAILED = C.ACL_ERROR_RT_PARAM_INVALID    # 107000: double free, never allocated, interior pointer
POISON = 0xA5
_USER_REGIONS_MAX = 256
_USER_BYTES_MAX = 256 * 1024 * 1024


def device_capacity(size: int) -> int:
    """acl.rt.malloc's real allocation for `size` bytes: round up to 32, plus 32 (spec §1.2)."""
    return (size + 31) // 32 * 32 + 32


class Region:
    __slots__ = ("start", "size", "capacity", "kind", "owner")

    def __init__(self, start: int, size: int, capacity: int, kind: str, owner):
        self.start = start
        self.size = size          # what the caller asked for
        self.capacity = capacity  # what is really usable
        self.kind = kind
        self.owner = owner        # the object that keeps the bytes alive

    @property
    def end(self) -> int:
        return self.start + self.capacity

    @property
    def location(self) -> str:
        """Where the bytes live for ACL_HOST-mode copy-kind checks: device for rt.malloc, host otherwise."""
        return "device" if self.kind in ("device", "dvpp") else "host"

    def describe(self) -> str:
        source = {"device": "acl.rt.malloc", "host": "acl.rt.malloc_host", "dvpp": "acl.media.dvpp_malloc",
                  "user": "acl.util"}[self.kind]
        return f"{source} region 0x{self.start:x} ({self.capacity} bytes)"


class Memory:
    def __init__(self):
        self._starts: list[int] = []           # sorted starts of live device/host allocations
        self._allocations: dict[int, Region] = {}
        self._freed: dict[int, Region] = {}     # freed allocations, to name use-after-free and double free
        self._user: OrderedDict[int, Region] = OrderedDict()
        self._user_bytes = 0

    # -- allocations -------------------------------------------------------------------------------------------
    def allocate(self, size: int, kind: str) -> Region:
        capacity = device_capacity(size) if kind in ("device", "dvpp") else size
        align = 128 if kind == "dvpp" else 64
        backing = ctypes.create_string_buffer(capacity + align)
        start = (ctypes.addressof(backing) + align - 1) // align * align
        ctypes.memset(start, POISON, capacity)
        region = Region(start, size, capacity, kind, backing)
        for old in [s for s, r in self._freed.items() if s < region.end and region.start < r.end]:
            del self._freed[old]  # the address was reused: no longer a stale pointer
        bisect.insort(self._starts, start)
        self._allocations[start] = region
        return region

    def release(self, ptr: int, kind: str, call: str) -> Region:
        """Free the allocation that starts at `ptr`; Fail(207002) for double free, wrong kind, or unknown ptr."""
        region = self._allocations.get(ptr)
        if region is None:
            if ptr in self._freed:
                raise Fail(FREE_FAILED, f"double free: 0x{ptr:x} was already freed")
            inside = self._find_allocation(ptr)
            if inside is not None:
                raise Fail(FREE_FAILED, f"0x{ptr:x} points inside {inside.describe()}, not at its start")
            raise Fail(FREE_FAILED, f"0x{ptr:x} was never allocated by acl.rt.malloc/malloc_host or "
                                    "acl.media.dvpp_malloc (or acl.finalize released it)")
        if region.kind != kind:
            other = {"device": "acl.rt.free", "host": "acl.rt.free_host", "dvpp": "acl.media.dvpp_free"}[region.kind]
            raise Fail(FREE_FAILED, f"{call} on {region.describe()}: free it with {other}")
        del self._allocations[ptr]
        self._starts.pop(bisect.bisect_left(self._starts, ptr))
        region.owner = None  # drop the bytes; keep the record to recognise stale pointers
        self._freed[ptr] = region
        return region

    def kind_of(self, ptr: int) -> str | None:
        """"device" or "host" for a live allocation starting at ptr, else None."""
        region = self._allocations.get(ptr)
        return region.kind if region is not None else None

    def live_allocations(self, kinds: tuple[str, ...] = ("device", "host")) -> tuple[list[Region], ...]:
        """The live allocations of each kind, in the order of `kinds`."""
        regions = list(self._allocations.values())
        return tuple([r for r in regions if r.kind == kind] for kind in kinds)

    def allocation_bytes(self) -> int:
        return sum(r.capacity for r in self._allocations.values())

    # -- user regions (acl.util) -----------------------------------------------------------------------------
    def register_user(self, start: int, size: int, owner) -> None:
        old = self._user.pop(start, None)
        if old is not None:
            self._user_bytes -= old.capacity
        self._user[start] = Region(start, size, size, "user", owner)
        self._user_bytes += size
        while len(self._user) > _USER_REGIONS_MAX or (self._user_bytes > _USER_BYTES_MAX and len(self._user) > 1):
            _, dropped = self._user.popitem(last=False)
            self._user_bytes -= dropped.capacity

    # -- lookups -----------------------------------------------------------------------------------------------
    def _find_allocation(self, ptr: int) -> Region | None:
        index = bisect.bisect_right(self._starts, ptr) - 1
        if index >= 0:
            region = self._allocations[self._starts[index]]
            if region.start <= ptr < region.end:
                return region
        return None

    def allocation_at(self, ptr: int) -> Region | None:
        """The live malloc / malloc_host / dvpp_malloc allocation holding ptr, else None."""
        return self._find_allocation(ptr)

    def user_region(self, ptr: int) -> Region | None:
        """The live acl.util region holding ptr (the newest when several overlap), else None."""
        if self._find_allocation(ptr) is not None:
            return None
        return next((r for r in reversed(self._user.values()) if r.start <= ptr < r.end), None)

    def find(self, ptr: int, count: int, what: str) -> Region:
        """The region holding [ptr, ptr+count); Fail(107000) naming `what` for null, stale, unknown or overflow."""
        if not isinstance(ptr, int):
            raise TypeError(f"{what} must be an int pointer, got {type(ptr).__name__}")
        if ptr == 0:
            raise Fail(PARAM_INVALID, f"{what} is a null pointer")
        region = self._find_allocation(ptr) or self.user_region(ptr)
        if region is None:
            for stale in self._freed.values():
                if stale.start <= ptr < stale.end:
                    raise Fail(PARAM_INVALID, f"{what} 0x{ptr:x} is in freed memory (use after free of "
                                              f"{stale.describe()})")
            raise Fail(PARAM_INVALID, f"{what} 0x{ptr:x} is not memory the emulator knows (not from "
                                      "acl.rt.malloc/malloc_host nor a live acl.util.*_to_ptr pointer)")
        if ptr + count > region.end:
            raise Fail(PARAM_INVALID, f"{what}: {count} bytes at 0x{ptr:x} overrun {region.describe()} by "
                                      f"{ptr + count - region.end} bytes")
        return region

