"""Configuration as data: frozen, typed dataclasses for the grid, task, model and training.

A :class:`MetNetConfig` bundles the four parts. Presets (``paper``, ``small``, ``tiny``)
are built by :func:`preset`; YAML files are read by :func:`load_config`, which starts
from the preset named under ``preset:`` (default ``paper``) and applies the overrides
in the file. Unknown keys and invalid values raise :class:`ConfigError` naming the key
and the rule, collected over the whole file so a user sees every problem at once.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Downsampling factor of the spatial downsampler (two 2x2 max-pools).
DOWNSAMPLE_FACTOR = 4


class ConfigError(ValueError):
    """An invalid configuration; ``errors`` lists one ``"key: rule"`` line per problem."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n  " + "\n  ".join(self.errors))


@dataclass(frozen=True)
class GridConfig:
    """The canonical 1 km grid every source is regridded to (projected, square cells)."""

    crs: str = "EPSG:5070"
    """Projection of the grid; default NAD83 / CONUS Albers equal-area."""
    x_min_m: float = -2_400_000.0
    """West edge of the first column, metres in ``crs``."""
    y_max_m: float = 3_200_000.0
    """North edge of the first row, metres in ``crs`` (rows run north to south)."""
    nx: int = 4700
    """Number of columns."""
    ny: int = 3000
    """Number of rows."""
    resolution_m: float = 1000.0
    """Cell size in metres (square cells)."""


@dataclass(frozen=True)
class TaskConfig:
    """What is predicted from what: inputs, history, lead times, bins and patch sizes."""

    radar_variables: tuple[str, ...] = ("precipitation_rate",)
    """Radar variables read from the archive by name (mm/h)."""
    satellite_bands: tuple[int, ...] = tuple(range(1, 17))
    """GOES ABI band numbers (1..16) used as inputs; empty for radar only."""
    static_features: tuple[str, ...] = ("latitude", "longitude", "elevation")
    """Static fields read from the archive by name."""
    time_features: tuple[str, ...] = ("hour_of_day", "day_of_year", "month")
    """Calendar features, each encoded as a sine and cosine channel."""
    history_minutes: int = 90
    """Length of the input history before the forecast time, minutes."""
    history_interval_minutes: int = 15
    """Time between input frames, minutes."""
    lead_time_step_minutes: int = 2
    """Spacing of the predicted lead times, minutes (also the smallest lead time)."""
    max_lead_time_minutes: int = 480
    """Largest lead time predicted, minutes."""
    bin_width_mm_h: float = 0.2
    """Width of each precipitation rate bin, mm/h."""
    num_bins: int = 512
    """Number of rate bins; the last bin is open-ended."""
    context_km: int = 1024
    """Side of the square input context around the target, km."""
    target_km: int = 64
    """Side of the square target tile at the centre of the context, km."""
    packed_size: int = 256
    """Side in pixels of each packed input view (pooled context and central crop)."""
    resolution_km: float = 1.0
    """Grid resolution of inputs and targets, km; must match the grid."""

    @property
    def num_frames(self) -> int:
        """Number of input frames, the forecast time included."""
        return self.history_minutes // self.history_interval_minutes + 1

    @property
    def lead_times(self) -> tuple[int, ...]:
        """All predicted lead times in minutes, e.g. (2, 4, ..., 480)."""
        step = self.lead_time_step_minutes
        return tuple(range(step, self.max_lead_time_minutes + 1, step))

    @property
    def num_lead_times(self) -> int:
        """Number of predicted lead times (size of the one-hot conditioning)."""
        return len(self.lead_times)

    @property
    def context_px(self) -> int:
        """Side of the context in grid pixels."""
        return round(self.context_km / self.resolution_km)

    @property
    def target_px(self) -> int:
        """Side of the target tile in grid pixels."""
        return round(self.target_km / self.resolution_km)

    @property
    def context_pool(self) -> int:
        """Pooling factor that packs the whole context into ``packed_size`` pixels."""
        return self.context_px // self.packed_size

    def input_variables(self) -> tuple[str, ...]:
        """Observed variables in channel order: radar first, then ``abi_cNN`` bands."""
        return self.radar_variables + tuple(f"abi_c{b:02d}" for b in self.satellite_bands)

    def input_channel_names(self) -> tuple[str, ...]:
        """Name of every channel of one input frame, in the order the dataset stacks them.

        Observed and static fields appear twice: ``@context`` (whole context pooled by
        ``context_pool``) and ``@center`` (central ``packed_size`` pixels at full
        resolution). Each source family has one validity mask per view (1 = observed),
        because missing data enters the model as a mask, never as a silent zero.
        Calendar features are a sine and a cosine each. The lead-time one-hot is added
        by the model, not the dataset.
        """
        views = ("context", "center")
        names: list[str] = []
        for view in views:
            names += [f"{v}@{view}" for v in self.input_variables()]
            names.append(f"radar_valid@{view}")
            if self.satellite_bands:
                names.append(f"satellite_valid@{view}")
            names += [f"{s}@{view}" for s in self.static_features]
        for t in self.time_features:
            names += [f"{t}_sin", f"{t}_cos"]
        return tuple(names)

    @property
    def num_input_channels(self) -> int:
        """Channels of one input frame as produced by the dataset."""
        return len(self.input_channel_names())


