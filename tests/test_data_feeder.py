"""The feeder: HDF5Data, MemoryData and DummyData batches in Caffe's record order, rank
striding (Caffe's multi-GPU Skip()), shuffling, and located errors for bad data."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from protocaffe.data import make_feeder
from protocaffe.diagnostics import CompileError
from protocaffe.frontend import parse_text
from protocaffe.ir.build import build_graph

HDF5_NET = """
layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 2 }} }}
"""


def graph(text: str, phase: str = "TRAIN", shapes: dict | None = None):
    return build_graph(parse_text(text, "<net>"), phase=phase, input_shapes=shapes or {})


@pytest.fixture
def two_files(tmp_path, monkeypatch):
    """a.h5 rows 0..4, b.h5 rows 10..11 (label = row id, data = 3 copies of it)."""
    monkeypatch.chdir(tmp_path)
    for name, ids in (("a.h5", range(5)), ("b.h5", range(10, 12))):
        with h5py.File(name, "w") as f:
            f["data"] = np.repeat(np.asarray(ids, np.float32)[:, None], 3, axis=1)
            f["label"] = np.asarray(ids, np.int32)
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")
    return tmp_path


def hdf5_graph(batch=3, extra="", phase="TRAIN"):
    text = HDF5_NET.format(source="list.txt", batch=batch, extra=extra)
    return graph(text, phase, {"data": (batch, 3), "label": (batch,)})


def labels(feeder, steps):
    with feeder:
        return [next(feeder)["label"].tolist() for _ in range(steps)]


def test_hdf5_rows_in_file_order_and_wrap(two_files):
    feeder = make_feeder(hdf5_graph())
    with feeder:
        batch = next(feeder)
        assert set(batch) == {"data", "label"}
        assert batch["data"].dtype.is_floating_point and batch["data"].shape == (3, 3)
        assert batch["data"][:, 0].tolist() == [0, 1, 2]
        rest = [next(feeder)["label"].tolist() for _ in range(3)]
    # Rows run through a.h5 then b.h5, then wrap to the start (Caffe's Next()).
    assert rest == [[3, 4, 10], [11, 0, 1], [2, 3, 4]]


@pytest.mark.parametrize(("rank", "expected"), [(0, [0, 2, 4, 11, 1]), (1, [1, 3, 10, 0, 2])])
def test_hdf5_rank_striding_counts_every_record_across_wraps(two_files, rank, expected):
    # The 7-record cycle a0..a4 b0 b1 repeats; rank r keeps offsets = r (mod 2).
    got = [
        v for b in labels(make_feeder(hdf5_graph(batch=1), rank=rank, world_size=2), 5) for v in b
    ]
    assert got == expected


def test_test_phase_never_strides(two_files):
    feeder = make_feeder(hdf5_graph(batch=1, phase="TEST"), rank=1, world_size=2)
    assert labels(feeder, 3) == [[0], [1], [2]]


def test_hdf5_shuffle_permutes_rows_within_files(two_files):
    feeder = make_feeder(hdf5_graph(batch=7, extra="shuffle: true"), seed=3)
    passes = labels(feeder, 3)
    for one in passes:
        assert sorted(one) == [0, 1, 2, 3, 4, 10, 11]
        # Rows never interleave across files: each file's rows are contiguous.
        first_b = [i for i, v in enumerate(one) if v >= 10]
        assert first_b in ([0, 1], [5, 6])
    assert labels(make_feeder(hdf5_graph(batch=7, extra="shuffle: true"), seed=3), 3) == passes


def test_missing_dataset_is_a_located_error(two_files):
    text = HDF5_NET.format(source="list.txt", batch=2, extra="").replace('"label"', '"lbl"', 1)
    g = graph(text, shapes={"data": (2, 3), "lbl": (2,)})
    with make_feeder(g) as feeder, pytest.raises(CompileError) as info:
        next(feeder)
    message = info.value.diagnostics[0].message
    assert "a.h5" in message and "no dataset 'lbl'" in message and "label" in message
    assert info.value.diagnostics[0].span is not None


def test_rows_disagreeing_with_the_net_name_the_file(two_files):
    g = graph(
        HDF5_NET.format(source="list.txt", batch=2, extra=""),
        shapes={"data": (2, 4), "label": (2,)},
    )
    with make_feeder(g) as feeder, pytest.raises(CompileError, match=r"a\.h5: dataset 'data'"):
        next(feeder)


def test_missing_list_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = graph(
        HDF5_NET.format(source="nope.txt", batch=2, extra=""),
        shapes={"data": (2, 3), "label": (2,)},
    )
    with make_feeder(g) as feeder, pytest.raises(CompileError, match=r"nope\.txt"):
        next(feeder)


MEMORY_NET = """
layer { name: "m" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
layer { name: "z" type: "DummyData" top: "z" dummy_data_param { shape { dim: 1 } } }
"""


def test_memory_data_serves_set_arrays_in_order():
    feeder = make_feeder(graph(MEMORY_NET))
    data = np.arange(4 * 4, dtype=np.float32).reshape(4, 1, 2, 2)
    with pytest.raises(CompileError, match="set_input_arrays"):
        next(feeder)
    feeder.set_input_arrays(data, np.arange(4))
    got = [next(feeder) for _ in range(3)]
    # DummyData tops are made by the module itself: only the net's inputs are fed.
    assert set(got[0]) == {"data", "label"}
    assert [b["label"].tolist() for b in got] == [[0, 1], [2, 3], [0, 1]]
    np.testing.assert_array_equal(got[1]["data"].numpy(), data[2:4])
    with pytest.raises(CompileError, match="multiple of batch_size"):
        feeder.set_input_arrays(data[:3], np.arange(3))


def test_dummy_data_only_net_feeds_nothing():
    g = graph(
        'layer { name: "z" type: "DummyData" top: "z" dummy_data_param { shape { dim: 1 } } }'
    )
    feeder = make_feeder(g)
    assert next(feeder) == {} and next(feeder) == {}


def test_input_layer_is_not_a_data_source():
    g = graph('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    with pytest.raises(CompileError, match="Input layer 'in'"):
        make_feeder(g)
