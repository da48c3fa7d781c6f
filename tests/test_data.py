import numpy as np
import pandas as pd
import pytest

from vfl.data import DataError, load_table, read_ids
from vfl.split import batch_schedule, split_mask


def test_ids_are_text_and_duplicates_are_named(tmp_path):
    p = tmp_path / "a.csv"
    pd.DataFrame({"id": ["007", "7", "8"], "x": [1, 2, 3]}).to_csv(p, index=False)
    assert list(read_ids(p, "id")) == ["007", "7", "8"]
    pd.DataFrame({"id": ["1", "2", "1", "3", "3"], "x": range(5)}).to_csv(p, index=False)
    with pytest.raises(DataError, match="2 duplicate IDs, first: '1', '3'"):
        read_ids(p, "id")


@pytest.mark.parametrize("frame, kwargs, message", [
    (pd.DataFrame({"key": ["a"], "x": [1]}), {}, "ID column 'id' not found"),
    (pd.DataFrame({"id": ["a"], "x": [1]}), {"label_column": "y"}, "label column 'y' not found"),
    (pd.DataFrame({"id": ["a", "b"], "x": [1, 2], "y": [0, 2]}), {"label_column": "y"}, "must hold 0/1"),
    (pd.DataFrame({"id": ["a", "b"], "x": ["u", "v"]}), {}, "non-numeric feature columns x"),
    (pd.DataFrame({"id": ["a", "b"], "x": [1.0, None]}), {}, "missing values in columns x"),
])
def test_bad_tables_are_refused_clearly(tmp_path, frame, kwargs, message):
    p = tmp_path / "t.csv"
    frame.to_csv(p, index=False)
    with pytest.raises(DataError, match=message):
        load_table(p, "id", **kwargs)


def test_split_is_order_independent_and_near_the_fraction():
    ids = np.array([f"u{i}" for i in range(20000)])
    m = split_mask(ids, seed=5, test_fraction=0.2)
    assert abs(m.mean() - 0.2) < 0.015
    perm = np.random.default_rng(0).permutation(len(ids))
    assert (split_mask(ids[perm], 5, 0.2) == m[perm]).all()
    assert (split_mask(ids, 6, 0.2) != m).any()


def test_batches_cover_every_row_once_and_differ_by_epoch():
    b0 = batch_schedule(1000, 300, seed=1, epoch=0)
    assert sorted(np.concatenate(b0).tolist()) == list(range(1000))
    assert [len(b) for b in b0] == [300, 300, 400]   # a tail of 100 < 150 is merged
    assert not np.array_equal(np.concatenate(b0), np.concatenate(batch_schedule(1000, 300, 1, 1)))
