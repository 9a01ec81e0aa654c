"""Own models and data: the zoo format is checked on load (dataset dtype, shape, labels; light
cards need a curve), `testbed zoo init` reproduces the embedded cards from copies of its files
and a float32 copy of its data, scenarios run a custom zoo's tiers, `run --check` finds every
model and data mistake before anything starts, and a run whose forwards the server refuses
fails with the reason."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cascade_testbed.common.modelzoo import EMBEDDED_ZOO, ZooError, open_zoo
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.common.zoo_checks import (
    ZooFormatError,
    check_arrays,
    check_card,
    check_fits,
    data_dtype,
    to_model_input,
)
from cascade_testbed.testbed import cli
from cascade_testbed.testbed.verdict import refused_forwards, run_problems
from cascade_testbed.testbed.zoo_init import ZooInitError, build_zoo, model_files, threshold_curve

runner = CliRunner()
EMBEDDED = open_zoo(EMBEDDED_ZOO)
PIXELS = EMBEDDED.dataset("test")


def curve(*rows: tuple[float, float, float]) -> list[dict[str, float]]:
    return [{"threshold": t, "forward_rate": f, "accuracy": a} for t, f, a in rows]


LIGHT_CARD = {"role": "light", "accuracy": {"val": 0.7},
              "threshold_curve_val": curve((0.0, 0.0, 0.7), (0.5, 0.3, 0.85))}


class TestDataChecks:
    def test_uint8_pixels_are_scaled_once_and_float32_features_kept(self) -> None:
        x = np.array([[0, 51, 255]], dtype=np.uint8)
        assert to_model_input(x)[0].tolist() == pytest.approx([0.0, 0.2, 1.0])
        features = to_model_input(x)
        assert to_model_input(features) is features  # not divided by 255 again
        with pytest.raises(ZooFormatError, match="uint8 or float32"):
            to_model_input(x.astype(np.float64))

    def test_float32_data_in_a_zoo_declaring_uint8_is_refused_with_the_cause(self) -> None:
        x = to_model_input(PIXELS.x[:10])
        with pytest.raises(ZooFormatError, match="divided by 255 again"):
            check_arrays(x, PIXELS.y[:10], "uint8", 10, "split test")
        check_arrays(x, PIXELS.y[:10], "float32", 10, "split test")  # declared: fine

    @pytest.mark.parametrize("x,y,needle", [
        (np.zeros((3, 4), np.float32), np.array([0, 1, 10]), r"labels must be in \[0, 10\)"),
        (np.zeros((3, 4), np.float32), np.array([0, -1, 2]), "labels must be in"),
        (np.zeros((3, 4), np.float32), np.array([0.0, 1.0, 2.0]), "labels must be integers"),
        (np.zeros((3, 4), np.float32), np.array([0, 1]), "one per sample"),
        (np.full((3, 4), np.nan, np.float32), np.array([0, 1, 2]), "NaN"),
        (np.zeros(3, np.float32), np.array([0, 1, 2]), r"\[N, \.\.\.\]"),
    ])
    def test_bad_arrays(self, x: np.ndarray, y: np.ndarray, needle: str) -> None:
        with pytest.raises(ZooFormatError, match=needle):
            check_arrays(x, y, "float32", 10, "split test")

    def test_sample_shape_against_the_models_input(self) -> None:
        check_fits((64,), ["batch", 64], "m", "data")
        check_fits((8, 8), [None, 8, 8], "m", "data")
        with pytest.raises(ZooFormatError, match=r"shape \[32\], model m takes \[64\]"):
            check_fits((32,), ["batch", 64], "m", "data")
        with pytest.raises(ZooFormatError, match="takes"):
            check_fits((64,), [None, 8, 8], "m", "data")

    def test_the_dtype_must_be_declared(self) -> None:
        assert data_dtype({"dtype": "float32"}) == "float32"
        with pytest.raises(ZooFormatError, match=r"dataset\.dtype must be 'uint8'"):
            data_dtype({"file": "d.npz"})


class TestCardChecks:
    def test_a_light_card_needs_a_curve(self) -> None:
        check_card("m", LIGHT_CARD)
        no_curve = {k: v for k, v in LIGHT_CARD.items() if k != "threshold_curve_val"}
        with pytest.raises(ZooFormatError, match="needs threshold_curve_val"):
            check_card("m", no_curve)
        with pytest.raises(ZooFormatError, match="non-empty"):
            check_card("m", {**LIGHT_CARD, "threshold_curve_val": []})

    @pytest.mark.parametrize("card,needle", [
        ({**LIGHT_CARD, "threshold_curve_val": curve((0.5, 1.2, 0.8))}, r"in \[0, 1\]"),
        ({**LIGHT_CARD, "threshold_curve_val": curve((0.5, 0.1, 0.8), (0.2, 0.0, 0.7))},
         "increase"),
        ({**LIGHT_CARD, "threshold_curves_val": {"h": [{"threshold": 0.1}]}}, "curves_val.h"),
        ({**LIGHT_CARD, "role": "tiny"}, "role must be"),
        ({"role": "heavy"}, "accuracy.val"),
    ])
    def test_bad_cards(self, card: dict[str, Any], needle: str) -> None:
        with pytest.raises(ZooFormatError, match=needle):
            check_card("m", card)

    def test_a_heavy_card_needs_no_curve(self) -> None:
        check_card("h", {"role": "heavy", "accuracy": {"val": 0.9}})

    def test_the_zoo_refuses_a_light_card_without_curve_at_load(self, tmp_path: Path) -> None:
        zoo = copy_zoo(tmp_path / "z")
        card = json.loads((zoo / "light-mid.json").read_text())
        del card["threshold_curve_val"]
        (zoo / "light-mid.json").write_text(json.dumps(card))
        with pytest.raises(ZooError, match="light-mid: a light model's card needs"):
            open_zoo(zoo).card("light-mid")
        with pytest.raises(ZooError, match="light-mid"):
            open_zoo(zoo).model_path("light-mid")  # what a device loads

    @pytest.mark.parametrize("stages,needle", [
        (None, "stages must be a list"), ([], "stages must be a list"),
        (["s1.onnx"], r"stages\[0\] must be a table"),
        ([{"latency_ms_p50": {"32": 1.0}}], r"stages\[0\].file"),
        ([{"file": "s1.onnx"}], "latency_ms_p50 must map"),
        ([{"file": "s1.onnx", "latency_ms_p50": {"1": 0.1}}], "at least"),
        ([{"file": "s1.onnx", "latency_ms_p50": {"32": "fast"}}], "latency_ms_p50 must map"),
        ([{"file": "s1.onnx", "latency_ms_p50": {"32": -1.0}}], "positive"),
    ])
    def test_an_early_exit_cards_stages_are_checked(self, stages: object, needle: str) -> None:
        card = {"role": "early_exit", "accuracy": {"val": 0.9}, "stages": stages}
        with pytest.raises(ZooFormatError, match=needle):
            check_card("ee", card)

    def test_the_embedded_early_exit_card_passes(self) -> None:
        open_zoo().card("heavy-ee")  # checked when read

    def test_a_zoo_file_linking_outside_the_zoo_is_refused(self, tmp_path: Path) -> None:
        """A card or model in the zoo folder that is a symlink to a file elsewhere is refused
        with one line, whether it is read (a card) or handed to onnxruntime (a model)."""
        zoo = copy_zoo(tmp_path / "z")
        secret = tmp_path / "secret.json"
        secret.write_text((zoo / "light-mid.json").read_text())
        (zoo / "light-mid.json").unlink()
        (zoo / "light-mid.json").symlink_to(secret)
        with pytest.raises(ZooError, match="link that leads outside the zoo folder"):
            open_zoo(zoo).card("light-mid")
        outside = tmp_path / "elsewhere.onnx"
        outside.write_bytes((zoo / "light-low.onnx").read_bytes())
        (zoo / "light-low.onnx").unlink()
        (zoo / "light-low.onnx").symlink_to(outside)
        with pytest.raises(ZooError, match="leads outside"):
            open_zoo(zoo).model_path("light-low")
        inside = zoo / "alias.json"  # a link within the zoo stays fine
        inside.symlink_to(zoo / "light-high.json")
        (zoo / "light-high.json").rename(zoo / "light-high-real.json")
        inside.unlink()
        (zoo / "light-high.json").symlink_to(zoo / "light-high-real.json")
        assert open_zoo(zoo).card("light-high")["role"] == "light"

    def test_a_zoo_is_opened_and_each_card_read_once_per_process(self, tmp_path: Path) -> None:
        """The forkserver's embedded zoo is the devices' (a scenario's default `zoo = None` is
        the same key), and the server reads a card once, not at every device's hello."""
        assert open_zoo() is open_zoo(None) is open_zoo(EMBEDDED_ZOO)
        zoo = copy_zoo(tmp_path / "z")
        first = open_zoo(zoo).card("light-mid")
        (zoo / "light-mid.json").write_text("not json")
        assert open_zoo(str(zoo)).card("light-mid") is first
        with pytest.raises(ZooError, match="light-low"):  # a broken card is not kept
            (zoo / "light-low.json").write_text("not json")
            open_zoo(zoo).card("light-low")


