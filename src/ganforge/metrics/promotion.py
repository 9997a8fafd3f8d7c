"""The promotion rule: a candidate generator, typed, and ``decide`` (pure): whether it takes
the ``champion`` alias from the current champion. ``ganforge.stages.promote`` applies it
to the registry; this module touches no registry and no tracking.

A candidate is read from the metrics files evaluate and export wrote (``from_files``,
every value checked, one line naming the file and key otherwise) or from a registered
version's tags (``from_tags``); ``to_tags`` is the only place it becomes text. The headline
names it records come from ``ganforge.metrics.headline``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganforge.core.files import read_metrics
from ganforge.errors import GanforgeError
from ganforge.metrics.headline import RECORDED


class PromotionError(GanforgeError):
    """Inputs missing or inconsistent, or the registry refused."""


@dataclass(frozen=True)
class Candidate:
    """A generator as the promotion rule sees it. Built from the metrics files
    (``Candidate.from_files``) or from a registry version's tags (``from_tags``); ``to_tags``
    is the one place it becomes strings (the registry stores tags as text)."""

    version: str | None  # None until it is registered
    fid: float
    fid_ci95: tuple[float, float]
    mode_collapse: bool | None  # None: not assessed (the reason is in collapse_basis)
    parity_passed: bool
    data_sha256: str | None = None  # the prepared data it was trained and judged on
    # the feature space its FID was measured in: "featurenet:<sha256>" or "inception:<sha256>"
    # (None: evaluated before ganforge recorded it). The same generator on digits scored FID
    # 12.29 / 9.38 / 15.34 under feature networks of three seeds, so FIDs from two spaces
    # are never compared.
    feature_space: str | None = None
    # False: its FID is at or under the real-data floor in its feature space (no evidence)
    separable: bool = True
    collapse_basis: str = ""  # what the collapse verdict rests on (or why there is none)
    # the classifier two-sample test's 95% interval (None: evaluated before it existed)
    c2st_ci95: tuple[float, float] | None = None
    copying: bool | None = None  # the data-copying test's verdict (None: not measured)
    generator_sha256: str = ""
    onnx_sha256: str = ""
    run_id: str = ""
    # the other recorded headline numbers (metrics.headline.RECORDED), for the record only
    scores: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_files(cls, eval_path, export_path) -> tuple[Candidate, dict[str, str]]:
        """(the candidate, where its model is: logged-model URI, dataset, family), every value
        checked before the registry is touched: one line naming the file and key otherwise."""
        m = _read_json(eval_path, "evaluate's metrics")
        e = _read_json(export_path, "export's parity report")
        no_ci = " (evaluate.bootstrap=0 gives none; promotion compares intervals)"
        ci = m.get("fid_ci95") if isinstance(m.get("fid_ci95"), list) else []
        lo, hi = (
            _need({"fid_ci95": v}, eval_path, "fid_ci95", float, no_ci)
            for v in (ci + [None, None])[:2]
        )
        gen = _need(m, eval_path, "protocol.generator_sha256", str)
        if _need(e, export_path, "generator_sha256", str) != gen:
            raise PromotionError(
                f"{export_path} and {eval_path} describe different generator files"
            )
        source, run_id = e.get("mlflow_model_uri"), e.get("mlflow_run_id")
        if not isinstance(source, str) or not isinstance(run_id, str):
            raise PromotionError(
                f"{export_path}: no mlflow_model_uri (export ran without MLflow tracking; "
                "see mlflow.enabled)"
            )
        diff = _need(e, export_path, "parity_max_abs_diff", float)
        collapse = m.get("mode_collapse") if isinstance(m.get("mode_collapse"), bool) else None
        basis = m.get("mode_collapse_rule") if collapse is None else m.get("mode_collapse_basis")
        numbers = {**e, **m}
        candidate = cls(
            version=None,
            fid=_need(m, eval_path, "fid", float),
            fid_ci95=(lo, hi),
            mode_collapse=collapse,
            parity_passed=diff <= _need(e, export_path, "parity_tolerance", float),
            data_sha256=_need(m, eval_path, "protocol.data_sha256", str),
            feature_space=_feature_space(m.get("protocol")),
            separable=m.get("separable") is not False,
            c2st_ci95=_interval(m.get("c2st_ci95_low"), m.get("c2st_ci95_high")),
            copying=m.get("copying") if isinstance(m.get("copying"), bool) else None,
            collapse_basis=str(
                basis or ("not assessed" if collapse is None else "class histogram")
            )[:400],
            generator_sha256=gen,
            onnx_sha256=_need(e, export_path, "onnx_sha256", str),
            run_id=run_id,
            scores={k: _number(numbers.get(k)) for k in RECORDED if k not in TYPED},
        )
        where = {
            "source": source,
            "dataset": _need(m, eval_path, "protocol.dataset", str),
            "family": _need(m, eval_path, "protocol.generator_family", str),
        }
        return candidate, where

    def to_tags(self) -> dict[str, str]:
        """The registry version's tags (values as text; absent numbers left out)."""
        flag = {True: "true", False: "false", None: "unknown"}
        tags = {k: repr(v) for k, v in self.scores.items() if v is not None}
        tags.update(
            fid=repr(self.fid),
            fid_ci95_low=repr(self.fid_ci95[0]),
            fid_ci95_high=repr(self.fid_ci95[1]),
            separable=flag[self.separable],
            copying=flag[self.copying],
            mode_collapse=flag[self.mode_collapse],
            mode_collapse_basis=self.collapse_basis,
            parity_passed=flag[self.parity_passed],
            data_sha256=self.data_sha256 or "",
            feature_space=self.feature_space or "",
            generator_sha256=self.generator_sha256,
            onnx_sha256=self.onnx_sha256,
            run_id=self.run_id,
        )
        return tags

    @classmethod
    def from_tags(cls, version: str, tags: Mapping[str, str]) -> Candidate:
        """A registered version as the rule sees it (``to_tags`` read back)."""
        try:
            fid, lo, hi = (float(tags[k]) for k in ("fid", "fid_ci95_low", "fid_ci95_high"))
        except (KeyError, ValueError):
            raise PromotionError(
                f"registry version {version}: tags fid / fid_ci95_low / fid_ci95_high missing "
                "or not numbers"
            ) from None
        return cls(
            version=version,
            fid=fid,
            fid_ci95=(lo, hi),
            mode_collapse={"true": True, "false": False}.get(tags.get("mode_collapse", "")),
            parity_passed=tags.get("parity_passed") == "true",
            data_sha256=tags.get("data_sha256"),
            feature_space=tags.get("feature_space") or None,  # versions before the record
            separable=tags.get("separable", "true") != "false",  # versions before the check
            c2st_ci95=_interval(tags.get("c2st_ci95_low"), tags.get("c2st_ci95_high")),
            copying={"true": True, "false": False}.get(tags.get("copying", "")),
            collapse_basis=tags.get("mode_collapse_basis", ""),
            generator_sha256=tags.get("generator_sha256", ""),
            onnx_sha256=tags.get("onnx_sha256", ""),
            run_id=tags.get("run_id", ""),
            scores={k: _number(tags.get(k)) for k in RECORDED if k not in TYPED},
        )


