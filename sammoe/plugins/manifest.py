"""The expert manifest: what an expert plugin declares about itself, validated with pydantic.

A plugin's entry point (group `sammoe.experts`) is a cheap zero-argument function that returns an
`ExpertManifest` (or a plain dict of the same fields). Nothing here imports torch.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from sammoe.errors import PluginError

# Bump when the manifest schema or the meaning of expert weights changes incompatibly.
SAMMOE_API = 1
# Expert kinds this sammoe can load. The schema keeps `kind` open so that adapters can be added later.
SUPPORTED_KINDS = ("decoder",)
ENTRY_POINT_GROUP = "sammoe.experts"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
# A sha256 hex digest as written by hashlib: 64 lowercase hex digits.
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class IncompatiblePlugin(PluginError):
    """The plugin is well-formed but made for another sammoe API, kind or backbone."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Model):
    """The task the expert was finetuned on."""

    classes: dict[str, int] = Field(min_length=1, description="class name -> label value (nnU-Net style)")
    modality: str = Field("CT", min_length=1, description="imaging modality, e.g. CT, MR, PET")
    target_spacing: tuple[float, float, float] = Field((1.5, 1.5, 1.5), description="voxel spacing in mm")
    crop_size: tuple[int, int, int] = Field(description="model input cube in voxels, e.g. (128, 128, 128)")
    dataset: str = Field("", description="name of the training dataset")

    @field_validator("classes")
    @classmethod
    def _labels_positive_unique(cls, value: dict[str, int]) -> dict[str, int]:
        if any(label < 1 for label in value.values()):
            raise ValueError("label values must be >= 1 (0 is background)")
        if len(set(value.values())) != len(value):
            raise ValueError("label values must be unique")
        return value

    @field_validator("target_spacing", "crop_size")
    @classmethod
    def _positive(cls, value: tuple) -> tuple:
        if min(value) <= 0:
            raise ValueError("every entry must be > 0")
        return value


class BackboneSpec(_Model):
    """The frozen backbone the expert was trained on."""

    preset: str = Field(min_length=1, description="SamMed3D preset, e.g. tiny or vit_b_ori")
    fingerprint: Sha256 = Field(description="sha256 of the frozen image-encoder + prompt-encoder weights")


class WeightsRef(_Model):
    """Where the expert's safetensors file is: a package resource or a local path."""

    path: str = Field(
        description="relative path inside `package`, or an absolute local path (~ and $VARS ok)"
    )
    package: str | None = Field(None, description="importable package that ships the file as package data")
    sha256: Sha256
    format: Literal["safetensors"] = "safetensors"

    @model_validator(mode="after")
    def _path_shape(self) -> WeightsRef:
        if not self.path.endswith(".safetensors"):
            raise ValueError("weights must be a .safetensors file (pickled checkpoints are not loaded)")
        if self.package is not None:
            rel = PurePosixPath(self.path)
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError("a package resource path must be relative and stay inside the package")
        return self


class RouterRef(WeightsRef):
    """The expert's own router (``sammoe fit --config configs/router.yaml``) and what it measured on held-out
    clicks: recall on its task, and the share of general-structure (all, and of the worst general class) and
    background clicks it claims."""

    recall: float | None = Field(None, ge=0.0, le=1.0)
    false_claims_general: float | None = Field(None, ge=0.0, le=1.0)
    false_claims_general_worst: float | None = Field(None, ge=0.0, le=1.0)
    false_claims_background: float | None = Field(None, ge=0.0, le=1.0)


class Provenance(_Model):
    """How the weights were made."""

    finetuned: bool = Field(description="False marks placeholder weights that were not trained")
    training_data: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict, description="training configuration (JSON)")
    reported_dice: dict[str, float] = Field(default_factory=dict, description="class or 'mean' -> Dice")
    notes: str = ""

    @field_validator("reported_dice")
    @classmethod
    def _dice_range(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 <= dice <= 1.0 for dice in value.values()):
            raise ValueError("Dice values must lie in [0, 1]")
        return value


class ExpertManifest(_Model):
    """Everything sammoe needs to know about one expert, before loading any weights."""

    name: str = Field(pattern=NAME_PATTERN, description="unique expert name, equal to the entry-point name")
    version: str
    sammoe_api: int = Field(description=f"expert API version; this sammoe speaks {SAMMOE_API}")
    requires_sammoe: str = Field(description="PEP 440 specifier for the sammoe version, e.g. '>=0.1'")
    kind: str = Field("decoder", description=f"expert kind; supported: {', '.join(SUPPORTED_KINDS)}")
    description: str = ""
    task: TaskSpec
    backbone: BackboneSpec
    weights: WeightsRef
    router: RouterRef | None = Field(
        None, description="the expert's own router; without it a joint gate routes"
    )
    provenance: Provenance

    @field_validator("version")
    @classmethod
    def _pep440(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion as err:
            raise ValueError(f"not a PEP 440 version: {value!r}") from err
        return value

    @field_validator("requires_sammoe")
    @classmethod
    def _specifier(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier as err:
            raise ValueError(f"not a PEP 440 specifier: {value!r}") from err
        return value

    @classmethod
    def parse(cls, data: Any, *, source: str = "manifest") -> ExpertManifest:
        """Validate a dict. Raises IncompatiblePlugin for another API or kind, PluginError otherwise."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise PluginError(
                f"{source} is of type {type(data).__name__}, expected an ExpertManifest or a dict"
            )
        api = data.get("sammoe_api")
        if isinstance(api, int) and api != SAMMOE_API:
            raise IncompatiblePlugin(f"{source} targets sammoe_api {api}, this sammoe speaks {SAMMOE_API}")
        kind = data.get("kind", "decoder")
        if isinstance(kind, str) and kind not in SUPPORTED_KINDS:
            raise IncompatiblePlugin(
                f"{source} has kind {kind!r}, this sammoe supports {', '.join(SUPPORTED_KINDS)}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise PluginError(f"{source} is invalid: {validation_summary(err)}") from None

    @classmethod
    def from_package(cls, package: str, resource: str = "manifest.json") -> ExpertManifest:
        """Read and validate the JSON manifest shipped as package data (what `sammoe experts package`
        emits)."""
        source = f"{package}/{resource}"
        try:
            text = resources.files(package).joinpath(resource).read_text(encoding="utf-8")
        except (FileNotFoundError, ModuleNotFoundError, OSError) as err:
            raise PluginError(f"cannot read {source}: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PluginError(f"{source} is not valid JSON: {err}") from None
        return cls.parse(data, source=source)

    def incompatibility(self, sammoe_version: str) -> str | None:
        """Why this manifest cannot run on this sammoe (None when it can)."""
        if self.sammoe_api != SAMMOE_API:
            return f"targets sammoe_api {self.sammoe_api}, this sammoe speaks {SAMMOE_API}"
        if self.kind not in SUPPORTED_KINDS:
            return f"kind {self.kind!r} is not supported (supported: {', '.join(SUPPORTED_KINDS)})"
        if not SpecifierSet(self.requires_sammoe).contains(sammoe_version, prereleases=True):
            return f"requires sammoe{self.requires_sammoe}, installed is {sammoe_version}"
        return None


def validation_summary(err: ValidationError, limit: int = 3) -> str:
    """A pydantic error as one line: `field.path: message; ...`."""
    parts = []
    for item in err.errors()[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{where}: {item['msg']}")
    more = len(err.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
