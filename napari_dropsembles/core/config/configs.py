"""Every config of the package, with its defaults and its checks (one place for both).

- :class:`ModelConfig`: the architecture, saved with the weights in every checkpoint.
- :class:`FinetuneConfig`: fine-tuning the members on one case.
- :class:`ReconstructionConfig`: one reconstruction (method, members, fine-tuning, output grid).
- :class:`PretrainConfig`: pretraining a prior.

Configs are frozen dataclasses that check themselves when built (``__post_init__``): a wrong type
or range raises :class:`~.errors.ConfigError` naming the field (``"finetune.steps"``). The CLI's
``default=`` and the widgets' ``value=`` read the defaults from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError
from .validation import checked, flag, integer, number, one_of, ranged, seed, set_fields

MAX_MEMBERS = 64  # ReconstructionConfig.members: the limit the CLI, the widgets and Batch read
MAX_CHUNK = 1 << 24  # points per network call
REFINE_STEPS = 10  # fine-tuning steps of a refinement round (warm start: a few suffice; bench/annotate_next.py)
EMPTY_SLICES = ("unobserved", "background")  # how empty slices between labelled ones are read (core/slices)
PRECISIONS = ("fp32", "tf32", "bf16")  # CUDA only (core/networks/chunking)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # core/networks/device


RANGED_MODEL_FIELDS = ("grid_size", "feature_channels", "hidden", "blocks", "dropout", "box_padding")
RANGED_MODEL_FIELDS += ("point_features", "sdf_scale")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one occupancy network (encoder + local decoder)."""

    # encoder input cells per axis over the unit cube (two 2x poolings need at least 4)
    grid_size: int = ranged(24, 4, 256)
    encoder_channels: tuple[int, int, int] = (12, 24, 48)  # U-Net levels G, G/2, G/4
    feature_channels: int = ranged(32, 1, 1024)  # C of the feature grid the decoder samples
    hidden: int = ranged(64, 1, 4096)  # decoder width
    blocks: int = ranged(4, 1, 64)  # ResNet-FC blocks in the decoder
    dropout: float = ranged(0.1, 0.0, 1.0, hi_open=True)  # rate on the decoder's hidden units (after each block)
    box_padding: float = ranged(0.1, 0.0, 1.0, hi_open=True)  # relative padding of the object box in the unit cube
    point_features: int = ranged(1, 0, 1)  # 1: the decoder also reads the shape-based interpolation at each point
    # that input is tanh(signed distance / (sdf_scale * cube size))
    sdf_scale: float = ranged(0.04, 0.0, 10.0, lo_open=True)

    def __post_init__(self) -> None:
        channels = self.encoder_channels
        if not isinstance(channels, (tuple, list)) or len(channels) != 3:
            raise ConfigError("encoder_channels", "must be three channel counts", channels)
        channels = tuple(integer("encoder_channels", c, 1, 1024) for c in channels)
        for c in channels:  # GroupNorm splits each level into max(1, c // 8) groups
            if c % max(1, c // 8):
                raise ConfigError("encoder_channels", "must each be divisible by max(1, channels // 8)", channels)
        set_fields(
            self,
            encoder_channels=channels,
            **{name: checked(self, name) for name in RANGED_MODEL_FIELDS},
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> ModelConfig:
        """The config saved by :meth:`to_dict`; unknown or wrong fields raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError("model config", "must be a JSON object of fields", data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - names)
        if unknown:
            raise ConfigError("model config", f"has unknown fields {unknown}", sorted(map(str, data)))
        return cls(**data)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning the members on one case (Adam on BCE + EWC, early stopping on a held-out share)."""

    steps: int = ranged(60, 0, 1_000_000)
    lr: float = ranged(1e-3, 0.0, 10.0, lo_open=True)
    points_per_step: int = ranged(4096, 1, 1 << 22)
    ewc_lambda: float = ranged(0.1, 0.0, 1e12)  # chosen by bench/defaults_sweep.py (docs/defaults_sweep.md)
    # share of observed voxels kept out for early stopping (0 = off)
    holdout: float = ranged(0.1, 0.0, 0.9, hi_open=True)
    eval_every: int = ranged(10, 1)
    # > 0: fresh dropout masks per step (MC-dropout fine-tuning)
    random_dropout: float = ranged(0.0, 0.0, 1.0, hi_open=True)
    # share of each batch drawn from foreground voxels (0 = uniform, keeps calibration)
    balance: float = ranged(0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        set_fields(self, **{item.name: checked(self, item.name) for item in dataclasses.fields(self)})


def _range_pair(field: str, value: object, lo: float, hi: float) -> tuple[float, float]:
    """Two numbers ``(low, high)`` in ``[lo, hi]`` with ``low <= high``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(field, "must be two numbers (low, high)", value)
    low, high = (number(field, v, lo, hi) for v in value)
    if low > high:
        raise ConfigError(field, "must be (low, high) with low <= high", value)
    return low, high


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining a prior on procedural vertebrae or dense masks (core/pretrain)."""

    steps: int = ranged(2000, 1, 10_000_000)
    batch_size: int = ranged(8, 1, 4096)
    points_per_sample: int = ranged(4096, 2, 1 << 20)  # queries stored per sample; each step uses half of them
    lr: float = ranged(1e-3, 0.0, 10.0, lo_open=True)
    shapes: int = ranged(0, 0, 1_000_000)  # size of the shape pool (0 = a new random vertebra for every sample)
    # the pool the steps draw their batches from (shape + random slicing/corruption + queries); a sample is
    # made when training first needs it (core/fitting/sample_stream): at most steps x batch_size are made
    samples: int = ranged(1024, 1, 1_000_000)
    slice_factors: tuple[float, float] = (1.0, 5.0)
    in_plane_mm: tuple[float, float] = (0.7, 1.5)
    surface_sigma: float = ranged(0.015, 0.0, 1.0, lo_open=True)  # near-surface query noise, share of the cube size
    fisher_samples: int = ranged(16, 1, 1_000_000)
    seed: int = 0
    # with dense masks given: share of samples drawn from procedural vertebrae
    procedural_share: float = ranged(0.0, 0.0, 1.0)
    slice_axes: tuple[int, ...] = (2,)  # the shapes' voxel axes a training slicing may be thick along
    augment: bool = False  # mask shapes mirrored left-right (half of the samples) and scaled by 0.9-1.1

    def __post_init__(self) -> None:
        set_fields(
            self,
            procedural_share=checked(self, "procedural_share"),
            slice_axes=_axes("slice_axes", self.slice_axes),
            **{name: checked(self, name) for name in ("steps", "batch_size", "points_per_sample", "lr", "shapes")},
            samples=checked(self, "samples"),
            slice_factors=_range_pair("slice_factors", self.slice_factors, 1.0, 100.0),
            in_plane_mm=_range_pair("in_plane_mm", self.in_plane_mm, 0.01, 100.0),
            surface_sigma=checked(self, "surface_sigma"),
            fisher_samples=checked(self, "fisher_samples"),
            seed=seed("seed", self.seed),
            augment=flag("augment", self.augment),
        )


def _axes(field: str, value: object) -> tuple[int, ...]:
    """A non-empty set of distinct voxel axes (0, 1, 2), as a sorted tuple."""
    if not isinstance(value, (tuple, list)):
        raise ConfigError(field, "must be voxel axes among 0, 1, 2", value)
    axes = tuple(integer(field, a, 0, 2) for a in value)
    if not axes or len(set(axes)) != len(axes):
        raise ConfigError(field, "must be distinct voxel axes among 0, 1, 2 (at least one)", value)
    return tuple(sorted(axes))


MEMBER_DIVERSITY = ("slices", "none")
# the methods a config accepts: the names of core/fitting/methods.REGISTRY (a test checks they agree)
METHODS = ("dropsembles", "mc_dropout", "deep_ensemble", "single")
MAX_SLICE_INDEX = 1 << 20


def _slice_indices(field: str, value: object) -> tuple[int, ...]:
    """Sorted distinct slice indices (non-negative integers)."""
    if not isinstance(value, (tuple, list)):
        raise ConfigError(field, "must be a list of slice indices", value)
    return tuple(sorted({integer(field, v, 0, MAX_SLICE_INDEX) for v in value}))


@dataclass(frozen=True)
class ReconstructionConfig:
    """Everything a reconstruction depends on (saved in report.json)."""

    method: str = "dropsembles"
    members: int = ranged(4, 1, MAX_MEMBERS)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    resolution_mm: float | None = None  # output spacing; None = the observation's finest spacing
    threshold: float = ranged(0.5, 0.0, 1.0, lo_open=True, hi_open=True)  # surface level on the mean occupancy
    device: str = "auto"
    seed: int = 0
    chunk: int | None = None  # points per network call; None = chosen for the device (core/chunking)
    keep_members: bool = False
    preview_interval_s: float = ranged(0.0, 0.0)  # > 0: attach a coarse mean to progress this often
    adaptive: bool = True  # coarse-to-fine grid evaluation (core/adaptive); False = query every voxel
    precision: str = "fp32"  # "fp32", "tf32" or "bf16": CUDA only (other devices run float32)
    empty_slices: str = "unobserved"  # empty slices between labelled ones: "unobserved" or "background"
    # "slices": members read the interpolated distance shifted by the between-slice uncertainty learned
    # from held-out observed slices (core/slice_uncertainty); "none": all members read the same input
    member_diversity: str = "slices"
    slice_check: bool = True  # hold out observed slices and report whether the prior beat interpolation there
    # the axis a fine-grid scan was annotated along, every few slices (its empty slices are not annotated);
    # None: the thick axis of a thick-slice acquisition, else detected (core/slice_field.read_slices)
    annotation_axis: int | None = None
    annotated_empty: tuple[int, ...] = ()  # slices of that axis annotated as empty: background, not gaps

    def __post_init__(self) -> None:
        if not isinstance(self.finetune, FinetuneConfig):
            raise ConfigError("finetune", "must be a FinetuneConfig", self.finetune)
        resolution = self.resolution_mm
        chunk = self.chunk
        set_fields(
            self,
            method=one_of("method", self.method, METHODS),
            members=checked(self, "members"),
            resolution_mm=None if resolution is None else number("resolution_mm", resolution, 0.0, lo_open=True),
            threshold=checked(self, "threshold"),
            device=one_of("device", self.device, DEVICE_CHOICES),
            seed=seed("seed", self.seed),
            chunk=None if chunk is None else integer("chunk", chunk, 1, MAX_CHUNK),
            keep_members=flag("keep_members", self.keep_members),
            preview_interval_s=checked(self, "preview_interval_s"),
            adaptive=flag("adaptive", self.adaptive),
            precision=one_of("precision", self.precision, PRECISIONS),
            empty_slices=one_of("empty_slices", self.empty_slices, EMPTY_SLICES),
            member_diversity=one_of("member_diversity", self.member_diversity, MEMBER_DIVERSITY),
            slice_check=flag("slice_check", self.slice_check),
            annotation_axis=None
            if self.annotation_axis is None
            else integer("annotation_axis", self.annotation_axis, 0, 2),
            annotated_empty=_slice_indices("annotated_empty", self.annotated_empty),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_finetune(self, **changes: object) -> ReconstructionConfig:
        """This config with fine-tuning fields changed (``steps``, ``lr``, ``ewc_lambda``, ...)."""
        return dataclasses.replace(self, finetune=dataclasses.replace(self.finetune, **changes))


def config_from_dict(data: object) -> ReconstructionConfig:
    """A :class:`ReconstructionConfig` from its ``to_dict()`` (ConfigError on unknown or wrong fields)."""
    if not isinstance(data, dict) or not isinstance(data.get("finetune", {}), dict):
        raise ConfigError("config", "must be a JSON object of fields", data)
    known = {f.name for f in dataclasses.fields(ReconstructionConfig)}
    tune = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(data) - known) + sorted(set(data.get("finetune", {})) - tune)
    if unknown:
        raise ConfigError("config", f"has unknown fields {unknown}", sorted(data))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    fields["finetune"] = FinetuneConfig(**data.get("finetune", {}))
    return ReconstructionConfig(**fields)
