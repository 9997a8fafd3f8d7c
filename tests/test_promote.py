"""Promotion: the pure rule, and the real MLflow registry (SQLite store in tmp_path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ganforge.stages.promote import (
    CHAMPION,
    Candidate,
    Decision,
    PromotionError,
    decide,
    history,
    promote,
)

from .conftest import ROOT, tiny_params


def cand(v, fid, half=1.0, collapse=False, parity=True):
    return Candidate(str(v), fid, (fid - half, fid + half), collapse, parity)


def test_rule():
    assert decide(cand(1, 50), None) == Decision(True, "no champion yet")
    assert decide(cand(2, 40), cand(1, 50)).promote  # 41 < 49: beyond both intervals
    d = decide(cand(2, 48.5), cand(1, 50))  # better, but the intervals overlap
    assert not d.promote and "does not beat champion v1" in d.reason
    assert not decide(cand(2, 60), cand(1, 50)).promote
    assert decide(cand(2, 10, collapse=True), cand(1, 50)).reason == "flagged for mode collapse"
    assert decide(cand(2, 10, parity=False), None).reason == "ONNX parity check did not pass"
    assert not decide(cand(1, 10, collapse=None), None).promote
    assert not decide(cand(1, 50), cand(1, 50)).promote


@pytest.fixture()
def registry(tmp_path, monkeypatch, tiny_onnx):
    """A fresh SQLite MLflow store and a factory of training runs with a logged ONNX model."""
    return run_factory(f"sqlite:///{tmp_path}/mlflow.db", tmp_path, monkeypatch, tiny_onnx)


def run_factory(uri: str, tmp_path, monkeypatch, tiny_onnx):
    """A factory of training runs in the store at ``uri``, each with a logged ONNX model and
    the eval/export records promote reads; ``uri`` becomes this test's tracking URI."""
    import mlflow
    import onnx

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns beside the store
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # in-process promote() calls of earlier tests set it globally
    exp = mlflow.set_experiment("ganforge-digits")
    model = onnx.load(tiny_onnx)

    def make_run(
        i: int,
        fid: float,
        half: float = 1.0,
        collapse: bool = False,
        parity: bool = True,
        data: str = "d1",
        space: str | None = "fn1",
    ):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        with mlflow.start_run(experiment_id=exp.experiment_id) as run:
            mlflow.set_tag("ganforge.dataset", "digits")
            info = mlflow.onnx.log_model(
                model, name="generator", onnx_execution_providers=["CPUExecutionProvider"]
            )
        (run_dir / "mlflow_run.json").write_text(
            json.dumps({"tracking_uri": uri, "run_id": run.info.run_id})
        )
        sha = f"sha-{i}"
        metrics = {
            "fid": fid, "fid_ci95": [fid - half, fid + half], "fid_floor": 0.3, "kid_mean": 0.1, "is_mean": 3.0,
            "precision": 0.5, "recall": 0.5, "class_coverage": 1.0, "mode_collapse": collapse,
            "protocol": {"generator_sha256": sha, "generator_family": "dcgan", "dataset": "digits", "data_sha256": data},
        }  # fmt: skip
        if space is not None:  # None: an eval.json from before ganforge recorded the space
            metrics["protocol"].update(features="featurenet", featurenet_sha256=space)
        (run_dir / "eval.json").write_text(json.dumps(metrics))
        exported = {
            "parity_max_abs_diff": 1e-7 if parity else 1e-2,
            "parity_tolerance": 1e-4,
            "generator_sha256": sha,
            "onnx_sha256": f"onnx-{i}",
            "mlflow_run_id": run.info.run_id,
            "mlflow_model_uri": info.model_uri,
        }
        (run_dir / "export.json").write_text(json.dumps(exported))
        return run_dir

    return make_run


def do_promote(run_dir):
    return promote(
        tiny_params(),
        run_dir / "eval.json",
        run_dir / "export.json",
        run_dir / "promote.json",
    )


