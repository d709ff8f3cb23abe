"""media.hash_index: near pairs, groups and reference matches against brute force."""
from __future__ import annotations

import time

import numpy as np
import pytest

from datamill.media import hash_index
from datamill.media.hash_index import (iter_near_pairs, near_groups, near_pairs, pairs_against,
                                       union_find_groups)
from datamill.media.hashes import hamming

THRESHOLDS = range(0, 13)


def random_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)


def flip_bits(h: np.ndarray, flips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each h[k] with flips[k] distinct random bits flipped."""
    out = h.copy()
    for k, count in enumerate(flips):
        for bit in rng.choice(64, int(count), replace=False):
            out[k] ^= np.uint64(1) << np.uint64(bit)
    return out


def clustered_hashes(n: int, seeds: int, max_flips: int, rng: np.random.Generator) -> np.ndarray:
    """Copies of a few seeds with 0..max_flips bits flipped (so some copies are identical)."""
    base = random_hashes(seeds, rng)[rng.integers(0, seeds, n)]
    return flip_bits(base, rng.integers(0, max_flips + 1, n), rng)


def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    uniform = random_hashes(3000, rng)
    uniform[2000:2300] = flip_bits(uniform[:300], rng.integers(1, 13, 300), rng)  # planted pairs
    skewed = clustered_hashes(3000, 80, 4, rng)
    skewed[rng.integers(0, 3000, 400)] = skewed[7]  # one value many times (blank images)
    # Hashes sharing most of their bits, so the blocks of the search are very unequal.
    narrow = (np.uint64(0xFFFF_0000_0000_0000) | rng.integers(0, 1 << 14, 600).astype(np.uint64))
    return {"uniform": uniform, "clustered": clustered_hashes(3000, 60, 4, rng), "duplicates": skewed,
            "narrow": narrow}


DATASETS = datasets()


def brute_force_pairs(h: np.ndarray, threshold: int) -> set[tuple[int, int]]:
    """What near_pairs promises, computed the obvious way: copies linked to the first
    occurrence of their value, near pairs between first occurrences."""
    values, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    i, j = np.triu_indices(len(values), 1)
    near = hamming(values[i], values[j]) <= threshold
    a, b = first[i[near]], first[j[near]]
    pairs = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    copies = np.flatnonzero(first[inverse] != np.arange(len(h)))
    return pairs | set(zip(first[inverse[copies]].tolist(), copies.tolist()))


def brute_force_groups(h: np.ndarray, threshold: int) -> np.ndarray:
    """Connected components of all pairs within the threshold, by a plain Python union-find,
    with the smallest member as id."""
    parent = list(range(len(h)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    i, j = np.triu_indices(len(h), 1)
    near = hamming(h[i], h[j]) <= threshold
    for a, b in zip(i[near].tolist(), j[near].tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(len(h))])


def check_pairs(h: np.ndarray, threshold: int, result) -> None:
    i, j, dist = result
    assert i.dtype == j.dtype == np.int64 and dist.dtype == np.uint8
    assert np.all(i < j)
    assert np.array_equal(dist, hamming(h[i], h[j]))
    found = list(zip(i.tolist(), j.tolist()))
    assert found == sorted(found) and len(set(found)) == len(found)
    assert set(found) == brute_force_pairs(h, threshold)  # every pair, each once (sorted, set equal)


@pytest.mark.parametrize("name", list(DATASETS))
def test_near_pairs_equal_brute_force(name):
    h = DATASETS[name]
    for threshold in THRESHOLDS:
        check_pairs(h, threshold, near_pairs(h, threshold))


# Plans forced whatever the cost model says: all-pairs, the widest blocks with flips, unequal
# blocks, T + 1 blocks without flips, and more blocks than needed.
PLANS = {
    "all pairs": lambda t: hash_index._Plan(((0, 0),), 0),
    "3 blocks": lambda t: hash_index._Plan(((0, 22), (22, 21), (43, 21)), t // 3),
    "unequal": lambda t: hash_index._Plan(((0, 10), (10, 20), (30, 14), (44, 20)), t // 4),
    "T+1 blocks": lambda t: _even_plan(max(t + 1, 3), 0),
    "16 blocks": lambda t: _even_plan(16, t // 16),
}


def _even_plan(m: int, radius: int) -> hash_index._Plan:
    widths = [64 // m + (1 if k < 64 % m else 0) for k in range(m)]
    shifts = np.cumsum([0] + widths[:-1])
    return hash_index._Plan(tuple((int(s), w) for s, w in zip(shifts, widths)), radius)


@pytest.mark.parametrize("plan", list(PLANS))
def test_every_plan_finds_every_pair(plan, monkeypatch):
    monkeypatch.setattr(hash_index, "_choose_plan", lambda nq, nr, t, self_join: PLANS[plan](t))
    monkeypatch.setattr(hash_index, "CHUNK_PAIRS", 5000)  # many chunks, big buckets in tiles
    h = DATASETS["duplicates"][:1500]
    for threshold in (1, 4, 8, 11):
        check_pairs(h, threshold, near_pairs(h, threshold))
        assert np.array_equal(near_groups(h, threshold), brute_force_groups(h, threshold))


def test_cost_model_plans():
    def plan(n, t):
        return hash_index._choose_plan(n, n, t, True)

    assert plan(20, 8).blocks == ((0, 0),)  # few hashes: every pair
    assert plan(1_000_000, 8) == hash_index._Plan(((0, 22), (22, 21), (43, 21)), 2)
    assert plan(1_000_000, 2).radius == 0 and len(plan(1_000_000, 2).blocks) == 3
    for n in (50, 3000, 100_000, 1_000_000):
        for t in (0, 1, 5, 8, 12, 64):
            p = plan(n, t)
            assert sum(bits for _, bits in p.blocks) in (0, 64)
            assert p.blocks == ((0, 0),) or t // len(p.blocks) == p.radius


def test_identical_hashes_are_a_star_not_a_clique():
    rng = np.random.default_rng(3)
    h = np.concatenate([np.full(20_000, 0x8000_0000_0000_0000, np.uint64), random_hashes(100, rng)])
    h[5] = 0x8000_0000_0000_0001  # one near copy of the blank hash
    i, j, dist = near_pairs(h, 8)
    blank = (i == 0) & (dist == 0)
    assert blank.sum() == 20_000 - 2  # every copy once, linked to the first
    assert ((i == 0) & (j == 5) & (dist == 1)).sum() == 1
    assert len(i) < 20_100


def test_ids_replace_positions():
    h = np.array([0b1011, 0b0011, 0b1011, 1 << 40], np.uint64)
    i, j, dist = near_pairs(h, 1)
    assert (i.tolist(), j.tolist(), dist.tolist()) == ([0, 0], [1, 2], [1, 0])
    i, j, _ = near_pairs(h, 1, ids=np.array([10, 11, 12, 13]))
    assert (i.tolist(), j.tolist()) == ([10, 10], [11, 12])


def test_iter_near_pairs_chunks_are_bounded(monkeypatch):
    monkeypatch.setattr(hash_index, "CHUNK_PAIRS", 700)
    h = DATASETS["clustered"]
    chunks = list(iter_near_pairs(h, 8))
    assert len(chunks) > 3 and all(len(i) <= 700 for i, _, _ in chunks)
    found = {(a, b) for i, j, _ in chunks for a, b in zip(i.tolist(), j.tolist())}
    assert found == brute_force_pairs(h, 8)


def test_candidate_pairs_come_in_bounded_chunks_huge_buckets_in_tiles(monkeypatch):
    monkeypatch.setattr(hash_index, "CHUNK_PAIRS", 100)
    a_start, a_count = np.array([0, 10, 500, 40, 7]), np.array([3, 1, 30, 0, 1])
    b_start, b_count = np.array([100, 200, 1000, 9, 3000]), np.array([4, 250, 40, 5, 1])
    expected = sorted((a + s, b + t) for a, na, b, nb in zip(a_start, a_count, b_start, b_count)
                      for s in range(na) for t in range(nb))
    chunks = list(hash_index._expand(a_start, a_count, b_start, b_count))
    assert all(len(p) == len(q) <= 100 for p, q in chunks)
    assert sorted(pair for p, q in chunks for pair in zip(p.tolist(), q.tolist())) == expected


@pytest.mark.parametrize("name", ["clustered", "duplicates", "uniform"])
def test_near_groups_equal_brute_force(name):
    h = DATASETS[name][:2000]
    for threshold in (0, 3, 8, 12):
        groups = near_groups(h, threshold)
        assert np.array_equal(groups, brute_force_groups(h, threshold))
        i, j, _ = near_pairs(h, threshold)
        assert np.array_equal(groups, union_find_groups(len(h), i, j))


def test_pairs_against_gives_each_query_its_nearest_reference():
    rng = np.random.default_rng(4)
    reference = clustered_hashes(2000, 40, 3, rng)
    query = np.concatenate([flip_bits(reference[:300], rng.integers(0, 8, 300), rng), random_hashes(500, rng),
                            reference[:5]])
    for threshold in (0, 2, 6, 10):
        qi, rj, dist = pairs_against(query, reference, threshold)
        d = hamming(query[:, None], reference[None, :])
        best = d.min(axis=1)
        expected_q = np.flatnonzero(best <= threshold)
        assert qi.tolist() == expected_q.tolist()
        assert dist.tolist() == best[expected_q].tolist()
        # the first reference position at the smallest distance
        assert rj.tolist() == [int(np.flatnonzero(d[q] == best[q])[0]) for q in expected_q]
    assert all(len(a) == 0 for a in pairs_against(query[:0], reference, 8))
    assert all(len(a) == 0 for a in pairs_against(query, reference[:0], 8))


def test_union_find_groups_against_python():
    rng = np.random.default_rng(5)
    n = 3000
    i, j = rng.integers(0, n, 2500), rng.integers(0, n, 2500)
    i = np.concatenate([i, np.arange(100, 600), np.arange(2999, 2000, -1)])  # long chains
    j = np.concatenate([j, np.arange(101, 601), np.arange(2998, 1999, -1)])
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    expected = [find(x) for x in range(n)]
    assert union_find_groups(n, i, j).tolist() == expected
    assert union_find_groups(4, np.array([], np.int64), np.array([], np.int64)).tolist() == [0, 1, 2, 3]


def test_union_find_a_million_elements_in_seconds():
    rng = np.random.default_rng(6)
    n = 1_000_000
    i, j = rng.integers(0, n, 1_500_000), rng.integers(0, n, 1_500_000)
    start = time.process_time()
    groups = union_find_groups(n, i, j)
    assert time.process_time() - start < 10
    assert np.array_equal(groups[i], groups[j])
    assert np.all(groups <= np.arange(n)) and np.array_equal(groups[groups], groups)


def test_scaling_100k_every_planted_pair_found():
    rng = np.random.default_rng(7)
    h = random_hashes(100_000, rng)
    h[50_000:52_000] = flip_bits(h[:2000], np.arange(2000) % 8 + 1, rng)
    seeds = random_hashes(500, rng)  # 10,000 more in tight clusters
    h[60_000:70_000] = flip_bits(seeds[np.arange(10_000) % 500], rng.integers(0, 4, 10_000), rng)
    start = time.process_time()
    i, j, dist = near_pairs(h, 8)
    elapsed = time.process_time() - start
    assert elapsed < 10
    found = set(zip(i.tolist(), j.tolist()))
    assert all((k, 50_000 + k) in found for k in range(2000))
    groups = near_groups(h, 8)
    assert np.array_equal(groups, union_find_groups(len(h), i, j))
    assert len(np.unique(groups[60_000:70_000])) <= 500


def test_bad_arguments():
    h = np.arange(10, dtype=np.uint64)
    for threshold in (-1, 65):
        with pytest.raises(ValueError):
            near_pairs(h, threshold)
    with pytest.raises(ValueError):
        near_pairs(h.reshape(2, 5), 3)
    with pytest.raises(ValueError):
        near_groups(np.array([-1, 2]), 3)
    i, j, _ = near_pairs(np.arange(5, dtype=np.int64), 1)  # signed but not negative: fine
    assert (i.tolist(), j.tolist()) == ([0, 0, 0, 1, 2], [1, 2, 4, 3, 3])
    assert all(len(a) == 0 for a in near_pairs(np.zeros(0, np.uint64), 8))
    assert near_groups(np.zeros(0, np.uint64), 8).tolist() == []
    assert near_groups(np.array([5], np.uint64), 8).tolist() == [0]
