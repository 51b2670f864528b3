"""Prefix identity and prefix caches: which KV blocks a prompt shares with what was computed before.

**Identity.** As in vLLM's automatic prefix caching, a KV block (``block_size`` tokens) is identified by the
whole prefix it ends: two prompts share block ``k`` exactly when their first ``(k + 1) * block_size`` tokens
are equal. Rather than hash every block, a prompt is described by a chain of :class:`Segment` objects: runs
of tokens (a template's system prompt, an application's earlier prompt, its previous answer, a trace's
512-token block) whose identity is the object itself. A segment starts ``start`` tokens into the
conversation, after a fixed parent chain, so a block is determined by the segment holding its last token
and its end offset; prompts that share a chain of segments share the blocks that end inside it.

**A replica's cache** (:class:`PrefixCache`) holds, per segment, the blocks ending inside it that are
cached, always a prefix of them (``cached_end``: the end offset of the last cached block). A lookup walks
the prompt's chain and stops at the first block not cached, so a hit is a whole number of blocks, and at
most ``prompt - 1`` tokens (vLLM recomputes the last token to obtain its logits). Blocks enter the cache
when a request's prefill completes (its prompt) and when it finishes (its answer), and stay after the
request ends. When admission needs memory, unreferenced blocks are evicted least recently used first,
and within a segment from its tail, deeper segments before their parents: vLLM frees a request's blocks
to the tail of its LRU free queue in reverse order, so a prefix's later blocks go before its earlier
ones. A segment some running request reads is not evicted (SGLang's radix cache locks its nodes the same
way); vLLM pins only the blocks in use, a difference that matters only when one segment is read partly.

**The remote store** (:class:`RemoteStore`, CALVO's distributed prefix cache, Mooncake's store) records
every block any replica has computed, plus prefixes computed elsewhere before the run (a stage's
``prefix_reuse``); it is not evicted. A request loads from it, at the store's bandwidth, the blocks the
local cache lacks: local hit, else remote load, else compute.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

from hermes_env._mypyc import attributes, mypyc_attr, set_attributes


@mypyc_attr(allow_interpreted_subclasses=True)
class Segment:
    """A run of ``size`` tokens that starts ``start`` tokens into a conversation, after ``parent``."""

    __slots__ = ("parent", "start", "size", "depth", "uid", "shared")
    _ids: ClassVar[itertools.count[int]] = itertools.count()

    def __init__(self, parent: Segment | None, start: int, size: int, shared: bool = False) -> None:
        self.parent, self.start, self.size = parent, start, size
        self.shared = shared  # read by many applications (a system prompt, a prefix computed before the run)
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.uid = next(Segment._ids)  # a stable order for ties (never the memory address)

    def __repr__(self) -> str:
        return f"Segment(#{self.uid}, start={self.start}, size={self.size})"

    def __deepcopy__(self, memo: dict) -> Segment:
        """A segment is an identity that never changes once made: copies of a simulation share it (so a
        snapshot does not copy every prefix its caches know)."""
        return self


@mypyc_attr(allow_interpreted_subclasses=True)
class GrowingSegment(Segment):
    """A segment whose ``size`` may still grow (a trace block first seen as a prompt's partial tail): copied
    with the simulation like any state."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict) -> GrowingSegment:
        new = GrowingSegment.__new__(GrowingSegment)
        memo[id(self)] = new
        new.parent, new.start, new.size = copy.deepcopy(self.parent, memo), self.start, self.size
        new.depth, new.uid = self.depth, self.uid
        return new


def extend(chain: Sequence[Segment], tokens: int) -> tuple[Segment, ...]:
    """``chain`` followed by a new segment of ``tokens`` fresh tokens (``chain`` unchanged when 0)."""
    if tokens <= 0:
        return tuple(chain)
    end = chain_end(chain)
    return (*chain, Segment(chain[-1] if chain else None, end, tokens))


def chain_end(chain: Sequence[Segment]) -> int:
    return chain[-1].start + chain[-1].size if chain else 0


def truncate(chain: Sequence[Segment], tokens: int) -> tuple[Segment, ...]:
    """The segments of ``chain`` that hold its first ``tokens`` tokens (the last one possibly in part)."""
    out = []
    for seg in chain:
        if seg.start >= tokens:
            break
        out.append(seg)
    return tuple(out)


def _block_range(seg: Segment, end: int, block: int) -> tuple[int, int]:
    """End offsets of the first and last blocks that end inside ``seg`` before ``end`` (first > last: none)."""
    first = (seg.start // block + 1) * block
    last = min(end, seg.start + seg.size) // block * block
    return first, last


@mypyc_attr(allow_interpreted_subclasses=True)
class _Tier:
    """Cached block ends per segment, always a prefix of the blocks ending in the segment."""

    def __init__(self, block_size: int) -> None:
        self.block = block_size
        self.cached_end: dict[Segment, int] = {}

    def __deepcopy__(self, memo: dict) -> _Tier:
        """Its entries are segments (shared by copies) and numbers, so a copy copies the containers alone, at
        C speed (a simulation's snapshot copies every cache); with a trace's growing segments among them it
        is copied like any state."""
        cls: Any = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        plain = all(type(seg) is Segment for seg in (*self.cached_end, *getattr(self, "refs", ())))
        for name, value in attributes(self).items():
            if plain and type(value) in (dict, list):
                value = type(value)(value)
            elif not isinstance(value, int):
                value = copy.deepcopy(value, memo)
            setattr(new, name, value)
        return new

    def __getstate__(self) -> dict[str, Any]:
        """Every attribute, those of a subclass included (compiled, the class would pickle only its own)."""
        return attributes(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        set_attributes(self, state)

    def lookup(self, chain: Sequence[Segment], limit: int) -> int:
        """Tokens of the longest run of cached blocks from the start of ``chain``, at most ``limit``."""
        block, cached = self.block, self.cached_end
        hit = 0
        for i, seg in enumerate(chain):
            end = chain[i + 1].start if i + 1 < len(chain) else limit
            first, last = _block_range(seg, min(end, limit), block)
            if first > last:
                continue  # no block ends inside this segment
            have = cached.get(seg, 0)
            if have < last:
                return have if have >= first else hit
            hit = last
        return hit

    def blocks_of(self, seg: Segment) -> int:
        end = self.cached_end.get(seg, 0)
        return max(0, end // self.block - seg.start // self.block)

    def _extend(self, chain: Sequence[Segment], upto: int) -> dict[Segment, int]:
        """Cache the blocks of ``chain`` ending within its first ``upto`` tokens; the blocks added per segment."""
        block, cached = self.block, self.cached_end
        added = {}
        for i, seg in enumerate(chain):
            end = chain[i + 1].start if i + 1 < len(chain) else upto
            first, last = _block_range(seg, min(end, upto), block)
            if first > last:
                continue
            have = max(cached.get(seg, 0), first - block)  # first - block: none of this segment's blocks
            added[seg] = max(0, (last - have) // block)
            if last > have:
                cached[seg] = last
        return added


@mypyc_attr(allow_interpreted_subclasses=True)
class RemoteStore(_Tier):
    """Every block computed anywhere in the cluster, and prefixes computed before the run; never evicted."""

    def publish(self, chain: Sequence[Segment], upto: int) -> None:
        self._extend(chain, upto)


@mypyc_attr(allow_interpreted_subclasses=True)
class PrefixCache(_Tier):
    """One replica's cache of full KV blocks, with reference counts per segment and LRU eviction."""

    def __init__(self, block_size: int) -> None:
        super().__init__(block_size)
        self.blocks = 0  # blocks held, referenced or not
        self.locked = 0  # of which in segments that a running request reads
        self.refs: dict[Segment, int] = {}
        self.last_used: dict[Segment, int] = {}
        self._clock = 0
        self._lru: list[tuple[int, int, int, Segment]] = []  # (last used, -depth, uid, segment), lazy
        self.evicted_blocks = 0

    # -- reading ------------------------------------------------------------------------------------
    def match(self, chain: Sequence[Segment], prompt: int) -> int:
        """Tokens of ``prompt`` served from this cache: whole blocks, at most ``prompt - 1`` tokens."""
        return self.lookup(chain, prompt - 1)

    def acquire(self, chain: Sequence[Segment]) -> None:
        """A request reads these segments: none of them is evicted until :meth:`release`."""
        refs = self.refs
        for seg in chain:
            n = refs.get(seg, 0)
            if not n:
                self.locked += self.blocks_of(seg)
            refs[seg] = n + 1

    def release(self, chain: Sequence[Segment]) -> None:
        self._clock += 1
        refs = self.refs
        for seg in chain:
            n = refs[seg] - 1
            if n:
                refs[seg] = n
                continue
            del refs[seg]
            self.locked -= self.blocks_of(seg)
            if seg in self.cached_end:
                self._touch(seg)

    # -- writing -----------------------------------------------------------------------------------
    def insert(self, chain: Sequence[Segment], upto: int) -> int:
        """Cache the blocks of ``chain`` that end within its first ``upto`` tokens; returns the blocks added."""
        self._clock += 1
        added = self._extend(chain, upto)
        for seg, n in added.items():
            if seg in self.refs:
                self.locked += n
            self._touch(seg)
        total = sum(added.values())
        self.blocks += total
        return total

    def put(self, seg: Segment, end: int) -> int:
        """Cache the blocks of ``seg`` ending up to ``end`` (none of them cached): a context brought back from
        host memory. Returns the blocks added."""
        self._clock += 1
        self.cached_end[seg] = end
        n = self.blocks_of(seg)
        self.blocks += n
        if seg in self.refs:
            self.locked += n
        self._touch(seg)
        return n

    def remove(self, seg: Segment) -> int:
        """Take every cached block of ``seg``, which no request reads, out of the cache (offloaded or
        discarded by a retention policy, not evicted); returns how many."""
        n = self.blocks_of(seg)
        del self.cached_end[seg]
        self.last_used.pop(seg, None)
        self.blocks -= n
        return n

    def evictable_blocks(self) -> int:
        return self.blocks - self.locked

    def evict(self, blocks: int) -> int:
        """Evict up to ``blocks`` unreferenced blocks, least recently used first, each segment from its tail.
        Returns the blocks evicted."""
        freed = 0
        self.compact()  # stale entries dropped in one pass rather than popped one by one below
        heap = self._lru
        while freed < blocks and heap:
            used, _, _, seg = heap[0]
            if self.last_used.get(seg) != used or seg in self.refs or seg not in self.cached_end:
                heapq.heappop(heap)  # stale entry, or in use: pushed again when released
                continue
            have = self.blocks_of(seg)
            take = min(have, blocks - freed)
            freed += take
            if take == have:
                heapq.heappop(heap)
                del self.cached_end[seg]
                del self.last_used[seg]
            else:
                self.cached_end[seg] -= take * self.block
        self.blocks -= freed
        self.evicted_blocks += freed
        return freed

    def compact(self) -> None:
        """Drop the LRU heap's stale entries (a segment touched again since, or evicted), which eviction
        would skip: the order of the others, and so every eviction, is unchanged."""
        last = self.last_used
        if len(self._lru) > 2 * len(last) + 16:  # amortised: only once stale entries outnumber the live ones
            self._lru[:] = [e for e in self._lru if last.get(e[3]) == e[0]]
            heapq.heapify(self._lru)

    def _touch(self, seg: Segment) -> None:
        self.last_used[seg] = self._clock
        if seg not in self.refs:  # one in use is not evictable, and release touches it again: no entry now
            heapq.heappush(self._lru, (self._clock, -seg.depth, seg.uid, seg))

    def check_invariants(self) -> None:
        total = sum(self.blocks_of(seg) for seg in self.cached_end)
        assert total == self.blocks, f"prefix cache counts {self.blocks} blocks, holds {total}"
        locked = sum(self.blocks_of(seg) for seg in self.refs)
        assert locked == self.locked, f"prefix cache counts {self.locked} locked blocks, holds {locked}"
        for seg, end in self.cached_end.items():
            assert end % self.block == 0 and seg.start < end <= seg.start + seg.size, f"{seg}: cached end {end}"
            assert self.blocks_of(seg) > 0
        assert all(n > 0 for n in self.refs.values())