@dataclass(frozen=True)
class ModelConfig:
    """MetNet architecture sizes (Sønderby et al. 2020)."""

    downsampler_channels: tuple[int, ...] = (160, 256, 256, 256)
    """Output channels of the downsampler's 3x3 convs: one before the first pool, the rest after."""
    kernel_size: int = 3
    """Kernel size of the downsampler convolutions."""
    convlstm_channels: int = 384
    """Hidden channels of the ConvLSTM temporal encoder."""
    convlstm_kernel_size: int = 3
    """Kernel size of the ConvLSTM gates."""
    attention_channels: int = 2048
    """Channels of the axial self-attention aggregator."""
    attention_blocks: int = 8
    """Axial attention blocks, alternating along rows and columns (must be even)."""
    attention_heads: int = 16
    """Attention heads per block."""
    feedforward_ratio: float = 0.0
    """Hidden width of each block's feed-forward layer as a multiple of the channels; 0 = none."""
    dropout: float = 0.0
    """Dropout probability in the attention blocks."""
    positional_encoding: str = "learned"
    """Positional encoding of the 4 km latent grid: ``learned`` or ``sinusoidal``."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    optimizer: str = "adamw"
    """Optimiser name (``adamw``)."""
    learning_rate: float = 2e-4
    """Peak learning rate after warm-up."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    warmup_steps: int = 1000
    """Linear warm-up steps from zero to the peak learning rate."""
    schedule: str = "cosine"
    """Decay after warm-up: ``cosine`` or ``constant``."""
    batch_size: int = 16
    """Global batch size (examples per optimiser step, summed over processes)."""
    grad_clip_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    ema_decay: float = 0.0
    """Polyak averaging decay of the weights; 0 disables EMA."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on GPU, fp32 on CPU), ``bf16`` or ``fp32``."""
    lead_time_sampling: str = "uniform"
    """How each example's lead time is drawn: ``uniform`` over the task's lead times."""
    seed: int = 0
    """Seed of weights initialisation and data order."""


@dataclass(frozen=True)
class MetNetConfig:
    """The complete configuration: grid, task, model and training."""

    grid: GridConfig = field(default_factory=GridConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML and checkpoints."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """YAML text that :func:`config_from_dict` reads back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS: dict[str, type] = {
    "grid": GridConfig,
    "task": TaskConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- presets

_SMALL_TASK = dict(
    satellite_bands=(13,),
    history_minutes=60,
    history_interval_minutes=10,
    max_lead_time_minutes=120,
    context_km=256,
    target_km=32,
    packed_size=64,
)
_TINY_TASK = dict(
    satellite_bands=(13,),
    static_features=("latitude", "longitude"),
    time_features=("hour_of_day",),
    history_minutes=10,
    history_interval_minutes=10,
    max_lead_time_minutes=12,
    context_km=64,
    target_km=8,
    packed_size=16,
)
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "small": {
        "grid": dict(nx=512, ny=512, x_min_m=0.0, y_max_m=1_600_000.0),
        "task": _SMALL_TASK,
        "model": dict(
            downsampler_channels=(32, 64, 64, 64),
            convlstm_channels=64,
            attention_channels=128,
            attention_blocks=4,
            attention_heads=4,
        ),
        "train": dict(batch_size=8, warmup_steps=50, learning_rate=1e-3),
    },
    "tiny": {
        "grid": dict(nx=128, ny=128, x_min_m=0.0, y_max_m=1_600_000.0),
        "task": _TINY_TASK,
        "model": dict(
            downsampler_channels=(8, 16, 16, 16),
            convlstm_channels=16,
            attention_channels=32,
            attention_blocks=2,
            attention_heads=2,
        ),
        "train": dict(batch_size=4, warmup_steps=5, learning_rate=1e-3),
    },
}

PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def preset(name: str) -> MetNetConfig:
    """The named preset (case-insensitive): ``paper``, ``small`` or ``tiny``."""
    key = name.lower()
    if key not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESET_NAMES)}")
    return config_from_dict(_PRESETS[key])


# ----------------------------------------------------------------------------- loading


