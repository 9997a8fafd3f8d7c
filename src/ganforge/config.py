"""params.yaml -> typed, validated config.

One pydantic model per stage section. Every key keeps its params.yaml name in the
config object, on the CLI (``--set train.lr=1e-4``) and in tracked params, so a
value can be followed from the file to the run that used it.

    from ganforge.config import load_params
    params = load_params("params.yaml", overrides=["train.steps=100"])
    params.train.lr  # 0.0002

Bad input fails here, before any work starts, with one line naming the key and
the allowed values (``ConfigError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from ganforge.core.latent import MAX_TRUNCATION, MIN_TRUNCATION
from ganforge.core.sources import SOURCES
from ganforge.core.validation import format_error, short
from ganforge.core.yamlsafe import load_yaml
from ganforge.errors import ConfigError
from ganforge.models import VARIANTS, all_settings

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d{1,3})?)$"
SEED_MAX = 2**31 - 1  # every seed feeds numpy and torch generators
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
PARAMS_MAX_BYTES = 1 << 20  # a params file is a few KiB; refuse anything near a megabyte
MAX_MESSAGE = 600  # characters of an error line
Auto = bool | Literal["auto"]


class _Section(BaseModel):
    # every float is finite (inf would switch checks off), every string bounded
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False, str_max_length=4096
    )


class PrepareParams(_Section):
    source: str = "digits"  # a name in ganforge.core.sources.SOURCES
    # the dataset's name in experiments and registered models; "" = derived from the source
    name: str = Field("", max_length=64, pattern=r"^([a-z0-9][a-z0-9._-]*)?$")
    path: str = ""
    torchvision_dataset: Literal["MNIST", "FashionMNIST", "CIFAR10"] = "MNIST"
    download: bool = False
    image_size: int = Field(16, ge=8, le=256)
    channels: Literal["auto", 1, 3] = "auto"
    holdout_fraction: float = Field(0.1, gt=0.0, le=0.5)
    max_images: int = Field(0, ge=0, le=100_000_000)
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(
                f"prepare.source: unknown source {v!r} (allowed: {', '.join(SOURCES)})"
            )
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> PrepareParams:
        if SOURCES[self.source].needs_path and not self.path:
            raise ValueError(
                f"prepare.path: source '{self.source}' needs a directory in prepare.path"
            )
        return self


class _TrainCommon(_Section):
    """The keys every family reads; each family's own keys come from its ``settings``."""

    # measured best FID per minute on digits and MNIST (benchmarks/RESULTS.md, "Quality")
    model: str = "cdcgan"
    run_name: str = Field("main", pattern=NAME_PATTERN)
    latent_dim: int = Field(64, ge=1, le=1024)
    g_width: int = Field(32, ge=4, le=1024)
    d_width: int = Field(32, ge=4, le=1024)
    batch_size: int = Field(64, ge=1, le=65536)
    steps: int = Field(2600, ge=1, le=100_000_000)
    lr: float = Field(5e-4, gt=0.0, le=1.0)
    d_lr: float | None = Field(None, gt=0.0, le=1.0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    sample_every: int = Field(250, ge=1, le=100_000_000)
    checkpoint_every: int = Field(500, ge=1, le=100_000_000)
    log_every: int = Field(10, ge=1, le=100_000_000)
    grid_size: int = Field(64, ge=1, le=1024)
    fid_samples: int = Field(1000, ge=0, le=100000)
    augment: Literal["none", "diffaugment", "ada"] = "none"  # ganforge.engine.augment
    keep: Literal["best", "last"] = "best"  # generator.pt: the best-FID EMA generator or the last
    patience: int = Field(0, ge=0, le=1_000_000)  # probes without a new best FID; 0 = off
    max_minutes: float = Field(0.0, ge=0.0, le=1e6)  # wall-clock budget of the loop; 0 = none
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    nproc_per_node: int = Field(
        1, ge=1, le=1024
    )  # processes (data parallel, torchrun); batch_size is global
    bf16: Auto = "auto"  # ganforge.core.fastpath: per device, what was measured fastest
    channels_last: Auto = "auto"
    compile: Auto = "auto"
    data_on_device: bool = True
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("model")
    @classmethod
    def _known_family(cls, v: str) -> str:
        if v not in VARIANTS:
            raise ValueError(f"train.model: unknown family {v!r} (allowed: {', '.join(VARIANTS)})")
        return v

    @field_validator("run_name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == "featurenet":
            raise ValueError("'featurenet' is reserved for the feature network's directory")
        return v


# train.*: the common keys plus every variant's own (ganforge.models.VARIANTS[...].settings)
TrainParams = create_model("TrainParams", __base__=_TrainCommon, **all_settings())


class FeaturenetParams(_Section):
    objective: Literal["auto", "classifier", "contrastive", "hybrid"] = "auto"
    steps: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["auto"] = "auto"
    batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    width: int = Field(32, ge=4, le=512)
    feature_dim: int = Field(128, ge=2, le=4096)
    texture: bool = True
    max_shift: int = Field(2, ge=0, le=8)
    hflip: bool = False
    bf16: Auto = "auto"
    channels_last: Auto = "auto"
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] = "auto"
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    seed: int = Field(0, ge=0, le=SEED_MAX)


class EvaluateParams(_Section):
    features: Literal["featurenet", "inception"] = "featurenet"
    inception_weights: str = ""
    inception_sha256: str = Field("6726825d", pattern=r"^[0-9a-f]{8,64}$")
    num_samples: int = Field(10000, ge=2, le=1_000_000)
    real_split: Literal["train", "holdout"] = "train"
    batch_size: int = Field(500, ge=1, le=65536)
    bootstrap: int = Field(200, ge=0, le=10000)
    kid_subsets: int = Field(50, ge=1, le=10000)
    kid_subset_size: int = Field(1000, ge=2, le=1_000_000)
    is_splits: int = Field(10, ge=1, le=100)
    stable_samples: int = Field(5000, ge=2, le=1_000_000)
    coverage_threshold: float = Field(0.5, gt=0.0, le=1.0)
    kl_threshold: float = Field(0.2, gt=0.0, le=100.0)
    control_ratio: float = Field(1.5, ge=1.0, le=1000.0)
    control_samples: int = Field(1000, ge=2, le=100_000)
    collapse_min_class_accuracy: float = Field(0.9, ge=0.0, le=1.0)
    min_recall: float = Field(0.2, ge=0.0, le=1.0)
    two_sample_samples: int = Field(1000, ge=4, le=100_000)
    two_sample_width: int = Field(16, ge=4, le=256)
    two_sample_steps: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["auto"] = "auto"
    two_sample_folds: int = Field(3, ge=2, le=20)
    two_sample_critics: int = Field(2, ge=1, le=8)
    truncation: float | None = Field(None, ge=MIN_TRUNCATION, le=MAX_TRUNCATION)
    truncation_curve: list[float] = Field([1.5, 1.0, 0.7, 0.5], max_length=16)
    truncation_two_sample: bool = False
    copying_z: float = Field(3.0, gt=0.0, le=100.0)
    copying_reference: int = Field(5000, ge=2, le=1_000_000)
    pr_k: int = Field(3, ge=1, le=100)
    pr_samples: int = Field(5000, ge=2, le=100_000)
    interpolation_steps: int = Field(10, ge=2, le=64)
    bf16: Auto = "auto"
    channels_last: Auto = "auto"
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("truncation_curve")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        for t in v:
            if not MIN_TRUNCATION <= t <= MAX_TRUNCATION:
                raise ValueError(f"{t} is outside {MIN_TRUNCATION}..{MAX_TRUNCATION}")
        return v

    @model_validator(mode="after")
    def _inception_weights_only_for_inception(self) -> EvaluateParams:
        if self.inception_weights and self.features != "inception":
            raise ValueError(
                "evaluate.inception_weights: only used with evaluate.features=inception"
            )
        return self


class ExportParams(_Section):
    parity_tolerance: float = Field(1e-4, gt=0.0, le=1.0)
    parity_batches: list[int] = Field([1, 64], min_length=1, max_length=16)
    parity_seed: int = Field(0, ge=0, le=SEED_MAX)

    @field_validator("parity_batches")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 or b > 4096 for b in v):
            raise ValueError("every batch must be in 1..4096")
        return v


