"""Coordinate maps and Crop alignment (the FCN authors' coord_map, re-derived by hand here)."""

from __future__ import annotations

import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.layers.base import Affine
from protocaffe.testing import compile_snippet


def conv(name: str, bottom: str, k: int, s: int = 1, p: int = 0, kind: str = "Convolution") -> str:
    return (
        f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{name}" '
        f"convolution_param {{ num_output: 2 kernel_size: {k} stride: {s} pad: {p} }} }}\n"
    )


def pool(name: str, bottom: str, k: int = 2, s: int = 2) -> str:
    return (
        f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
        f"pooling_param {{ pool: MAX kernel_size: {k} stride: {s} }} }}\n"
    )


def crop(name: str, b0: str, b1: str, offset: int | None) -> str:
    param = f"crop_param {{ axis: 2 offset: {offset} }}" if offset is not None else ""
    head = f'layer {{ name: "{name}" type: "Crop" bottom: "{b0}" bottom: "{b1}" top: "{name}"'
    return f"{head} {param} }}\n"


DATA = {"data": (1, 2, 32, 32)}


def test_maps_compose_per_layer_rules():
    # conv k3 p1: y -> y; pool 2/2: y -> 2y + 0.5; conv k3 s2 p0: y -> 2y + 1.
    g = compile_snippet(conv("c", "data", 3, p=1) + pool("p", "c") + conv("d", "p", 3, s=2), DATA)
    maps = g.coords.maps
    assert maps["c"].affine == Affine(1, 0)
    assert maps["p"].affine == Affine(2, 0.5)
    assert maps["d"].affine == Affine(4, 2.5)  # 2*(2y + 1) + 0.5
    assert {m.root for m in maps.values()} == {"data"}


def test_pool_then_matching_deconv_is_the_identity():
    # Caffe's test_coord_map: a 2x pool undone by a 2x deconvolution maps back with no shift.
    g = compile_snippet(
        pool("p", "data")
        + conv("up", "p", 2, s=2, kind="Deconvolution")
        + crop("c", "up", "data", 0),
        DATA,
    )
    assert g.coords.maps["up"].affine == Affine(1, 0)
    (c,) = g.coords.crops
    assert (c.status, c.aligned, c.offsets) == ("aligned", 0, (0, 0))
    assert g.diagnostics == []


def test_padding_shifts_the_aligned_offset():
    # conv k3 p1 -> pool 2/2 (2y + .5) -> deconv k4 s2 (y/2 - .75): y - 1, so offset 1 aligns.
    text = (
        conv("c", "data", 3, p=1) + pool("p", "c") + conv("up", "p", 4, s=2, kind="Deconvolution")
    )
    g = compile_snippet(text + crop("crop", "up", "data", 1), DATA)
    assert g.coords.crops[0].status == "aligned"
    g = compile_snippet(text + "\n" + crop("crop", "up", "data", 0), DATA)
    (w,) = g.diagnostics
    assert w.severity == "warning"
    assert w.message == "Crop 'crop': offset 0 misaligns 'up' with 'data'; the aligned offset is 1"
    assert w.hint == "write `offset: 1`"
    # Located at the offset field of the snippet's 5th line.
    assert (w.span.line, w.span.col) == (5, 1 + crop("crop", "up", "data", 0).index("offset"))


def test_crop_without_offset_is_checked_against_zero():
    text = conv("c", "data", 3) + crop("crop", "data", "c", None)  # conv k3 p0: y -> y + 1
    g = compile_snippet(text, DATA)
    (w,) = g.diagnostics
    assert "offset 0" in w.message and "aligned offset is 1" in w.message
    assert g.coords.crops[0].aligned == 1


def test_half_pixel_shift_cannot_be_aligned():
    # pool: 2y + 0.5; deconv k3 s2: y/2 - 0.5; together y - 0.5.
    text = pool("p", "data") + conv("up", "p", 3, s=2, kind="Deconvolution")
    g = compile_snippet(text + crop("crop", "up", "data", 0), DATA)
    (w,) = g.diagnostics
    assert g.coords.crops[0].status == "unalignable"
    assert "cannot align" in w.message and "whole number" in w.message


def test_undetermined_alignment_is_quiet():
    # Different scales: not determinable, so no diagnostic; the reason is kept for --explain.
    g = compile_snippet(pool("p", "data") + pool("q", "p") + crop("c", "p", "q", 0), DATA)
    (c,) = g.coords.crops
    assert c.status == "unknown" and "scale" in c.reason
    assert g.diagnostics == []
    # Two different inputs.
    g = compile_snippet(crop("c", "a", "b", 0), {"a": (1, 1, 9, 9), "b": (1, 1, 4, 4)})
    assert g.coords.crops[0].status == "unknown" and g.diagnostics == []


def eltwise(name: str, a: str, b: str) -> str:
    return f'layer {{ name: "{name}" type: "Eltwise" bottom: "{a}" bottom: "{b}" top: "{name}" }}\n'


def test_eltwise_of_misaligned_bottoms_warns():
    # k1 s2: y -> 2y; k2 s2: y -> 2y + 0.5. Same 16x16 shape, different pixels.
    g = compile_snippet(
        conv("a", "data", 1, s=2) + conv("b", "data", 2, s=2) + eltwise("e", "a", "b"), DATA
    )
    (w,) = g.diagnostics
    assert w.message.startswith("Eltwise 'e': bottoms are not spatially aligned")
    assert "2*y + 0.5" in w.message
    g = compile_snippet(
        conv("a", "data", 1, s=2) + conv("b", "data", 1, s=2) + eltwise("e", "a", "b"), DATA
    )
    assert g.diagnostics == []


def test_misaligned_crop_is_not_reported_again_downstream():
    paths = (
        conv("a", "data", 3)  # 30x30, y -> y + 1
        + conv("c", "data", 1)  # 32x32, y -> y
        + crop("cc", "c", "a", 1)  # 30x30, y -> y + 1
        + eltwise("sum", "a", "cc")
        + eltwise("sum2", "sum", "a")
    )
    assert compile_snippet(paths, DATA).diagnostics == []
    g = compile_snippet(paths.replace("offset: 1", "offset: 2"), DATA)
    assert [d.message.split(":")[0] for d in g.diagnostics] == ["Crop 'cc'"]
    with pytest.raises(CompileError):  # 32 - 3 < 30: Caffe rejects the crop itself
        compile_snippet(paths.replace("offset: 1", "offset: 3"), DATA)


def test_concat_passes_coordinates_through():
    text = (
        conv("a", "data", 3, p=1)
        + conv("b", "data", 1)
        + 'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }\n'
        + pool("p", "cat")
    )
    g = compile_snippet(text, DATA)
    assert g.coords.maps["p"].affine == Affine(2, 0.5)


def test_inner_product_ends_the_map():
    text = (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        "inner_product_param { num_output: 3 } }\n"
    )
    g = compile_snippet(text, DATA)
    assert "ip" not in g.coords.maps and "spatial" in g.coords.why_unknown["ip"]