def _coerce(value: Any, hint: Any, key: str, errors: list[str]) -> Any:
    """Convert a YAML value to the annotated field type, recording a readable error."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: must be a list, got {value!r}")
            return value
        return tuple(_coerce(v, item_type, f"{key}[{i}]", errors) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))
    ):
        errors.append(f"{key}: must be of type {hint.__name__}, got {value!r}")
    return value


def _build_section(cls: type, values: dict[str, Any], prefix: str, errors: list[str]):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            errors.append(
                f"{prefix}.{key}: unknown key; valid keys: {', '.join(sorted(known))}"
            )
            continue
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}", errors)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], source: str | None = None) -> MetNetConfig:
    """Build and validate a config from a nested dict.

    ``data`` may name a ``preset`` to start from; its sections override that preset
    field by field. Raises :class:`ConfigError` listing every problem.
    """
    if not isinstance(data, dict):
        raise ConfigError([f"top level: must be a mapping, got {type(data).__name__}"], source)
    data = dict(data)
    errors: list[str] = []
    base_name = data.pop("preset", None)
    base: dict[str, dict[str, Any]] = {}
    if base_name is not None:
        if str(base_name).lower() not in _PRESETS:
            errors.append(
                f"preset: unknown preset {base_name!r}; valid presets: {', '.join(PRESET_NAMES)}"
            )
        else:
            base = _PRESETS[str(base_name).lower()]
    sections = {}
    for name in data:
        if name not in _SECTIONS:
            errors.append(
                f"{name}: unknown section; valid sections: preset, {', '.join(_SECTIONS)}"
            )
    for name, cls in _SECTIONS.items():
        values = dict(base.get(name, {}))
        given = data.get(name) or {}
        if not isinstance(given, dict):
            errors.append(f"{name}: must be a mapping of keys to values")
            given = {}
        values.update(given)
        sections[name] = _build_section(cls, values, name, errors)
    config = MetNetConfig(**sections)
    try:
        validate(config)
    except ConfigError as exc:
        errors += exc.errors
    except TypeError:
        pass  # a wrongly typed value, already reported, breaks the cross-field rules
    if errors:
        raise ConfigError(errors, source)
    return config


def read_yaml(path: str | Path, error_type: type[ValueError] = ConfigError) -> Any:
    """The parsed YAML document in ``path`` ({} when empty).

    An unreadable file or invalid YAML raises ``error_type(errors, source)`` (a
    :class:`ConfigError`-like class) naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise error_type([f"cannot read file: {exc.strerror}"], str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error_type([f"not valid YAML: {exc}"], str(path)) from exc
    return {} if data is None else data


def load_config(path: str | Path) -> MetNetConfig:
    """Read and validate a YAML config file; errors name the file and each bad key."""
    return config_from_dict(read_yaml(path), source=str(path))


def save_config(config: MetNetConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (complete, no preset reference)."""
    Path(path).write_text(config.to_yaml())


# ----------------------------------------------------------------------------- validation


#: Fields that may legitimately be negative (projected coordinates).
_SIGNED_FIELDS = {"x_min_m", "y_max_m"}


def _check_positive(section: Any, prefix: str, errors: list[str]) -> None:
    for f in dataclasses.fields(section):
        if f.name in _SIGNED_FIELDS:
            continue
        value = getattr(section, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                errors.append(f"{prefix}.{f.name}: must not be negative, got {value!r}")
                break


def validate(config: MetNetConfig, source: str | None = None) -> None:
    """Check the rules that tie fields together; raise :class:`ConfigError` listing all."""
    errors: list[str] = []
    g, t, m, tr = config.grid, config.task, config.model, config.train
    for name, section in (("grid", g), ("task", t), ("model", m), ("train", tr)):
        _check_positive(section, name, errors)

    for key in ("nx", "ny", "resolution_m"):
        if getattr(g, key) <= 0:
            errors.append(f"grid.{key}: must be positive, got {getattr(g, key)}")
    if g.resolution_m > 0 and abs(t.resolution_km * 1000.0 - g.resolution_m) > 1e-6:
        errors.append(
            f"task.resolution_km: must equal grid.resolution_m / 1000 "
            f"({g.resolution_m / 1000:g}), got {t.resolution_km:g}"
        )

    positive_task = (
        "history_interval_minutes", "lead_time_step_minutes", "max_lead_time_minutes",
        "bin_width_mm_h", "num_bins", "context_km", "target_km", "packed_size",
        "resolution_km",
    )  # fmt: skip
    for key in positive_task:
        if getattr(t, key) <= 0:
            errors.append(f"task.{key}: must be positive, got {getattr(t, key)}")
    if not t.radar_variables:
        errors.append("task.radar_variables: at least one radar variable is required")
    for band in t.satellite_bands:
        if not 1 <= band <= 16:
            errors.append(f"task.satellite_bands: ABI bands are 1..16, got {band}")
    if t.history_interval_minutes > 0 and t.history_minutes % t.history_interval_minutes:
        errors.append(
            f"task.history_minutes: must be a multiple of history_interval_minutes "
            f"({t.history_interval_minutes}), got {t.history_minutes}"
        )
    if t.lead_time_step_minutes > 0 and t.max_lead_time_minutes % t.lead_time_step_minutes:
        errors.append(
            f"task.max_lead_time_minutes: must be a multiple of lead_time_step_minutes "
            f"({t.lead_time_step_minutes}), got {t.max_lead_time_minutes}"
        )
    if t.target_km > t.context_km:
        errors.append(
            f"task.target_km: must not exceed task.context_km ({t.context_km}), got {t.target_km}"
        )
    if min(t.context_km, t.target_km, t.packed_size, t.resolution_km) > 0:
        for key in ("context_km", "target_km"):
            px = getattr(t, key) / t.resolution_km
            if abs(px - round(px)) > 1e-9:
                errors.append(
                    f"task.{key}: must be a whole number of grid cells "
                    f"({t.resolution_km:g} km), got {getattr(t, key)}"
                )
        if t.context_px % t.packed_size:
            errors.append(
                f"task.context_km: the context ({t.context_px} px) must be a multiple of "
                f"task.packed_size ({t.packed_size}) so the whole context packs into it"
            )
        if t.packed_size % DOWNSAMPLE_FACTOR:
            errors.append(
                f"task.packed_size: must be divisible by the downsampler's factor "
                f"{DOWNSAMPLE_FACTOR}, got {t.packed_size}"
            )
        if t.target_px > t.packed_size:
            errors.append(
                f"task.target_km: the target ({t.target_px} px) must fit in the central "
                f"full-resolution view (task.packed_size = {t.packed_size} px)"
            )
        if t.target_px % DOWNSAMPLE_FACTOR or (t.packed_size - t.target_px) % (
            2 * DOWNSAMPLE_FACTOR
        ):
            errors.append(
                f"task.target_km: the target ({t.target_px} px) must be a multiple of "
                f"{DOWNSAMPLE_FACTOR} px and centred on the 4 km latent grid "
                f"(packed_size - target px divisible by {2 * DOWNSAMPLE_FACTOR})"
            )

    if len(m.downsampler_channels) < 2:
        errors.append(
            "model.downsampler_channels: needs at least 2 entries "
            "(one conv before the first pool, one or more after)"
        )
    for key in ("kernel_size", "convlstm_kernel_size"):
        k = getattr(m, key)
        if k <= 0 or k % 2 == 0:
            errors.append(f"model.{key}: must be a positive odd number, got {k}")
    for key in ("convlstm_channels", "attention_channels", "attention_heads"):
        if getattr(m, key) <= 0:
            errors.append(f"model.{key}: must be positive, got {getattr(m, key)}")
    if m.attention_blocks % 2:
        errors.append(
            f"model.attention_blocks: must be even (row and column blocks alternate), "
            f"got {m.attention_blocks}"
        )
    if m.attention_heads > 0 and m.attention_channels % m.attention_heads:
        errors.append(
            f"model.attention_channels: must be divisible by model.attention_heads "
            f"({m.attention_heads}), got {m.attention_channels}"
        )
    if not 0.0 <= m.dropout < 1.0:
        errors.append(f"model.dropout: must be in [0, 1), got {m.dropout}")
    if m.positional_encoding not in ("learned", "sinusoidal"):
        errors.append(
            f"model.positional_encoding: must be 'learned' or 'sinusoidal', "
            f"got {m.positional_encoding!r}"
        )

    if tr.optimizer != "adamw":
        errors.append(f"train.optimizer: must be 'adamw', got {tr.optimizer!r}")
    if tr.schedule not in ("cosine", "constant"):
        errors.append(f"train.schedule: must be 'cosine' or 'constant', got {tr.schedule!r}")
    if tr.precision not in ("auto", "bf16", "fp32"):
        errors.append(
            f"train.precision: must be 'auto', 'bf16' or 'fp32', got {tr.precision!r}"
        )
    if tr.lead_time_sampling != "uniform":
        errors.append(
            f"train.lead_time_sampling: must be 'uniform', got {tr.lead_time_sampling!r}"
        )
    if tr.learning_rate <= 0:
        errors.append(f"train.learning_rate: must be positive, got {tr.learning_rate}")
    if tr.batch_size <= 0:
        errors.append(f"train.batch_size: must be positive, got {tr.batch_size}")
    if not 0.0 <= tr.ema_decay < 1.0:
        errors.append(f"train.ema_decay: must be in [0, 1), got {tr.ema_decay}")

    if errors:
        raise ConfigError(errors, source)