def test_registry_promotion_sequence(registry):
    from mlflow.tracking import MlflowClient

    first = do_promote(registry(1, 50.0))
    assert (
        first["promote"]
        and first["version"] == "1"
        and first["registered_model"] == "ganforge-digits-dcgan"
    )
    assert not do_promote(registry(2, 49.5))["promote"]  # overlapping intervals
    assert not do_promote(registry(3, 10.0, collapse=True))["promote"]
    assert not do_promote(registry(4, 10.0, parity=False))["promote"]
    better = do_promote(registry(5, 40.0))
    assert better["promote"] and better["champion_before"] == "1"

    client = MlflowClient(
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        registry_uri=os.environ["MLFLOW_TRACKING_URI"],
    )
    name = "ganforge-digits-dcgan"
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "5"
    v2 = client.get_model_version(name, "2")
    assert (
        v2.tags["role"] == "challenger"
        and "does not beat champion v1" in v2.tags["challenger_reason"]
    )
    assert client.get_model_version(name, "1").tags["role"] == "former-champion"
    assert float(client.get_model_version(name, "5").tags["fid"]) == 40.0
    trail = history(tiny_params(), name)
    assert [e["candidate"] for e in trail] == ["1", "2", "3", "4", "5"]
    assert [(e["from_version"], e["to_version"]) for e in trail if e["promoted"]] == [
        (None, "1"),
        ("1", "5"),
    ]
    # the CLI prints the same trail
    proc = subprocess.run(
        [sys.executable, "-m", "ganforge", "promote", "--history", "--params", str(ROOT / "params.yaml")],
        capture_output=True, text=True, env=os.environ,
    )  # fmt: skip
    assert (
        proc.returncode == 0
        and proc.stdout.count("ganforge-digits-dcgan") == 5
        and "PROMOTED" in proc.stdout
    )


def test_missing_inputs_are_named(registry, tmp_path):
    run_dir = registry(1, 50.0)
    (run_dir / "export.json").unlink()
    with pytest.raises(Exception, match="export.json: not found"):
        do_promote(run_dir)


@pytest.mark.slow
def test_concurrent_promotions_leave_one_best_champion(registry, tmp_path):
    """8 processes promote at once: exactly one champion, the best, and a consistent trail."""
    promote_concurrently(registry, tmp_path)


def promote_concurrently(registry, tmp_path, separate_homes: bool = False) -> None:
    """8 processes promote candidates at once into the store of ``registry`` (a run_factory);
    ``separate_homes``: each with its own HOME, as on 8 machines that share only the URI.
    Exactly one champion, the best, and a trail where each move starts where the last ended."""
    from mlflow.tracking import MlflowClient

    fids = [
        80.0,
        30.0,
        70.0,
        10.0,
        60.0,
        40.0,
        50.0,
        20.0,
    ]  # 10 beats every other beyond the intervals
    dirs = [registry(i, f) for i, f in enumerate(fids)]
    code = (
        "import sys; from ganforge.stages.promote import promote; from tests.conftest import tiny_params; "
        "from pathlib import Path; d = Path(sys.argv[1]); "
        "promote(tiny_params(), d / 'eval.json', d / 'export.json', d / 'promote.json')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    for d in dirs:
        home = {"HOME": str(d)} if separate_homes else {}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(d)], env={**env, **home}, cwd=tmp_path
            )
        )
    assert [p.wait(timeout=300) for p in procs] == [0] * 8

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "ganforge-digits-dcgan"
    champ = client.get_model_version_by_alias(name, CHAMPION)
    assert float(champ.tags["fid"]) == 10.0
    roles = [client.get_model_version(name, str(v)).tags["role"] for v in range(1, 9)]
    assert roles.count(CHAMPION) == 1
    trail = history(tiny_params(), name)
    assert len(trail) == 8
    promoted = [e for e in trail if e["promoted"]]
    for before, after in zip(promoted, promoted[1:], strict=False):
        assert after["from_version"] == before["to_version"]
    assert promoted[-1]["to_version"] == str(champ.version)
    assert not client.search_registered_models(f"name = 'promote-lock.{name}'")  # released


