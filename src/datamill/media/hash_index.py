"""All pairs of 64-bit hashes within a Hamming distance, without comparing every pair.

Multi-index hashing (Norouzi et al., "Fast search in Hamming space with multi-index
hashing", 2012), in NumPy:

1. Identical hashes first: they are exact duplicates at distance 0.  Each copy is paired
   with the first occurrence of its value only (a star, not a clique), so 50,000 blank
   images cost 50,000 pairs, not 1.25e9, and the search below runs on distinct values.
2. The 64 bits are cut into m blocks.  Two hashes within distance T differ in at most
   r = T // m bits of at least one block (pigeonhole), so every such pair is found by
   looking, for each block, at the hashes whose block value is within r bits of one's own:
   the block values are sorted and a table of 2^bits bucket starts answers "which hashes
   have block value v" for each v ^ flip, flip ranging over the masks of at most r bits.
   Candidates are checked on the full hash with a vectorised popcount, and a pair is kept
   only in the first block that finds it, so each pair comes out once.
3. m (and so r) is chosen by a cost model from the number of distinct hashes: at T = 8,
   3 blocks of 21-22 bits and r = 2 for 100,000 to a million hashes (232-254 flips per
   block), 5 blocks and r = 1 for a few thousand, 9 blocks and r = 0 for a few hundred,
   plain all-pairs comparison for a hundred or so.
4. Candidate pairs are generated and checked in chunks of `CHUNK_PAIRS`, so memory stays
   bounded however large a bucket is (a bucket of 50,000 near-identical hashes is processed
   in tiles); only the time then grows with the pairs the bucket really holds.

Measured with one process on a shared 2-core machine (CPU seconds: under a load average of
6-10 from other jobs the wall time was 2-4x that), NumPy 2.4, threshold 8, 1,000,000 hashes;
peak RSS of the whole process, test data included:

    uniformly random, 10,000 pairs planted at 1-8 bits   near_pairs    15 s   277 MB  all found
      the same                                           near_groups   15 s   299 MB  all found
    100,000 random seeds x 10 copies, 0-3 bits flipped   near_pairs    10 s   436 MB  3.3 M pairs
    3,000 random seeds x 333 copies, 0-3 bits flipped    near_groups    7 s   519 MB  2,995 groups
    3,000 real phashes of generated pictures x 333       near_groups   18 s   502 MB  1 group
    copies, 0-3 bits flipped (about 1.9e9 pairs within 8: near_pairs would need ~30 GB)
    100,000 random queries against 1,000,000 references  pairs_against  3.5 s 244 MB

Every planted pair (copies of one seed within 8 bits) ended in one group.  Real hashes
cluster: phashes of similar pictures share most blocks, so the search meets billions of
candidate pairs; `near_groups` skips bucket pairs already in one group (`_GroupedBuckets`),
which took that last case from 340 s to 18 s.

`union_find_groups` joins pairs into groups (vectorised union-find: roots hooked to the
smaller root, then pointer jumping); `near_groups` streams the pairs of a search into it,
so a collection whose near-duplicate clusters hold 10^8 pairs is grouped in bounded memory.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .hashes import popcount

__all__ = ["near_pairs", "iter_near_pairs", "near_groups", "pairs_against", "union_find_groups",
           "CHUNK_PAIRS"]

# Candidate pairs generated and checked at once: bounds the memory of a search (about 50
# bytes per pair in flight, so ~100 MB).
CHUNK_PAIRS = 1 << 21
# The widest block: its table of bucket starts has 2^bits + 1 entries (32 MB at 22 bits).
_MAX_BLOCK_BITS = 22
# Cost model (seconds, measured here): per (block, flip) step, per distinct block value
# probed in a step, per candidate pair checked.
_COST_STEP = 30e-6
_COST_PROBE = 10e-9
_COST_PAIR = 25e-9

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def near_pairs(hashes: np.ndarray, threshold: int, *, ids: np.ndarray | None = None) -> Pairs:
    """Every pair of `hashes` (uint64) within Hamming distance `threshold`.

    Returns (i, j, dist): int64 positions with i < j and uint8 distances, each pair once,
    sorted by (i, j).  Copies of one value are linked only to its first occurrence (i is
    that first occurrence, dist 0), and near pairs are reported between first occurrences;
    so the groups (connected components) are those of all pairs while the output stays
    linear in the copies.  With `ids`, positions are replaced by ids[position].

    All pairs are held in memory at once: for collections whose clusters hold very many
    pairs, `near_groups` (or `iter_near_pairs`) keeps memory bounded.

    >>> near_pairs(np.array([0b1011, 0b0011, 0b1011, 1 << 40], np.uint64), 1)   # doctest: +SKIP
    (array([0, 0]), array([1, 2]), array([1, 0], dtype=uint8))
    """
    chunks = list(iter_near_pairs(hashes, threshold))
    i, j, dist = (np.concatenate(parts) for parts in zip(*chunks)) if chunks else _no_pairs()
    order = np.lexsort((j, i))
    i, j, dist = i[order], j[order], dist[order]
    if ids is not None:
        ids = np.asarray(ids)
        i, j = ids[i], ids[j]
    return i, j, dist


def iter_near_pairs(hashes: np.ndarray, threshold: int) -> Iterator[Pairs]:
    """The pairs of `near_pairs`, as chunks of (i, j, dist) of at most `CHUNK_PAIRS` each,
    in no particular order; memory stays bounded however many pairs there are."""
    hashes = _as_hashes(hashes)
    _check_threshold(threshold)
    values, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    first = first.astype(np.int64)
    copies = np.flatnonzero(first[inverse] != np.arange(len(hashes)))
    for start in range(0, len(copies), CHUNK_PAIRS):
        part = copies[start:start + CHUNK_PAIRS]
        yield first[inverse[part]], part, np.zeros(len(part), np.uint8)
    if threshold == 0 or len(values) < 2:
        return
    for a, b, dist in _join(values, values, threshold, self_join=True):
        i, j = first[a], first[b]
        yield np.minimum(i, j), np.maximum(i, j), dist


def near_groups(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Group id of each hash: hashes linked by chains of pairs within `threshold` share one.

    The same groups as ``union_find_groups(n, *near_pairs(hashes, threshold)[:2])`` without
    holding the pairs: they are joined chunk by chunk.  A group's id is its smallest position.
    """
    hashes = _as_hashes(hashes)
    _check_threshold(threshold)
    values, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    forest = _Forest(len(values))
    if threshold > 0:
        for a, b, _ in _join(values, values, threshold, self_join=True, forest=forest):
            forest.union(a, b)
    root = forest.roots()
    smallest = np.full(len(values), len(hashes), dtype=np.int64)
    _lower(smallest, root, first.astype(np.int64))
    return smallest[root[inverse.ravel()]]