# recorded headline numbers the candidate holds as typed fields (the rest go to ``scores``)
TYPED = ("fid", "fid_ci95_low", "fid_ci95_high", "separable", "mode_collapse", "copying")


def _feature_space(protocol: Any) -> str | None:
    """Which feature space an evaluation's FID was measured in, from its protocol: the
    feature network's sha256, or the Inception weights', and the samples' truncation when
    there was one (None: not recorded)."""
    if not isinstance(protocol, dict):
        return None
    # samples truncated at generation (evaluate.truncation) are another population: their
    # FIDs are not comparable with the plain generator's
    cut = f" truncated at {t}" if (t := protocol.get("truncation")) is not None else ""
    if isinstance(protocol.get("featurenet_sha256"), str):
        return f"featurenet:{protocol['featurenet_sha256']}{cut}"
    if protocol.get("features") == "inception":
        return f"inception:{protocol.get('inception_sha256') or 'torch-fidelity download'}{cut}"
    return None


def _interval(lo: Any, hi: Any) -> tuple[float, float] | None:
    """Two finite numbers as an interval, else None."""
    lo, hi = _number(lo), _number(hi)
    return None if lo is None or hi is None else (lo, hi)


def _number(value: Any) -> float | None:
    """A finite number from JSON or a tag's text, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(new: Candidate, champion: Candidate | None) -> Decision:
    """The promotion rule. Pure: the same inputs give the same decision."""
    if not new.parity_passed:
        return Decision(False, "ONNX parity check did not pass")
    if not new.separable:
        return Decision(
            False,
            "feature space cannot separate these sets (FID at or under the real-data floor, or KID "
            "below zero): the scores are no evidence of a good model",
        )
    if new.mode_collapse:
        return Decision(False, "flagged for mode collapse")
    if new.mode_collapse is None:
        return Decision(False, f"no mode-collapse verdict ({new.collapse_basis or 'not assessed'})")
    if new.copying:
        return Decision(
            False,
            "flagged for copying its training images (data-copying test: its samples sit closer "
            "to the training set than unseen real images do)",
        )
    if champion is None:
        return Decision(True, "no champion yet")
    if new.version == champion.version:
        return Decision(False, "already the champion")
    if new.data_sha256 != champion.data_sha256:
        return Decision(
            False,
            f"trained on other data than champion v{champion.version} (data sha256 "
            f"{str(new.data_sha256)[:12]} vs {str(champion.data_sha256)[:12]}): FIDs on "
            "different data are not compared; give each dataset its own prepare.name",
        )
    if new.feature_space != champion.feature_space:
        spaces = " vs ".join(
            (space or "not recorded")[:24] for space in (new.feature_space, champion.feature_space)
        )
        return Decision(
            False,
            f"judged in another feature space than champion v{champion.version} ({spaces}): "
            "FIDs from two feature networks are not compared (one generator scored 9.38-15.34 "
            "under three feature-network seeds on digits); evaluate with the feature network "
            "the champion was judged by, start a new registry line "
            "(mlflow.registered_model_prefix), or remove the champion alias in MLflow",
        )
    if new.c2st_ci95 and champion.c2st_ci95 and new.c2st_ci95[0] > champion.c2st_ci95[1]:
        (lo, hi), (c_lo, c_hi) = new.c2st_ci95, champion.c2st_ci95
        return Decision(
            False,
            f"the two-sample test tells it from real images more often than champion "
            f"v{champion.version}, beyond both intervals (accuracy [{lo:.3f}, {hi:.3f}] vs "
            f"[{c_lo:.3f}, {c_hi:.3f}])",
        )
    if new.fid_ci95[1] < champion.fid_ci95[0]:
        return Decision(
            True,
            f"FID {new.fid:.4g} [{new.fid_ci95[0]:.4g}, {new.fid_ci95[1]:.4g}] beats champion "
            f"v{champion.version} "
            f"{champion.fid:.4g} [{champion.fid_ci95[0]:.4g}, {champion.fid_ci95[1]:.4g}] "
            "beyond both intervals",
        )
    return Decision(
        False,
        f"FID {new.fid:.4g} [{new.fid_ci95[0]:.4g}, {new.fid_ci95[1]:.4g}] does not beat champion "
        f"v{champion.version} {champion.fid:.4g} [{champion.fid_ci95[0]:.4g}, "
        f"{champion.fid_ci95[1]:.4g}] "
        "beyond their 95% intervals",
    )


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PromotionError(f"{path}: not found ({what}); run the earlier stages first")
    try:
        data = read_metrics(path)  # with its _details file: the protocol and provenance
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PromotionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PromotionError(f"{path}: not a JSON object ({what})")
    return data


def _need(data: dict[str, Any], path, key: str, kind: type, hint: str = ""):
    """``data[key]`` (dotted) if it is a ``kind`` (a finite number for float), else one line
    naming the file and the key."""
    value: Any = data
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if kind is float:
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise PromotionError(f"{path}: {key} is {value!r}, not a usable {kind.__name__}{hint}")
    return value