def copy_zoo(dst: Path) -> Path:
    shutil.copytree(EMBEDDED_ZOO, dst)
    return dst


def float32_copy(path: Path) -> Path:
    """The embedded data as float32 features (pixels / 255, exactly as models take them)."""
    with np.load(EMBEDDED_ZOO / "digits-noisy.npz") as d:
        np.savez(path, **{k: to_model_input(d[k]) if k.startswith("x") else d[k]
                          for k in d.files})
    return path


class TestZooInit:
    def test_names_from_files_or_given_and_checked(self) -> None:
        models = model_files(["a/light-1.onnx", "low=b/x.onnx"], ["h.onnx"])
        assert [(m.name, m.role) for m in models] == [("light-1", "light"), ("low", "light"),
                                                      ("h", "heavy")]
        with pytest.raises(ZooInitError, match="give NAME=PATH"):
            model_files(["a/.hidden.onnx"], ["h.onnx"])
        with pytest.raises(ZooInitError, match="unique"):
            model_files(["x/a.onnx", "y/a.onnx"], ["h.onnx"])
        with pytest.raises(ZooInitError, match="at least one --light and one --heavy"):
            model_files(["a.onnx"], [])

    def test_threshold_curve(self) -> None:
        light = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        heavy = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        y = np.array([0, 0, 0])
        rows = threshold_curve(light, heavy, y, thresholds=(0.0, 0.65, 1.0))
        # light right on 0 and 1; heavy right on 1 only
        assert rows == curve((0.0, 0.0, 0.6667), (0.65, 0.3333, 0.6667), (1.0, 1.0, 0.3333))

    def test_copies_of_the_embedded_zoo_and_float32_data_give_its_cards(
            self, tmp_path: Path) -> None:
        data = float32_copy(tmp_path / "feat.npz")
        out = tmp_path / "zoo"
        index = build_zoo(out, [f"low={EMBEDDED_ZOO / 'light-low.onnx'}",
                                str(EMBEDDED_ZOO / "light-mid.onnx")],
                          [str(EMBEDDED_ZOO / "heavy-cnn.onnx"),
                           str(EMBEDDED_ZOO / "heavy-cnn-lite.onnx")], data, reps=3)
        assert index["tiers"] == {"low": "low", "light-mid": "light-mid"}
        assert index["dataset"] == {"file": "feat.npz", "name": "feat", "dtype": "float32",
                                    "classes": 10, "source": "testbed zoo init",
                                    "splits": {"val": 2160, "test": 2160}}
        assert index["heavy"] == "heavy-cnn"
        assert set(index["heavy_variants"]) == {"heavy-cnn", "heavy-cnn-lite"}
        zoo = open_zoo(out)
        for mine, theirs in (("low", "light-low"), ("light-mid", "light-mid"),
                             ("heavy-cnn", "heavy-cnn")):
            card, ref = zoo.card(mine), EMBEDDED.card(theirs)
            assert card["accuracy"] == ref["accuracy"]
            assert card["input"]["shape"] == [None, 64]
            assert card["input"]["data_dtype"] == "float32"
            assert zoo.model_path(mine).read_bytes() == EMBEDDED.model_path(theirs).read_bytes()
            if card["role"] == "light":
                assert card["threshold_curve_val"] == ref["threshold_curve_val"]
                assert card["threshold_curves_val"]["heavy-cnn-lite"] == \
                    ref["threshold_curves_val"]["heavy-cnn-lite"]
            else:
                assert set(card["latency_ms_p50"]) == {"1", "2", "4", "8", "16", "32", "64"}
        assert zoo.dataset("test").x.dtype == np.float32

    def test_mistakes_are_refused_and_nothing_is_written(self, tmp_path: Path) -> None:
        light, heavy = str(EMBEDDED_ZOO / "light-low.onnx"), str(EMBEDDED_ZOO / "heavy-cnn.onnx")
        with np.load(EMBEDDED_ZOO / "digits-noisy.npz") as d:
            np.savez(tmp_path / "narrow.npz", **{k: d[k][:, :32] if k.startswith("x") else d[k]
                                                 for k in d.files})
            np.savez(tmp_path / "nolabels.npz", x_val=d["x_val"], x_test=d["x_test"])
            np.savez(tmp_path / "f64.npz", **{k: d[k].astype(np.float64) for k in d.files})
        (tmp_path / "junk.onnx").write_bytes(b"not a model")
        cases = [
            ([light], [heavy], tmp_path / "narrow.npz", r"a sample has shape \[32\]"),
            ([light], [heavy], tmp_path / "nolabels.npz", "missing y_val, y_test"),
            ([light], [heavy], tmp_path / "f64.npz", "got float64"),
            ([str(tmp_path / "junk.onnx")], [heavy], EMBEDDED_ZOO / "digits-noisy.npz",
             "not an ONNX model"),
            ([light], [str(tmp_path / "none.onnx")], EMBEDDED_ZOO / "digits-noisy.npz",
             "is not a file"),
        ]
        for lights, heavies, data, needle in cases:
            with pytest.raises(ZooInitError, match=needle):
                build_zoo(tmp_path / "out", lights, heavies, data, reps=1)
            assert not (tmp_path / "out").exists()

    def test_the_command_says_what_it_built_or_why_not(self, tmp_path: Path) -> None:
        light, heavy = str(EMBEDDED_ZOO / "light-low.onnx"), str(EMBEDDED_ZOO / "heavy-cnn.onnx")
        args = ["zoo", "init", str(tmp_path / "z"), "--light", light, "--heavy", heavy,
                "--data", str(EMBEDDED_ZOO / "digits-noisy.npz")]
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 0, res.output
        assert "tiers light-low; heavy heavy-cnn; data uint8 (10 classes)" in res.output
        res = runner.invoke(cli.app, args)  # the folder is no longer empty
        assert res.exit_code == 2
        assert res.output.strip().splitlines() == [
            f"cannot build the zoo: {tmp_path / 'z'} exists and is not an empty folder; a zoo "
            "is written into a new one"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def custom_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo of two light models and one heavy one, float32 data."""
    tmp = tmp_path_factory.mktemp("custom")
    build_zoo(tmp / "zoo", [str(EMBEDDED_ZOO / "light-low.onnx"),
                            str(EMBEDDED_ZOO / "light-high.onnx")],
              [str(EMBEDDED_ZOO / "heavy-cnn-lite.onnx")], float32_copy(tmp / "feat.npz"),
              reps=2)
    return tmp / "zoo"


class TestScenariosWithACustomZoo:
    def test_without_tiers_each_light_model_is_a_tier_with_an_even_mix(
            self, custom_zoo: Path, tmp_path: Path) -> None:
        (tmp_path / "sub").mkdir()
        rel = os.path.relpath(custom_zoo, tmp_path / "sub")
        cfg = load_scenario(write(tmp_path / "sub" / "s.toml",
                                  f'zoo = "{rel}"\n'))  # relative to the file
        assert cfg.zoo == str(custom_zoo.resolve())
        assert {t: s.model for t, s in cfg.tiers.items()} == {"light-low": "light-low",
                                                              "light-high": "light-high"}
        assert cfg.devices.mix == "1:1"
        assert cfg.tiers["light-low"].compute_ms == 15.0  # the mid tier's settings

    def test_one_explicit_tier_runs_on_the_default_mix(self, custom_zoo: Path,
                                                      tmp_path: Path) -> None:
        cfg = load_scenario(write(tmp_path / "s.toml", f'zoo = "{custom_zoo}"\n'
                                  '[tiers.cam]\nmodel = "light-high"\ncompute_ms = 5.0\n'))
        assert list(cfg.tiers) == ["cam"] and cfg.devices.mix == "1"

    def test_the_embedded_zoo_keeps_its_tiers(self, tmp_path: Path) -> None:
        cfg = load_scenario(write(tmp_path / "s.toml", f'zoo = "{EMBEDDED_ZOO}"\n'))
        assert list(cfg.tiers) == ["low", "mid", "high"] and cfg.devices.mix == "1:1:1"
        assert cfg.tiers["low"].compute_ms == 30.0


class TestRunCheck:
    def check(self, scenario: Path, *more: str) -> tuple[int, list[str]]:
        res = runner.invoke(cli.app, ["run", "--check", str(scenario), *more])
        return res.exit_code, res.output.strip().splitlines()

    def test_a_good_scenario_passes_and_says_what_it_checked(self, custom_zoo: Path,
                                                             tmp_path: Path) -> None:
        code, lines = self.check(write(tmp_path / "s.toml", f'zoo = "{custom_zoo}"\n'))
        assert code == 0, lines
        assert lines[0] == f"zoo {custom_zoo}: 2160 test samples float32 [64], 10 classes"
        assert "tier light-low: light-low (input [None, 64])" in lines[1]
        assert lines[-1].startswith("scenario ok:")

    @pytest.mark.parametrize("body,needle", [
        ('[tiers.a]\nmodel = "nope"\ncompute_ms = 5.0\n', "model 'nope' is not in the zoo"),
        ('[tiers.a]\nmodel = "heavy-cnn-lite"\ncompute_ms = 5.0\n',
         "heavy-cnn-lite is a heavy model, not a light one"),
        ('[server]\nheavy_model = "light-low"\n', "light-low is a light model"),
        ('[policy]\nname = "oracle"\n', "unknown policy 'oracle'"),
    ])
    def test_model_and_policy_mistakes(self, custom_zoo: Path, tmp_path: Path, body: str,
                                       needle: str) -> None:
        code, lines = self.check(write(tmp_path / "s.toml", f'zoo = "{custom_zoo}"\n{body}'))
        assert code == 2 and needle in lines[0], lines
        assert len(lines) == 1 or "policy" in body  # rich wraps the list of known policies

    def test_the_float32_mistake_is_found_before_the_run_and_leaves_no_folder(
            self, custom_zoo: Path, tmp_path: Path) -> None:
        zoo = tmp_path / "zoo"
        shutil.copytree(custom_zoo, zoo)
        index = json.loads((zoo / "zoo.json").read_text())
        index["dataset"]["dtype"] = "uint8"  # the zoo says pixels, the file holds 0-1 floats
        (zoo / "zoo.json").write_text(json.dumps(index))
        scenario = write(tmp_path / "s.toml", f'zoo = "{zoo}"\n')
        code, lines = self.check(scenario)
        assert code == 2 and len(lines) == 1
        assert "samples are float32, the zoo declares uint8" in lines[0]
        res = runner.invoke(cli.app, ["run", str(scenario), "--out", str(tmp_path / "run")])
        assert res.exit_code == 2 and "divided by 255 again" in res.output
        assert not (tmp_path / "run").exists()

    def test_a_model_the_data_does_not_fit(self, tmp_path: Path) -> None:
        zoo = copy_zoo(tmp_path / "zoo")
        with np.load(zoo / "digits-noisy.npz") as d:
            arrays = {k: d[k][:, :32] if k.startswith("x") else d[k] for k in d.files}
        np.savez(zoo / "digits-noisy.npz", **arrays)
        code, lines = self.check(write(tmp_path / "s.toml", f'zoo = "{zoo}"\n'))
        assert code == 2 and "a sample has shape [32], model light-low takes [64]" in lines[0]

    def test_devices_zero_and_too_many_are_refused_with_the_reason(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        scenario = write(tmp_path / "s.toml", "")
        code, lines = self.check(scenario, "--devices", "0")
        assert code == 2 and "--devices must be at least 1" in lines[0]
        from cascade_testbed.testbed import orchestrator

        monkeypatch.setattr(orchestrator.psutil, "virtual_memory",
                            lambda: type("Mem", (), {"available": 2 * 2**30})())
        code, lines = self.check(scenario, "--devices", "500")
        assert code == 2 and "500 devices need about" in lines[0] and "--force" in lines[0]
        assert self.check(scenario, "--devices", "500", "--force")[0] == 0


class TestRefusedForwards:
    def summary(self, forwarded: int, refused: dict[str, int], failed: int = 0
                ) -> dict[str, Any]:
        causes = {"error": sum(refused.values())} | ({"failed": failed} if failed else {})
        return {"samples": {"generated": 1000, "completed": 1000, "lost": 0,
                            "forwarded": forwarded, "causes": causes},
                "refusals": {"by_reason": refused, "first": "bad_tensor: data has 256 bytes, "
                                                            "shape and dtype need 64"},
                "faults": {}, "run": {}}

    def test_a_run_whose_forwards_are_refused_fails_with_the_reason(self) -> None:
        # 4 % of samples forwarded, all refused: under the 5 % fallback limit, still broken
        s = self.summary(40, {"bad_tensor": 40})
        problem = refused_forwards(s)
        assert problem == ("the server refused 40 of 40 forwarded samples (100.0%, limit 1%) "
                           "for a non-load reason (bad_tensor 40); first: bad_tensor: data has "
                           "256 bytes, shape and dtype need 64")
        assert problem in run_problems(s, 0.05)

    def test_the_limit_and_load_refusals(self) -> None:
        assert refused_forwards(self.summary(1000, {"bad_tensor": 10})) is None  # 1 %: ok
        assert refused_forwards(self.summary(1000, {"bad_tensor": 11})) is not None
        assert refused_forwards(self.summary(100, {"overloaded": 50})) is None  # load
        failed = refused_forwards(self.summary(100, {}, failed=5))
        assert failed is not None and "model_failed 5" in failed
        assert refused_forwards(self.summary(0, {})) is None


def test_a_device_counts_refusals_by_reason(tmp_path: Path) -> None:
    """An `error` reply to a forwarded sample: its light answer is final (cause `error`) and
    the outcome counts it by code, with the first reason."""
    import asyncio

    from cascade_testbed.common import protocol as wire
    from cascade_testbed.emulated_devices.device import Device, Pending
    from tests.unit.test_device_pipeline import (
        NO_SERVER,
        _example,
        low_tier_spec,
        records_of,
        run_loop,
    )

    async def go() -> Any:
        from cascade_testbed.common.records import FIELDS, SampleRecord

        device = Device(low_tier_spec(10.0, 1.0), NO_SERVER, out_dir=tmp_path)
        loop = asyncio.get_running_loop()
        for sid in (0, 1):
            rec = SampleRecord(**{n: _example(n) for n in FIELDS})  # type: ignore[arg-type]
            rec.sample_id = sid
            device._pending[sid] = Pending(rec, t_sched=loop.time(),
                                           timeout=loop.call_later(5, lambda: None))
        device._on_message(wire.Error(int(wire.ErrorCode.BAD_TENSOR), "too\x1b short", 0), 64)
        device._on_message(wire.Error(int(wire.ErrorCode.BAD_TENSOR), "again", 1), 64)
        device._on_message(wire.Error(int(wire.ErrorCode.BAD_TENSOR), "unknown id", 7), 64)
        await device._close()
        return device.outcome()

    outcome = run_loop(go)
    assert outcome.refused == {"bad_tensor": 2}
    assert outcome.refusal == "bad_tensor: too? short"
    assert {(r.source, r.cause) for r in records_of(tmp_path)} == {("fallback", "error")}


def test_collect_adds_refusals_over_device_processes() -> None:
    from cascade_testbed.testbed.results.collect import _Incarnation, _refusals

    incs = [_Incarnation("b", "low", 0, outcome={"refused": {"bad_tensor": 3}, "refusal": "x"}),
            _Incarnation("a", "low", 0, outcome={"refused": {"bad_tensor": 1, "malformed": 2},
                                                 "refusal": "first"}),
            _Incarnation("c", "low", 0, outcome=None)]
    assert _refusals(incs) == {"by_reason": {"bad_tensor": 4, "malformed": 2}, "first": "first"}


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The commands configure the root logger for their process, here the test's: its handlers
    then write to this test's captured stderr, closed after it, and every later log line in the
    session would fail. Put the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_server_and_device_commands_fail_in_one_line(capsys: pytest.CaptureFixture[str],
                                                     root_logging: None) -> None:
    from cascade_testbed.emulated_devices.main import main as device_main
    from cascade_testbed.server.main import main as server_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for argv, needle in (
                (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}: "),
                (["--port", "0", "--policy", "oracle"], "unknown policy 'oracle'")):
            with pytest.raises(SystemExit) as exit_:
                server_main(argv)
            err = capsys.readouterr().err.strip().splitlines()
            assert exit_.value.code == 2 and len(err) == 1 and needle in err[0], err
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free = closed.getsockname()[1]  # bound, not listening: connecting is refused
        for argv, needle in (
                (["--server", "localhost:80"], "must be a URL like http://127.0.0.1:8470"),
                (["--server", "http://127.0.0.1:1", "--tier", "huge"], "unknown tier 'huge'"),
                (["--server", f"http://127.0.0.1:{free}"], "cannot connect")):
            with pytest.raises(SystemExit) as exit_:
                device_main(argv)
            err = capsys.readouterr().err.strip().splitlines()
            assert exit_.value.code == 2 and len(err) == 1 and needle in err[0], err