def promote_in_subprocess(run_dir, fault=None):
    """promote in a fresh process; ``fault``: SIGKILL it right after that recorded step."""
    code = (
        "import os, signal, sys; from pathlib import Path; import ganforge.stages.promote as P; "
        "from tests.conftest import tiny_params; d, fault = Path(sys.argv[1]), sys.argv[2]; "
        "P.after_step = lambda s: s == fault and os.kill(os.getpid(), signal.SIGKILL); "
        "P.promote(tiny_params(), d / 'eval.json', d / 'export.json', d / 'promote.json')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, str(run_dir), fault or ""],
        env=env,
        capture_output=True,
        text=True,
    )


def test_a_missing_interval_is_refused_before_anything_is_registered(registry):
    from mlflow.tracking import MlflowClient

    run_dir = registry(1, 50.0)
    ev = json.loads((run_dir / "eval.json").read_text())
    (run_dir / "eval.json").write_text(json.dumps({**ev, "fid_ci95": [None, None]}))
    with pytest.raises(
        PromotionError,
        match=r"eval.json: fid_ci95 is None, not a usable float \(evaluate.bootstrap=0",
    ):
        do_promote(run_dir)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() == []


def test_the_same_generator_is_registered_once(registry):
    run_dir = registry(1, 50.0)
    first = do_promote(run_dir)
    again = do_promote(run_dir)
    assert first["version"] == again["version"] == "1" and again["promote"]
    assert again["reason"] == "already registered as v1: no champion yet"
    assert len(history(tiny_params(), "ganforge-digits-dcgan")) == 1


def test_other_data_is_never_compared_with_the_champion(registry):
    assert do_promote(registry(1, 50.0))["promote"]
    other = do_promote(registry(2, 10.0, data="d2"))
    assert not other["promote"] and "trained on other data than champion v1" in other["reason"]


def test_fids_from_another_feature_space_are_never_compared(registry):
    """A generator judged by another feature network (here: one far better on paper) does
    not take the alias, nor does one whose space is unrecorded; the same space competes."""
    from ganforge.metrics.promotion import _feature_space

    assert do_promote(registry(1, 50.0, space="aaaa"))["promote"]
    other = do_promote(registry(2, 10.0, space="bbbb"))
    assert not other["promote"] and "another feature space than champion v1" in other["reason"]
    assert "featurenet:bbbb vs featurenet:aaaa" in other["reason"]
    unknown = do_promote(registry(3, 10.0, space=None))
    assert not unknown["promote"] and "not recorded vs featurenet:aaaa" in unknown["reason"]
    assert do_promote(registry(4, 10.0, space="aaaa"))["promote"]
    assert _feature_space({"features": "inception", "inception_sha256": "f" * 64}) == (
        "inception:" + "f" * 64
    )
    # samples truncated at generation are another population: never compared with plain ones
    cut = {"features": "featurenet", "featurenet_sha256": "aaaa", "truncation": 0.7}
    assert _feature_space(cut) == "featurenet:aaaa truncated at 0.7"
    assert _feature_space({**cut, "truncation": None}) == "featurenet:aaaa"


@pytest.mark.slow
def test_killed_at_every_step_promote_converges(registry):
    """SIGKILL after registering, after deciding, after moving the alias: each rerun completes
    the same decision; every version ends with a role and exactly one audit entry."""
    from mlflow.tracking import MlflowClient

    plan = [
        (1, 50.0, "registered"),
        (2, 49.5, "decided"),
        (3, 40.0, "applied"),
        (4, 30.0, "decided"),
        (5, 80.0, "registered"),
    ]
    expected_champion = {1: "1", 2: "1", 3: "3", 4: "4", 5: "4"}
    for i, fid, fault in plan:
        run_dir = registry(i, fid)
        killed = promote_in_subprocess(run_dir, fault)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert not (run_dir / "promote.json").exists()
        done = promote_in_subprocess(run_dir)
        assert done.returncode == 0, done.stderr[-2000:]
        record = json.loads((run_dir / "promote.json").read_text())
        assert record["version"] == str(i) and record["reason"].startswith(
            f"already registered as v{i}"
        )
        uri = os.environ["MLFLOW_TRACKING_URI"]
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        name = "ganforge-digits-dcgan"
        assert (
            str(client.get_model_version_by_alias(name, CHAMPION).version) == expected_champion[i]
        )
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 5 and all(v.tags.get("role") for v in versions)
    trail = history(tiny_params(), name)
    assert [e["candidate"] for e in trail] == ["1", "2", "3", "4", "5"]
    assert [e["promoted"] for e in trail] == [True, False, True, True, False]
    roles = {str(v.version): v.tags["role"] for v in versions}
    assert roles == {
        "1": "former-champion",
        "2": "challenger",
        "3": "former-champion",
        "4": CHAMPION,
        "5": "challenger",
    }


