"""`testbed zoo init` takes the exports of the usual tools (issue 28): skl2onnx with ZipMap (its
`label` output comes first, the probabilities second as a list of {class: probability} maps),
skl2onnx without ZipMap (a float tensor second), and a model that ends in logits (as
`torch.onnx.export` of a classifier does; made here with the onnx helper API). The card records
the output and the softmax, and the device's light model and the server's heavy model read
them: their predictions are scikit-learn's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade_testbed.common.model_output import (
    ModelOutput,
    OutputError,
    OutputSpec,
    card_output,
    softmax,
    zipmap_array,
)
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.common.zoo_checks import ZooFormatError, check_card
from cascade_testbed.emulated_devices.light_model import LightModel
from cascade_testbed.server.heavy_model import HeavyModel
from cascade_testbed.testbed.zoo_init import ZooInitError, build_zoo

CLASSES = 3


class TestReadingOutputs:
    """Pure: no exporter needed."""

    def test_a_zipmap_becomes_columns_in_class_order_whatever_the_key_order(self) -> None:
        raw = [{2: 0.5, 0: 0.2, 1: 0.3}, {1: 0.1, 2: 0.0, 0: 0.9}]
        assert np.allclose(zipmap_array(raw), [[0.2, 0.3, 0.5], [0.9, 0.1, 0.0]])
        assert zipmap_array(raw).dtype == np.float32
        with pytest.raises(OutputError):
            zipmap_array([{0: 0.5, 1: 0.5}, {0: 1.0}])

    def test_softmax_is_stable_and_sums_to_one(self) -> None:
        p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]]))
        assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0)
        assert p[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
        assert p[1].argmax() == 2

    def test_a_model_output_applies_what_the_card_says(self) -> None:
        logits = np.array([[2.0, 0.0]], np.float32)
        assert ModelOutput("y", True, False, (None, 2)).probabilities(logits)[0, 0] > 0.8
        assert ModelOutput("y", False, False, (None, 2)).probabilities(logits)[0, 0] == 2.0

    def test_old_cards_read_the_first_output_without_softmax(self) -> None:
        assert card_output({"output": {"name": "probs", "shape": [None, 10]}}) == OutputSpec()
        assert card_output({}) == OutputSpec()
        assert card_output({"output": {"name": "p", "softmax": True}}) == OutputSpec("p", True)

    def test_a_card_with_a_bad_output_choice_is_refused_at_load(self) -> None:
        card = {"role": "heavy", "accuracy": {"val": 0.9},
                "output": {"name": "", "softmax": "yes"}}
        with pytest.raises(ZooFormatError, match="softmax"):
            check_card("m", card)


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn "
                                   "(pip install '.[test]')")
    linear = pytest.importorskip("sklearn.linear_model", reason="needs scikit-learn")
    x, y = datasets.make_classification(n_samples=600, n_features=6, n_informative=4,
                                        n_redundant=0, n_classes=CLASSES, random_state=0)
    x = x.astype(np.float32)
    clf = linear.LogisticRegression(max_iter=500).fit(x[:200], y[:200])
    return {"clf": clf, "x": x, "y": y.astype(np.int64)}


def _skl2onnx(clf: Any, x: np.ndarray, zipmap: bool) -> bytes:
    skl2onnx = pytest.importorskip("skl2onnx", reason="needs skl2onnx (pip install '.[test]')")
    options = None if zipmap else {id(clf): {"zipmap": False}}
    model = skl2onnx.to_onnx(clf, x[:1], options=options)
    out: bytes = model.SerializeToString()
    return out


def _logits_model(clf: Any) -> bytes:
    """X @ coef.T + intercept: the logits whose softmax is the multinomial LR's
    predict_proba, with no Softmax node, named as torch names outputs."""
    onnx = pytest.importorskip("onnx", reason="needs onnx (pip install '.[test]')")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    w = numpy_helper.from_array(clf.coef_.T.astype(np.float32), "w")
    b = numpy_helper.from_array(clf.intercept_.astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["output"])], "logits",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", CLASSES])],
        [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out: bytes = model.SerializeToString()
    return out


def _files(tmp_path: Path, fitted: dict[str, Any], light: bytes) -> tuple[Path, Path, Path]:
    x, y = fitted["x"], fitted["y"]
    data = tmp_path / "data.npz"
    np.savez(data, x_val=x[200:400], y_val=y[200:400], x_test=x[400:], y_test=y[400:])
    (tmp_path / "lr.onnx").write_bytes(light)
    (tmp_path / "big.onnx").write_bytes(_skl2onnx(fitted["clf"], x, zipmap=False))
    return tmp_path / "lr.onnx", tmp_path / "big.onnx", data


@pytest.mark.parametrize(("export", "output", "softmax_applied"), [
    ("skl2onnx-zipmap", "output_probability", False),
    ("skl2onnx-tensor", "probabilities", False),
    ("logits", "output", True),
])
def test_zoo_init_takes_the_export_and_the_zoo_predicts_as_sklearn(
        tmp_path: Path, fitted: dict[str, Any], export: str, output: str,
        softmax_applied: bool) -> None:
    clf, x = fitted["clf"], fitted["x"]
    light = (_logits_model(clf) if export == "logits"
             else _skl2onnx(clf, x, zipmap=export == "skl2onnx-zipmap"))
    lr, big, data = _files(tmp_path, fitted, light)
    build_zoo(tmp_path / "zoo", [f"lr={lr}"], [f"big={big}"], data, reps=2)

    card = json.loads((tmp_path / "zoo" / "lr.json").read_text())
    assert card["output"]["name"] == output
    assert card["output"]["softmax"] is softmax_applied
    assert card["output"]["shape"] == [None, CLASSES]
    expected = clf.predict_proba(x[400:])
    assert card["accuracy"]["test"] == pytest.approx(
        float((expected.argmax(axis=1) == fitted["y"][400:]).mean()), abs=1e-4)

    zoo = open_zoo(tmp_path / "zoo")
    device = LightModel(zoo, "lr")
    probs = np.stack([device.predict(s) for s in x[400:]])
    assert probs.shape == expected.shape and probs.dtype == np.float32
    assert (probs.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.allclose(probs, expected, atol=1e-4)
    server = HeavyModel(zoo, "big")
    assert np.allclose(server.infer(x[400:]), expected, atol=1e-4)


def test_logits_are_taken_as_told_by_the_logits_flag(
        tmp_path: Path, fitted: dict[str, Any]) -> None:
    lr, big, data = _files(tmp_path, fitted, _logits_model(fitted["clf"]))
    build_zoo(tmp_path / "zoo", [f"lr={lr}"], [f"big={big}"], data, reps=2,
              outputs=["lr=output"], logits=True)
    cards = {m: json.loads((tmp_path / "zoo" / f"{m}.json").read_text())["output"]
             for m in ("lr", "big")}
    assert cards["lr"]["softmax"] is True and cards["big"]["softmax"] is True


def test_a_model_without_a_probability_output_says_how_to_choose_one(
        tmp_path: Path, fitted: dict[str, Any]) -> None:
    lr, big, data = _files(tmp_path, fitted, _skl2onnx(fitted["clf"], fitted["x"], False))
    with pytest.raises(ZooInitError, match=r"no output 'nope' \(--output\); its outputs: "
                                           r"label \(tensor\(int64\).*probabilities"):
        build_zoo(tmp_path / "zoo", [f"lr={lr}"], [f"big={big}"], data, reps=2,
                  outputs=["lr=nope"])
    with pytest.raises(ZooInitError, match=r"not class probabilities or logits.*--output NAME"):
        build_zoo(tmp_path / "zoo", [f"lr={lr}"], [f"big={big}"], data, reps=2,
                  outputs=["label"])
    assert not (tmp_path / "zoo").exists()