def pairs_against(query: np.ndarray, reference: np.ndarray, threshold: int) -> Pairs:
    """The queries that duplicate something in a reference collection (a test set, an
    earlier dataset): (query position, reference position, dist), one row per query that
    has a reference within `threshold`, giving its nearest one (ties: the first position in
    `reference`).  Sorted by query position; memory linear in the queries.
    """
    query, reference = _as_hashes(query), _as_hashes(reference)
    _check_threshold(threshold)
    if not len(query) or not len(reference):
        return _no_pairs()
    q_values, q_inverse = np.unique(query, return_inverse=True)
    r_values, r_first = np.unique(reference, return_index=True)
    # The best reference of each distinct query value, as distance * 2^40 + reference position.
    best = np.full(len(q_values), np.iinfo(np.int64).max, dtype=np.int64)
    for a, b, dist in _join(q_values, r_values, threshold):
        _lower(best, a, (dist.astype(np.int64) << 40) | r_first[b].astype(np.int64))
    best = best[q_inverse.ravel()]
    qi = np.flatnonzero(best != np.iinfo(np.int64).max)
    return qi, best[qi] & ((1 << 40) - 1), (best[qi] >> 40).astype(np.uint8)


def union_find_groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Group id of each of n elements, given pairs (i[k], j[k]) that belong together.

    The id of a group is its smallest element, so ids are in range(n) and deterministic.
    Vectorised: about a second for a million elements and a few million pairs.
    """
    forest = _Forest(n)
    forest.union(np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64))
    return forest.roots()


# ---------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class _Plan:
    """Blocks (shift, bits) that partition the 64 bits, and the flip radius r: a pair
    within the threshold differs in at most r bits of at least one block.  A single block
    of 0 bits (every pair a candidate) is plain all-pairs comparison."""

    blocks: tuple[tuple[int, int], ...]
    radius: int

    def flips(self, bits: int) -> np.ndarray:
        """Every mask of at most `radius` bits among `bits`, 0 first."""
        masks = [0]
        for weight in range(1, min(self.radius, bits) + 1):
            masks += [sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), weight)]
        return np.array(masks, dtype=np.int64)


def _choose_plan(n_query: int, n_reference: int, threshold: int, self_join: bool) -> _Plan:
    """The plan with the lowest modelled cost for uniformly spread hashes."""
    pairs = n_query * (n_query - 1) / 2 if self_join else n_query * n_reference
    best, best_cost = _Plan(((0, 0),), 0), _COST_STEP + pairs * _COST_PAIR
    # m = T + 1 blocks need no flips (r = 0); fewer, wider blocks need flips; 3 is the fewest
    # whose tables fit (22 bits).
    for m in range(math.ceil(64 / _MAX_BLOCK_BITS), min(max(threshold + 1, 3), 64) + 1):
        radius = threshold // m
        widths = [64 // m + (1 if k < 64 % m else 0) for k in range(m)]
        cost = 0.0
        for bits in widths:
            flips = sum(math.comb(bits, w) for w in range(min(radius, bits) + 1))
            probed = min(n_query, 2 ** bits)
            cost += flips * (_COST_STEP + probed * _COST_PROBE + pairs / 2 ** bits * _COST_PAIR)
        if cost < best_cost:
            shifts = np.cumsum([0] + widths[:-1])
            best, best_cost = _Plan(tuple((int(s), w) for s, w in zip(shifts, widths)), radius), cost
    return best


def _join(query: np.ndarray, reference: np.ndarray, threshold: int, self_join: bool = False,
          forest: _Forest | None = None) -> Iterator[Pairs]:
    """Pairs (query position, reference position, dist) within the threshold, each once.

    With self_join (query is reference), each unordered pair once and never (a, a).  With a
    `forest` (self joins only) that the caller unites the pairs into as they come, pairs
    already in one group may be left out: only the groups are wanted.
    """
    plan = _choose_plan(len(query), len(reference), threshold, self_join)
    for index, (shift, bits) in enumerate(plan.blocks):
        earlier = plan.blocks[:index]
        q_buckets = _Buckets(query, shift, bits)
        r_buckets = q_buckets if self_join else _Buckets(reference, shift, bits)
        grouped = _GroupedBuckets(q_buckets, forest) if forest is not None else None
        for flip in plan.flips(bits):
            if grouped is not None:
                grouped.refresh()
            if self_join and flip == 0:
                # Within each bucket: every member with the later members.
                pos = np.arange(len(query), dtype=np.int64)
                later = q_buckets.table[q_buckets.sorted_values + 1] - pos - 1
                has = later > 0
                if grouped is not None:
                    has &= grouped.group_of(q_buckets.sorted_values) < 0
                chunks = _expand(pos[has], np.ones(int(has.sum()), np.int64), pos[has] + 1, later[has])
            else:
                partner = q_buckets.values ^ flip
                hit = r_buckets.present[partner]
                if self_join:
                    hit &= q_buckets.values < partner  # each pair of buckets once
                hit = np.flatnonzero(hit)
                if grouped is not None:
                    group = grouped.group_of(q_buckets.values[hit])
                    hit = hit[(group < 0) | (group != grouped.group_of(partner[hit]))]
                chunks = _expand(q_buckets.start[hit], q_buckets.count[hit], *r_buckets.runs_of(partner[hit]))
            for q_pos, r_pos in chunks:
                a, b = q_buckets.order[q_pos], r_buckets.order[r_pos]
                diff = query[a] ^ reference[b]
                dist = popcount(diff)
                found = dist <= threshold
                for e_shift, e_bits in earlier:  # found by an earlier block already
                    found &= popcount((diff >> np.uint64(e_shift)) & np.uint64((1 << e_bits) - 1)) > plan.radius
                if found.any():
                    yield a[found], b[found], dist[found]


class _GroupedBuckets:
    """For `near_groups`: the buckets whose members all are in one group already (so pairs
    within them or between two such buckets of the same group need no checking), as a
    table block value -> group (-1: members of several groups).  Recomputed when enough
    unions happened since; a stale table only misses shortcuts, since groups only merge."""

    def __init__(self, buckets: _Buckets, forest: _Forest):
        self.buckets, self.forest = buckets, forest
        self.table = np.full(len(buckets.present), -1, dtype=np.int64)
        self.every = max(64, len(buckets.order) // 256)
        self.seen = forest.merges - self.every  # refresh at the first step

    def refresh(self) -> None:
        if self.forest.merges - self.seen < self.every:
            return
        self.seen = self.forest.merges
        b = self.buckets
        roots = self.forest.roots()[b.order]
        low, high = np.minimum.reduceat(roots, b.start), np.maximum.reduceat(roots, b.start)
        self.table[b.values] = np.where(low == high, low, -1)

    def group_of(self, values: np.ndarray) -> np.ndarray:
        return self.table[values]


class _Buckets:
    """Hashes grouped by the value of one block: `order` sorts them by it, and each distinct
    value (`values`, ascending) is the run start..start+count of `order`.  `present` (one
    byte per possible value: small enough to stay in cache) and `table` (2^bits + 1 run
    starts) answer for any block value."""

    def __init__(self, hashes: np.ndarray, shift: int, bits: int):
        block = ((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
        self.order = np.argsort(block, kind="stable")
        self.sorted_values = block[self.order]
        counts = np.bincount(block, minlength=1 << bits)
        self.present = counts > 0
        self.table = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.table[1:])
        self.values = np.flatnonzero(self.present)
        self.start = self.table[self.values]
        self.count = counts[self.values]

    def runs_of(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, count) of the runs of `values` (each present)."""
        start = self.table[values]
        return start, self.table[values + 1] - start


