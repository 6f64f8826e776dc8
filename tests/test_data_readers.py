"""Data (LMDB Datum records, raw and encoded) and ImageData readers, the shared DataTransformer
(`runtime.transform`), and compile taking shapes from the first record as Caffe's setup does.
Expected values come from Caffe's formulas written out in numpy here."""

from __future__ import annotations

import cv2
import lmdb
import numpy as np
import pytest

from protocaffe.data import make_feeder
from protocaffe.diagnostics import CompileError
from protocaffe.frontend import parse_text
from protocaffe.ir.build import build_graph
from protocaffe.proto import caffe_pb2
from protocaffe.runtime.transform import Transform


def graph(text: str, phase: str = "TEST"):
    return build_graph(parse_text(text, "<net>"), phase=phase)


def datum(chw: np.ndarray, label: int, encoded: bool = False) -> bytes:
    d = caffe_pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2])
    if encoded:
        d.data = cv2.imencode(".png", chw.transpose(1, 2, 0))[1].tobytes()
        d.encoded = True
    else:
        d.data = chw.tobytes()
    d.label = label
    return d.SerializeToString()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (3, 6, 7), dtype=np.uint8) for _ in range(5)]


@pytest.fixture
def db(tmp_path, monkeypatch, images):
    """train_lmdb: 5 records, keys %08d as convert_imageset writes them; odd ones encoded."""
    monkeypatch.chdir(tmp_path)
    env = lmdb.open("train_lmdb", map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, img in enumerate(images):
            txn.put(f"{i:08d}".encode(), datum(img, 10 + i, encoded=i % 2 == 1))
    env.close()
    return tmp_path


def data_net(transform: str = "", batch: int = 2) -> str:
    return (
        'layer { name: "d" type: "Data" top: "data" top: "label" '
        f"transform_param {{ {transform} }} "
        f'data_param {{ source: "train_lmdb" backend: LMDB batch_size: {batch} }} }}'
    )


def caffe_transform(img, mean, scale, crop, h_off, w_off, mirror=False):
    """DataTransformer::Transform's loop, element by element."""
    c, _, _ = img.shape
    out = np.zeros((c, crop, crop), np.float32)
    for ch in range(c):
        for h in range(crop):
            for w in range(crop):
                x = (float(img[ch, h_off + h, w_off + w]) - mean[ch]) * scale
                out[ch, h, crop - 1 - w if mirror else w] = x
    return out


def test_compile_reads_the_first_datum_for_the_shape(db):
    g = graph(data_net(batch=4))
    assert g.blob("data").shape == (4, 3, 6, 7) and g.blob("label").shape == (4,)
    assert graph(data_net("crop_size: 5")).blob("data").shape == (2, 3, 5, 5)


def test_missing_source_still_asks_for_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError, match="data=2,C,H,W"):
        graph(data_net())


def test_lmdb_records_in_key_order_with_test_transform(db, images):
    net = data_net("crop_size: 4 scale: 0.5 mean_value: 1 mean_value: 2 mean_value: 3")
    with make_feeder(graph(net)) as feeder:
        got = [next(feeder) for _ in range(3)]
    order = [0, 1, 2, 3, 4, 0]  # wraps to the first record
    for step, batch in enumerate(got):
        assert batch["label"].tolist() == [10 + order[2 * step], 10 + order[2 * step + 1]]
        for k in range(2):
            # TEST: centre crop ((6-4)//2, (7-4)//2) = (1, 1).
            want = caffe_transform(images[order[2 * step + k]], [1, 2, 3], 0.5, 4, 1, 1)
            np.testing.assert_allclose(batch["data"][k].numpy(), want, rtol=0, atol=1e-6)


def test_train_crops_and_mirrors_are_caffe_crops(db, images):
    net = data_net("crop_size: 4 mirror: true mean_value: 100", batch=5)
    with make_feeder(graph(net, "TRAIN"), seed=1) as feeder:
        batches = [next(feeder)["data"].numpy() for _ in range(4)]
    seen = set()
    for batch in batches:
        for k, item in enumerate(batch):
            matches = [
                (h, w, m)
                for h in range(3)
                for w in range(4)
                for m in (False, True)
                if np.array_equal(item, caffe_transform(images[k], [100] * 3, 1, 4, h, w, m))
            ]
            assert matches, "every item is one crop/mirror of its record"
            seen.add(matches[0])
    assert len(seen) > 4, "offsets and mirroring vary"
    with make_feeder(graph(net, "TRAIN"), seed=1) as again:
        np.testing.assert_array_equal(next(again)["data"].numpy(), batches[0])


