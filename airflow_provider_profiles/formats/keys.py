"""The duplicate-identifier check: an exact set of 64-bit key hashes in bounded memory.

A blocked Bloom filter of fixed size says "surely new" for almost every key; the few others are
searched among the keys themselves. The most recent keys are kept in memory as sorted levels;
once ``memory_keys`` of them are held they are merged into one sorted run and appended to a
temporary file. A search reads only the block (one page) of each run that can hold the key, found
through a sparse index of every ``BLOCK``-th key kept in memory: memory stays the same however
many keys there are (about 40 MB: the filter, up to ``memory_keys`` keys and a merge of them).

Over 10M distinct keys the filter sent about 4,000 keys (0.04%) to a search; with many more keys
that share grows, which costs time, never correctness.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

BLOCK = 512  # keys per page of a spilled run: a search reads one page per key and run


class SeenKeys:
    BITS_PER_KEY = 4

    def __init__(self, memory_keys: int = 1_000_000, filter_bits: int = 28, directory: str | None = None):
        self.memory_keys = memory_keys
        self.directory = directory
        # each key sets BITS_PER_KEY bits of one 64-bit word: one memory access per test
        self.word_shift = np.uint64(64 - (filter_bits - 6))
        self.filter = np.zeros(1 << (filter_bits - 6), dtype=np.uint64)
        self.levels: list[np.ndarray] = []
        self.held = 0
        self.runs: list[tuple[int, np.ndarray]] = []  # (first block in the file, first key of each block)
        self.spilled_blocks = 0
        self.file = None

    def _filter_slots(self, ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word (from the top bits, so sorted keys give sorted words) and bit mask of each key."""
        words = (ordered >> self.word_shift).astype(np.int64)
        masks = np.zeros(len(ordered), dtype=np.uint64)
        for index in range(self.BITS_PER_KEY):
            masks |= np.uint64(1) << ((ordered >> np.uint64(6 * index)) & np.uint64(63))
        return words, masks

    def add_new(self, hashes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Adds ``hashes[valid]``; returns a mask of rows whose key was seen before (or earlier here)."""
        duplicate = np.zeros(len(hashes), dtype=bool)
        index = np.flatnonzero(valid)
        if not len(index):
            return duplicate
        candidates = hashes[index]
        ordered = np.sort(candidates)
        repeated = np.zeros(len(ordered), dtype=bool)
        repeated[1:] = ordered[1:] == ordered[:-1]
        words, masks = self._filter_slots(ordered)
        maybe = np.flatnonzero((self.filter[words] & masks) == masks)
        if len(maybe):
            repeated[maybe] |= self._contains(ordered[maybe])
        run_starts = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1])))
        self.filter[words[run_starts]] |= np.bitwise_or.reduceat(masks, run_starts)
        self._keep(ordered[~repeated])
        if repeated.any():
            # A stable sort puts the first of equal keys in input order first: the one kept.
            order = np.argsort(candidates, kind="stable")
            in_rows = np.empty(len(order), dtype=bool)
            in_rows[order] = repeated
            duplicate[index[in_rows]] = True
        return duplicate

    def _contains(self, needles: np.ndarray) -> np.ndarray:
        """Which of the sorted ``needles`` are held, in memory or in the spilled runs."""
        found = np.zeros(len(needles), dtype=bool)
        for level in self.levels:
            found |= level[np.minimum(np.searchsorted(level, needles), len(level) - 1)] == needles
        for first_block, index in self.runs:
            found |= self._search_run(first_block, index, needles)
        return found

    def _search_run(self, first_block: int, index: np.ndarray, needles: np.ndarray) -> np.ndarray:
        """Reads the one block of the run that can hold each needle (``pread``: a memory map
        would make the pages resident, and the kernel maps 16 around each one touched)."""
        blocks = np.unique(np.maximum(np.searchsorted(index, needles, side="right") - 1, 0))
        fd = self.file.fileno()
        data = b"".join([os.pread(fd, BLOCK * 8, (first_block + int(block)) * BLOCK * 8) for block in blocks])
        keys = np.frombuffer(data, dtype=np.uint64)  # whole blocks in file order: sorted
        return keys[np.minimum(np.searchsorted(keys, needles), len(keys) - 1)] == needles

    def _keep(self, fresh: np.ndarray) -> None:
        if len(fresh):
            self.levels.append(fresh)
            self.held += len(fresh)
        # Merge small levels into bigger ones (few arrays to search); timsort merges two sorted
        # runs in linear time.
        while len(self.levels) > 1 and len(self.levels[-2]) <= len(self.levels[-1]) * 2:
            top = self.levels.pop()
            below = self.levels.pop()
            merged = np.concatenate((below, top))
            del top, below
            merged.sort(kind="stable")
            self.levels.append(merged)
        if self.held >= self.memory_keys:
            self._spill()

    def _spill(self) -> None:
        merged = np.concatenate(self.levels) if len(self.levels) > 1 else self.levels[0]
        self.levels = []
        merged.sort(kind="stable")
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="profiles-keys-", dir=self.directory)
        padding = -len(merged) % BLOCK  # whole blocks only: the last key repeated
        self.file.write(merged.data)
        self.file.write(np.full(padding, merged[-1], dtype=np.uint64).data)
        self.file.flush()
        self.runs.append((self.spilled_blocks, merged[::BLOCK].copy()))
        self.spilled_blocks += (len(merged) + padding) // BLOCK
        self.held = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
