"""The fast path's folded scalar fields (textformat._Lexer, SCALARS in prototxt.lark) give
exactly the tree, source positions and fused-value findings of the plain token stream."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from _corpus import CORPUS

from protocaffe.frontend import textformat

MODELS = Path(__file__).resolve().parents[1] / "models"


def _shape(x: object) -> object:
    """A tree as comparable data: tokens by type, text and position."""
    if isinstance(x, textformat.Tok):
        return (x.type, x.value, x.start_pos, x.line, x.column)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_shape(i) for i in x])
    return x


def _parse(text: str, folding: bool) -> tuple[str, object, list]:
    """(outcome, tree, fused values found) of one parse, folded or plain."""
    fused: dict = {}
    reset_fused = textformat._fused_seen.set(fused)
    reset_folding = textformat._folding.set(folding)
    try:
        tree = textformat.parse_tree(text)
    except (textformat.LexError, textformat.UnexpectedInput) as err:
        return type(err).__name__, None, []
    finally:
        textformat._folding.reset(reset_folding)
        textformat._fused_seen.reset(reset_fused)
    return "ok", _shape(tree), [(k, v.text, v.cut) for k, v in fused.items()]


def _same(text: str) -> None:
    plain, folded = _parse(text, False), _parse(text, True)
    if plain[0] != "ok":
        assert folded[0] != "ok", text  # the folded stream accepts nothing the plain one rejects
    else:
        assert folded == plain, text


SNIPPETS = [
    'name: "a" "b"',  # adjacent strings: one value
    'name: "a"\n  "b"\ntype: "ReLU"',
    'name: "a" # note\n "b" top: "t"',
    "num_output: 21bias_term: false",  # a value run into the next field name
    "pool: MAXkernel_size: 3 stride: 2",
    "trueabc: 1",  # a key that itself splits
    'name: "x"; type: "y", top: "z"',
    "dim: [1, 2] dim: 3",
    "a:1\r\nb:\t2\r\n",
    "a: 1\nb:\n2",  # a value on the next line: not folded
    "layer { name: 'q' bottom: \"d\" } layer < top: t >",
    'name: "unterminated\nlayer {}',
    "a: 1 : 2",
    "a: 1 {",
    "layer { a: 1 } }",
    "a: [b: 1]",
    "x: 1e-4f y: 0x1F z: -inf w: .5",
    "layer: { a: 1 } layer:{b:2}; layer\n{ c: 3 },",
    "MAXlayer { } Xy { a: 1 } transform_param { mirror: true }",
    "a { b { c: 1 } }; d: 2",
    "layer { # note\n  a: 1 # note\n}  \n\n  ",
    "a: 1\u00a0\u2003b: 2\t",
]


@pytest.mark.parametrize("text", SNIPPETS)
def test_snippet_folds_to_the_plain_tree(text: str) -> None:
    _same(text)


def test_random_token_soup_folds_to_the_plain_tree() -> None:
    pieces = [
        *("layer", "name", "type", "top", "true", "MAX", "TEST", "foo", "trueabc"),
        *("MAXkernel_size", "21bias_term", "1e-4f", "-inf", ".5", "3", "07"),
        *(":", ":", "{", "}", "<", ">", "[", "]", ",", ";", '"a"', "'b'", '"x\\"y"'),
        *(" ", "\t", "\n", "\r\n", "# c\n", "$", "a {", "b: {", "TEST {"),
    ]
    rng = random.Random(7)
    for _ in range(1500):
        _same("".join(rng.choice(pieces) + rng.choice(("", " ", "\n")) for _ in range(20)))


def test_shipped_models_fold_to_the_plain_tree() -> None:
    for path in sorted(MODELS.glob("*.prototxt")):
        _same(path.read_text())


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus absent")
def test_corpus_nets_fold_to_the_plain_tree() -> None:
    resnet = CORPUS / "KaimingHe__deep-residual-networks/prototxt__ResNet-152-deploy.prototxt"
    # One net per corpus repository (all of them take seconds; the CLI comparison in
    # docs/benchmarks.md covered every one).
    firsts = {p.parent: p for p in sorted(CORPUS.rglob("*prototxt*"), reverse=True)}
    for path in sorted(firsts.values()):
        _same(path.read_text(encoding="utf-8", errors="replace"))
    # And folding happens: ResNet-152's layers reach the parser as a few tokens each.
    reset = textformat._folding.set(True)
    try:
        tokens = list(textformat._lexer().lex(resnet.read_text()))
    finally:
        textformat._folding.reset(reset)
    assert sum(t.type == "SCALARS" for t in tokens) > 1000
    assert sum(t.type == "OPEN" for t in tokens) > 1000
    assert len(tokens) < 3500
