"""`sparsetrt lint` against the real parser: every file of the corpus (tests/lint_corpus.py) judged by the lint and
by TensorRT-RTX's parser and builder. The expected verdicts are the README's table; a file the lint passes and the
builder rejects would be a lint bug, and none may exist. Where the lint is stricter than TensorRT-RTX, it holds
TensorRT proper's documented rules (the data-center route), and the table says so."""

from __future__ import annotations

import pytest
from lint_corpus import CASES

from sparsetrt.build.engine import rtx_accepts
from sparsetrt.errors import SparsetrtError
from sparsetrt.export.lint import lint_onnx

# case: (lint passes, TensorRT-RTX 1.7 builds it), as measured; README "Lint against the real parser"
EXPECTED = {
    "w4a16": (True, True), "w8a8": (True, True), "external-data": (True, True),
    "matmulnbits": (False, False), "block-scale-shape": (False, False), "zero-point-3": (False, False),
    "truncated-external-data": (False, False), "missing-external-data": (False, False),
    "unsupported-op": (False, False),
    # stricter than TensorRT-RTX: TensorRT proper's documented rules
    "per-tensor-int4": (False, True), "block-32": (False, True), "blocked-dq-opset-19": (False, True),
    "qdq-scales-differ": (False, True), "non-constant-scale": (False, True), "uint8-quantize": (False, True),
}


def test_every_case_has_an_expected_verdict():
    assert set(EXPECTED) == set(CASES)
    assert not [c for c, (lint, builds) in EXPECTED.items() if lint and not builds]  # no lint bug is expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_and_builder_verdicts(case, tmp_path):
    path = CASES[case][1](tmp_path)
    try:
        lint_ok = lint_onnx(path).ok
    except SparsetrtError:  # unreadable: a lint failure
        lint_ok = False
    builds, errors = rtx_accepts(path)
    assert (lint_ok, builds) == EXPECTED[case], errors
    if not builds:
        assert errors and all(line.startswith("[E]") for line in errors)  # the parser's own lines


def test_cli_lint_build_reports_the_builders_verdict(tmp_path, capsys):
    from sparsetrt.cli import main

    path = CASES["unsupported-op"][1](tmp_path)
    assert main(["lint", "--build", str(path)]) == 1
    out = capsys.readouterr().out
    assert "TensorRT-RTX: rejects it" in out and "operator: Det" in out
    assert main(["lint", "--build", str(CASES["w4a16"][1](tmp_path))]) == 0
    assert "TensorRT-RTX: builds it" in capsys.readouterr().out