def _expand(a_start: np.ndarray, a_count: np.ndarray, b_start: np.ndarray,
            b_count: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each k, every (a_start[k] + s, b_start[k] + t) with s < a_count[k] and
    t < b_count[k]; in chunks of at most CHUNK_PAIRS pairs (a larger run pair in tiles)."""
    sizes = a_count * b_count
    for k in np.flatnonzero(sizes > CHUNK_PAIRS):  # huge buckets: tiles
        rows_per_tile = max(1, CHUNK_PAIRS // int(b_count[k]))
        cols_per_tile = min(int(b_count[k]), CHUNK_PAIRS)
        for s in range(0, int(a_count[k]), rows_per_tile):
            rows = np.arange(a_start[k] + s, a_start[k] + min(s + rows_per_tile, int(a_count[k])))
            for t in range(0, int(b_count[k]), cols_per_tile):
                cols = np.arange(b_start[k] + t, b_start[k] + min(t + cols_per_tile, int(b_count[k])))
                yield np.repeat(rows, len(cols)), np.tile(cols, len(rows))
    small = np.flatnonzero((sizes > 0) & (sizes <= CHUNK_PAIRS))
    if not len(small):
        return
    ends = np.cumsum(sizes[small])
    # Cut the runs into chunks of at most CHUNK_PAIRS pairs.
    cuts = [0]
    while cuts[-1] < len(small):
        done = ends[cuts[-1] - 1] if cuts[-1] else 0
        cuts.append(int(np.searchsorted(ends, done + CHUNK_PAIRS, side="right")))
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        runs = small[lo:hi]
        run_sizes = sizes[runs]
        owner = np.repeat(np.arange(len(runs)), run_sizes)
        offset = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(run_sizes) - run_sizes, run_sizes)
        width = b_count[runs][owner]
        s = offset // width
        yield a_start[runs][owner] + s, b_start[runs][owner] + (offset - s * width)


# ---------------------------------------------------------------------------------------
# Union-find


class _Forest:
    """Disjoint sets over range(n), unions applied a whole array of pairs at a time.

    Every pointer goes to a smaller element, so a root is its tree's smallest element.
    """

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.merges = 0  # pairs that joined two groups (an upper bound: the unions done)

    def _root_of(self, x: np.ndarray) -> np.ndarray:
        if len(x) * 4 >= len(self.parent):
            self._compress()  # jumping over the whole array costs less than chasing x's paths
            return self.parent[x]
        root = self.parent[x]
        while True:
            up = self.parent[root]
            if np.array_equal(up, root):
                return root
            root = up

    def union(self, i: np.ndarray, j: np.ndarray) -> None:
        while len(i):
            ri, rj = self._root_of(i), self._root_of(j)
            apart = ri != rj
            i, j, ri, rj = i[apart], j[apart], ri[apart], rj[apart]
            self.merges += len(i)
            # Hook each larger root under a smaller one; when a root appears in several
            # pairs one assignment wins, and the others are redone in the next round.
            self.parent[np.maximum(ri, rj)] = np.minimum(ri, rj)

    def _compress(self) -> None:
        """Pointer jumping until every element points at its root."""
        while True:
            up = self.parent[self.parent]
            if np.array_equal(up, self.parent):
                return
            self.parent = up

    def roots(self) -> np.ndarray:
        self._compress()
        return self.parent.copy()


# ---------------------------------------------------------------------------------------


def _as_hashes(hashes: np.ndarray) -> np.ndarray:
    hashes = np.asarray(hashes)
    if hashes.ndim != 1:
        raise ValueError(f"expected a 1-d array of hashes, not shape {hashes.shape}")
    if hashes.dtype != np.uint64:
        if hashes.size and (hashes.dtype.kind not in "ui" or hashes.min() < 0):
            raise ValueError(f"hashes must be unsigned 64-bit integers, not {hashes.dtype}")
        hashes = hashes.astype(np.uint64)
    return hashes


def _check_threshold(threshold: int) -> None:
    if not 0 <= threshold <= 64:
        raise ValueError(f"threshold must be between 0 and 64, not {threshold}")


def _lower(target: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """target[index] = min(target[index], values), repeated indices included (what
    np.minimum.at does, without its slowness before NumPy 1.25)."""
    order = np.lexsort((values, index))
    index, values = index[order], values[order]
    first = np.ones(len(index), dtype=bool)
    first[1:] = index[1:] != index[:-1]
    index, values = index[first], values[first]
    target[index] = np.minimum(target[index], values)


def _no_pairs() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