class MlflowParams(_Section):
    enabled: bool | Literal["auto"] = "auto"
    experiment_prefix: str = Field("ganforge", pattern=NAME_PATTERN)
    registered_model_prefix: str = Field("ganforge", pattern=NAME_PATTERN)


class ScheduleParams(_Section):
    cron: str = Field("0 3 * * 0", max_length=200, pattern=r"^\S+( \S+){4}$")
    deployment: str = Field("weekly-retrain", pattern=NAME_PATTERN)
    retries: int = Field(2, ge=0, le=10)
    retry_delay_s: int = Field(10, ge=0, le=3600)


class Params(_Section):
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    featurenet: FeaturenetParams = FeaturenetParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    mlflow: MlflowParams = MlflowParams()
    schedule: ScheduleParams = ScheduleParams()

    @model_validator(mode="after")
    def _compatible(self) -> Params:
        if self.train.augment == "ada" and not VARIANTS[self.train.model].ada_signal:
            ada = ", ".join(n for n, v in VARIANTS.items() if v.ada_signal)
            raise ValueError(
                f"train.augment: ada adapts to the sign of D(real), which means nothing for "
                f"train.model={self.train.model} (ada works with {ada}; diffaugment with every "
                "family)"
            )
        allowed = VARIANTS[self.train.model].image_sizes
        size = self.prepare.image_size
        if size not in allowed:
            shown = (
                f"{allowed[0]}..{allowed[-1]}" if len(allowed) > 8 else ", ".join(map(str, allowed))
            )
            raise ValueError(
                f"prepare.image_size: {size} px is not supported by train.model={self.train.model} "
                f"(allowed: {shown})"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.0002, ...}``: the names used for tracked params."""
        dump = self.model_dump()
        return {
            f"{sec}.{key}": value for sec, values in dump.items() for key, value in values.items()
        }


def apply_override(raw: dict[str, Any], assignment: str) -> str:
    """Apply ``section.key=value`` (value parsed as YAML) to the raw params dict in place;
    returns ``section.key``."""
    shown = short(assignment)
    if len(assignment) > 4096:
        raise ConfigError(f"--set {shown}: longer than 4096 characters")
    key, sep, value = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {shown}: expected section.key=value, e.g. train.lr=1e-4")
    section, name = parts
    if section not in Params.model_fields:
        raise ConfigError(
            f"--set {shown}: unknown section {short(section, 40)} (allowed: "
            f"{', '.join(Params.model_fields)})"
        )
    parsed = load_yaml(value, f"--set {shown}: value") if value.strip() else ""
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise ConfigError(f"--set {shown}: section '{section}' in params is not a mapping")
    target[name] = parsed
    return f"{section}.{name}"


def parse_params(
    raw: Any, source: str = "params", overridden: frozenset[str] = frozenset()
) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: top level must be a mapping of sections, got {type(raw).__name__}"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, Params, source, overridden)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read ``path`` (missing file = all defaults is *not* allowed: the file is the record)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        with open(path, "rb") as f:
            data = f.read(PARAMS_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > PARAMS_MAX_BYTES:
        raise ConfigError(f"{path}: larger than {PARAMS_MAX_BYTES // 1024} KiB; not a params file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    raw = load_yaml(text, str(path))
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: top level must be a mapping of sections, got {type(raw).__name__}"
        )
    overridden = frozenset(apply_override(raw, a) for a in overrides or [])
    return parse_params(raw, str(path), overridden)
