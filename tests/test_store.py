"""The store's lookups: whole keys, the first source among duplicates, failed rows never used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.common.io import save_npy
from stages.common.store import KEY_BYTES, Store, first_of_each, index_rows, missing_rows


def key(prefix: int, rest: int) -> np.ndarray:
    """A key whose first 8 bytes are ``prefix`` and the other 24 ``rest``."""
    k = np.zeros(KEY_BYTES, dtype=np.uint8)
    k[:8] = np.frombuffer(prefix.to_bytes(8, "little"), dtype=np.uint8)
    k[8:] = rest
    return k


def source(
    tmp_path: Path, name: str, keys: list[np.ndarray], values: list[int]
) -> tuple[Path, Path]:
    rows = np.array([[v] * 4 for v in values], dtype=np.float32)
    save_npy(tmp_path / f"{name}_index.npy", index_rows(np.stack(keys), rows))
    save_npy(tmp_path / f"{name}.npy", rows)
    return tmp_path / f"{name}_index.npy", tmp_path / f"{name}.npy"


def stored(store: Store, keys: np.ndarray) -> np.ndarray:
    """The first value of each stored row of ``keys``, as ``assemble`` copies them."""
    out, index = np.zeros((len(keys), 4), np.float32), np.zeros((len(keys), 40), np.uint8)
    store.copy_rows(keys, out, np.arange(len(keys)), index)
    np.testing.assert_array_equal(index[:, :KEY_BYTES], keys)
    return out[:, 0]


def test_keys_sharing_their_first_bytes_are_told_apart(tmp_path: Path) -> None:
    a, b, c = key(7, 1), key(7, 2), key(7, 3)  # one prefix, three keys
    store = Store()
    store.add(*source(tmp_path, "s", [b, a], [20, 10]))
    np.testing.assert_array_equal(store.find(np.stack([a, b, c, key(8, 1)])), [1, 0, -1, -1])
    assert store.verify(np.stack([a, b, c])).tolist() == [True, True, False]
    assert stored(store, np.stack([a, b])).tolist() == [10, 20]


def test_the_first_source_holds_a_duplicate_and_a_failed_row_is_never_used(tmp_path: Path) -> None:
    a = key(1, 1)
    store = Store()
    first, second = source(tmp_path, "first", [a], [1]), source(tmp_path, "second", [a], [2])
    store.add(*first)
    store.add(*second)
    assert stored(store, a[None]).tolist() == [1]
    save_npy(first[1], np.full((1, 4), 99, dtype=np.float32))  # the first copy goes bad
    store = Store()
    store.add(*first)
    store.add(*second)
    assert missing_rows(store, a[None]).tolist() == [0]  # dropped: computed again, not guessed
    assert store.find(a[None]).tolist() == [-1]


def test_first_of_each_computes_each_key_once_in_order_of_first_appearance() -> None:
    keys = np.stack([key(5, 0), key(3, 0), key(5, 0), key(4, 0), key(3, 0)])
    todo, slots = first_of_each(keys, [1, 2, 3, 4])
    assert todo.tolist() == [1, 2, 3]
    assert slots.tolist() == [-1, 0, 1, 2, 0]