def test_the_lock_does_not_depend_on_how_the_uri_is_spelled(tmp_path, monkeypatch):
    from ganforge.tracking import lock_key

    monkeypatch.chdir(tmp_path)
    assert lock_key("sqlite:///mlflow.db") == lock_key(f"sqlite:///{tmp_path}/./mlflow.db")


def test_candidate_from_files_round_trips_through_the_registry_tags(tmp_path):
    """The metrics files give a typed candidate; its tags (the one string boundary) read back
    to the same candidate, and the numbers it records are the headline's RECORDED names."""
    from ganforge.metrics.headline import RECORDED

    ev = {"fid": 4.25, "fid_ci95": [3.5, 5.0], "fid_floor": 0.3, "fid_at_floor_samples": 6.0,
          "separable": True, "kid_mean": 0.01, "is_mean": 3.0, "precision": 0.7, "recall": 0.6,
          "class_coverage": 1.0, "mode_collapse": False, "mode_collapse_basis": "class histogram",
          "fid_over_floor": 20.0, "density": 0.9, "coverage": 0.8, "c2st_accuracy": 0.8,
          "c2st_ci95_low": 0.75, "c2st_ci95_high": 0.85, "c2st_null_accuracy": 0.5,
          "copying": False, "copying_z_pixel": 4.0, "copying_z_feature": 3.0,
          "protocol": {"generator_sha256": "g", "generator_family": "dcgan", "dataset": "digits",
                       "data_sha256": "d", "features": "featurenet",
                       "featurenet_sha256": "f"}}  # fmt: skip
    ex = {"parity_max_abs_diff": 2e-7, "parity_tolerance": 1e-4, "generator_sha256": "g",
          "onnx_sha256": "o", "mlflow_run_id": "r", "mlflow_model_uri": "models:/m/1"}  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    (tmp_path / "export.json").write_text(json.dumps(ex))
    new, where = Candidate.from_files(tmp_path / "eval.json", tmp_path / "export.json")
    assert where == {"source": "models:/m/1", "dataset": "digits", "family": "dcgan"}
    assert (new.fid, new.fid_ci95, new.mode_collapse, new.parity_passed) == (
        4.25,
        (3.5, 5.0),
        False,
        True,
    )
    tags = new.to_tags()
    assert all(isinstance(v, str) for v in tags.values())
    assert set(RECORDED) <= set(tags)  # every recorded headline number is on the version
    assert Candidate.from_tags("3", tags) == Candidate(**{**new.__dict__, "version": "3"})
    assert new.feature_space == "featurenet:f"
    assert decide(new, None).promote


def test_headline_lists_come_from_one_definition(tmp_path):
    import re

    from ganforge.metrics import headline

    assert set(headline.PRINTED) <= set(headline.EVAL_NAMES)
    keep = re.compile(headline.compare_regex())
    shown = [c for c in ("fid", "fid_ci95_low", "train.model", "prepare.image_size", "parity_max_abs_diff",
                         "Experiment", "kid_std", "fid_history", "train.lr_x") if keep.match(c)]  # fmt: skip
    assert shown == ["fid", "fid_ci95_low", "train.model", "prepare.image_size",
                     "parity_max_abs_diff", "Experiment"]  # fmt: skip