def test_transform_order_mean_file_before_crop_and_scale():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (2, 5, 5)).astype(np.float32)
    mean = rng.random((2, 5, 5)).astype(np.float32) * 50
    step = Transform(scale=0.25, crop_size=3, mean_image=mean)
    # Caffe: (pixel - mean[uncropped position]) * scale at the centre offsets (1, 1).
    want = (img[:, 1:4, 1:4] - mean[:, 1:4, 1:4]) * 0.25
    np.testing.assert_allclose(step(img), want, rtol=1e-6)
    with pytest.raises(CompileError, match="only one"):
        Transform(mean_values=(1.0,), mean_image=mean).check()


def test_corrupt_record_names_the_record(db):
    env = lmdb.open("train_lmdb", map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"00000001", b"\xff\xff not a datum")
    env.close()
    with make_feeder(graph(data_net())) as feeder, pytest.raises(CompileError) as info:
        next(feeder)
    assert "train_lmdb record 00000001" in info.value.diagnostics[0].message


def test_missing_lmdb_is_a_clear_error(db):
    g = graph(data_net())
    g.layers[0].proto.data_param.source = "gone_lmdb"
    with make_feeder(g) as feeder, pytest.raises(CompileError, match="gone_lmdb: no such LMDB"):
        next(feeder)


@pytest.fixture
def image_list(tmp_path, monkeypatch, images):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    for i, img in enumerate(images):
        cv2.imwrite(str(tmp_path / "img" / f"im {i}.png"), img.transpose(1, 2, 0))
    # Paths may contain spaces: Caffe splits each line at its last space.
    (tmp_path / "list.txt").write_text("".join(f"im {i}.png {i}\n" for i in range(5)))
    return tmp_path


def image_net(extra: str = "", batch: int = 1) -> str:
    return (
        'layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { '
        f'source: "list.txt" root_folder: "img/" batch_size: {batch} {extra} }} }}'
    )


def test_image_data_reads_bgr_in_list_order(image_list, images):
    g = graph(image_net(batch=2))
    assert g.blob("data").shape == (2, 3, 6, 7)  # from the first image, as Caffe's setup
    with make_feeder(g) as feeder:
        batch = next(feeder)
    np.testing.assert_array_equal(batch["data"].numpy(), np.stack(images[:2]).astype(np.float32))
    assert batch["label"].tolist() == [0, 1]


def test_image_data_resize_and_grey(image_list):
    g = graph(image_net("new_height: 4 new_width: 5 is_color: false"))
    assert g.blob("data").shape == (1, 1, 4, 5)
    with make_feeder(g) as feeder:
        item = next(feeder)["data"].numpy()[0, 0]
    # Caffe: cv::imread(path, IMREAD_GRAYSCALE) then cv::resize (bilinear).
    grey = cv2.imread(str(image_list / "img" / "im 0.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(item, cv2.resize(grey, (5, 4)).astype(np.float32))


def test_image_data_shuffle_is_a_permutation_per_pass(image_list):
    with make_feeder(graph(image_net("shuffle: true"), "TRAIN"), seed=5) as feeder:
        labels = [int(next(feeder)["label"][0]) for _ in range(10)]
    assert sorted(labels[:5]) == sorted(labels[5:]) == [0, 1, 2, 3, 4]
    assert labels[:5] != [0, 1, 2, 3, 4] or labels[5:] != [0, 1, 2, 3, 4]


def test_missing_image_names_the_list_line(image_list):
    (image_list / "img" / "im 1.png").unlink()
    with make_feeder(graph(image_net(batch=2))) as feeder, pytest.raises(CompileError) as info:
        next(feeder)
    assert "list.txt:2" in info.value.diagnostics[0].message


def test_leveldb_backend(tmp_path, monkeypatch, images):
    plyvel = pytest.importorskip("plyvel")
    monkeypatch.chdir(tmp_path)
    db = plyvel.DB("train_leveldb", create_if_missing=True)
    for i in (2, 0, 1):  # LevelDB iterates in key order whatever the insertion order
        db.put(f"{i:08d}".encode(), datum(images[i], 10 + i))
    db.close()
    net = data_net().replace('"train_lmdb" backend: LMDB', '"train_leveldb"')  # the default
    g = graph(net)
    assert g.blob("data").shape == (2, 3, 6, 7)
    with make_feeder(g) as feeder:
        assert [next(feeder)["label"].tolist() for _ in range(2)] == [[10, 11], [12, 10]]


def test_lmdb_records_strided_by_rank_at_train(db):
    net = data_net(batch=2)
    with make_feeder(graph(net, "TRAIN"), rank=1, world_size=2) as feeder:
        got = [next(feeder)["label"].tolist() for _ in range(3)]
    # Offsets 1, 3, 5, 7, 9, 11 of the wrapping 5-record stream: records 1, 3, 0, 2, 4, 1.
    assert got == [[11, 13], [10, 12], [14, 11]]
