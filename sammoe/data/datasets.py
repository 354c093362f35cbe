"""One case index (pydantic) over the dataset layouts users already have on disk.

Layouts
-------
- ``nnunet``: nnU-Net v2 raw dataset: ``dataset.json`` (``labels`` name -> int, ``channel_names``,
  ``file_ending``), ``imagesTr/<case>_0000<ending>``, ``labelsTr/<case><ending>``, optional ``imagesTs``
  (+ ``labelsTs``). Region labels (a list of values) are skipped: a class is one label value.
- ``msd``: Medical Segmentation Decathlon: ``dataset.json`` (``labels`` "int" -> name, ``modality``,
  ``training`` [{image, label}], ``test`` [paths]); multi-modal images are 4D, ``channel`` picks one.
- ``sammed3d``: SAM-Med3D's per-class binary layout ``<root>/<class>/<modality>_<dataset>/imagesTr|labelsTr``
  (``labelsVal``/``labelsTs`` -> test split); each label file holds one class with value 1.

A class is ``ClassRef(dataset, value, name)``: multi-class label maps become binary targets
``label == value``.

Public API
----------
- ``ClassRef``, ``Case``, ``DatasetInfo``, ``CaseIndex`` (pydantic models).
- ``index_dataset(root, layout="auto", channel=0) -> CaseIndex``;
  ``build_index(roots, channel=0) -> CaseIndex``.
- ``CaseIndex.classes()``, ``CaseIndex.targets(classes=None, datasets=None, split="train")`` ->
  list of ``(Case, ClassRef)``, ``CaseIndex.dataset(name)``.
Missing files and unreadable/unknown ``dataset.json`` raise ``DataError`` naming the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sammoe.errors import DataError

Layout = Literal["nnunet", "msd", "sammed3d"]


class ClassRef(BaseModel):
    """One segmentation target: label ``value`` named ``name`` in dataset ``dataset``."""

    model_config = ConfigDict(frozen=True)
    dataset: str
    value: int = Field(ge=1)
    name: str

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


class Case(BaseModel):
    """One image (and label) on disk. ``classes``: the targets its label map may contain."""

    dataset: str
    case_id: str
    image: Path
    label: Path | None = None
    split: Literal["train", "test"] = "train"
    channel: int | None = None
    modality: str = ""
    classes: tuple[ClassRef, ...] = ()


class DatasetInfo(BaseModel):
    name: str
    root: Path
    layout: Layout
    modality: str = ""
    labels: dict[str, int] = Field(default_factory=dict)  # name -> value, background excluded
    regions: list[int] = Field(default_factory=list)  # values named only inside nnU-Net region lists

    @property
    def declared(self) -> list[int]:
        """Every non-zero value dataset.json declares a label map may hold: the classes' values and those of
        nnU-Net regions (``"tumor": [1, 2]``)."""
        return sorted(set(self.labels.values()) | set(self.regions))


class CaseIndex(BaseModel):
    datasets: list[DatasetInfo] = Field(default_factory=list)
    cases: list[Case] = Field(default_factory=list)

    def dataset(self, name: str) -> DatasetInfo:
        for info in self.datasets:
            if info.name == name:
                return info
        raise KeyError(name)

    def classes(self) -> list[ClassRef]:
        seen: dict[tuple, ClassRef] = {}
        for case in self.cases:
            for ref in case.classes:
                seen.setdefault((ref.dataset, ref.value, ref.name), ref)
        return list(seen.values())

    def targets(
        self,
        classes: Sequence[str] | None = None,
        datasets: Sequence[str] | None = None,
        split: str | None = "train",
    ) -> list[tuple[Case, ClassRef]]:
        """(case, class) pairs. ``classes`` match a class name or ``dataset/name``; unknown names raise."""
        if classes is not None:
            known = {r.name for r in self.classes()} | {r.key for r in self.classes()}
            missing = [c for c in classes if c not in known]
            if missing:
                raise DataError(f"classes {missing} are not in the dataset index; available: {sorted(known)}")
        pairs = []
        for case in self.cases:
            if split is not None and case.split != split:
                continue
            if datasets is not None and case.dataset not in datasets:
                continue
            for ref in case.classes:
                if classes is None or ref.name in classes or ref.key in classes:
                    pairs.append((case, ref))
        return pairs


# --------------------------------------------------------------------------------------- dataset.json models
class _NnUNetJson(BaseModel):
    model_config = ConfigDict(extra="allow")
    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    file_ending: str
    numTraining: int | None = None


class _MsdPair(BaseModel):
    image: str
    label: str


class _MsdJson(BaseModel):
    model_config = ConfigDict(extra="allow")
    labels: dict[str, str]
    modality: dict[str, str] = Field(default_factory=dict)
    training: list[_MsdPair] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} is missing; add the file or remove the case from the dataset")
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot parse JSON ({exc}); fix or regenerate dataset.json") from None


def _load_nnunet(root: Path, meta: _NnUNetJson, channel: int) -> tuple[DatasetInfo, list[Case]]:
    name = root.name
    labels = {k: int(v) for k, v in meta.labels.items() if isinstance(v, int) and v != 0}
    regions = sorted({int(v) for r in meta.labels.values() if isinstance(r, list) for v in r} - {0})
    modality = meta.channel_names.get(str(channel), "")
    if str(channel) not in meta.channel_names:
        raise DataError(
            f"{root / 'dataset.json'}: channel {channel} not in channel_names {meta.channel_names}; "
            "pick another"
        )
    refs = tuple(ClassRef(dataset=name, value=v, name=k) for k, v in labels.items())
    ending = meta.file_ending
    cases = []
    for split, images, labels_dir in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        if split == "train":
            _require(root / labels_dir, "labelsTr folder")
        img_dir = root / images
        if not img_dir.exists():
            continue
        ids = sorted(p.name[: -len(f"_0000{ending}")] for p in img_dir.glob(f"*_0000{ending}"))
        if split == "train":
            label_ids = sorted(p.name[: -len(ending)] for p in (root / labels_dir).glob(f"*{ending}"))
            for lid in label_ids:
                if lid not in ids:
                    _require(img_dir / f"{lid}_{channel:04d}{ending}", f"image for label {lid}")
        for cid in ids:
            image = _require(img_dir / f"{cid}_{channel:04d}{ending}", f"channel {channel} image")
            label = root / labels_dir / f"{cid}{ending}"
            if split == "train":
                _require(label, "label (labelsTr/<case>" + ending + ")")
            cases.append(
                Case(
                    dataset=name,
                    case_id=cid,
                    image=image,
                    label=label if label.exists() else None,
                    split=split,
                    modality=modality,
                    classes=refs,
                )
            )
    info = DatasetInfo(
        name=name, root=root, layout="nnunet", modality=modality, labels=labels, regions=regions
    )
    return info, cases


def _load_msd(root: Path, meta: _MsdJson, channel: int) -> tuple[DatasetInfo, list[Case]]:
    name = root.name
    try:
        labels = {v: int(k) for k, v in meta.labels.items() if int(k) != 0}
    except ValueError:
        raise DataError(
            f'{root / "dataset.json"}: MSD labels must map "int" -> name; fix dataset.json'
        ) from None
    refs = tuple(ClassRef(dataset=name, value=v, name=k) for k, v in labels.items())
    multi = len(meta.modality) > 1
    modality = meta.modality.get(str(channel), meta.modality.get("0", ""))
    cases = []
    for pair in meta.training:
        image = _require((root / pair.image).resolve(), "training image")
        label = _require((root / pair.label).resolve(), "training label")
        cid = image.name.split(".nii")[0]
        cases.append(
            Case(
                dataset=name,
                case_id=cid,
                image=image,
                label=label,
                split="train",
                channel=channel if multi else None,
                modality=modality,
                classes=refs,
            )
        )
    for rel in meta.test:
        image = _require((root / rel).resolve(), "test image")
        cid = image.name.split(".nii")[0]
        label = root / "labelsTs" / image.name
        cases.append(
            Case(
                dataset=name,
                case_id=cid,
                image=image,
                label=label if label.exists() else None,
                split="test",
                channel=channel if multi else None,
                modality=modality,
                classes=refs,
            )
        )
    return DatasetInfo(name=name, root=root, layout="msd", modality=modality, labels=labels), cases


def _load_sammed3d(root: Path) -> tuple[list[DatasetInfo], list[Case]]:
    infos: dict[str, DatasetInfo] = {}
    cases = []
    for label_dir in sorted(root.glob("*/*/labels*")):
        split = "train" if label_dir.name == "labelsTr" else "test"
        if label_dir.name not in ("labelsTr", "labelsVal", "labelsTs") or not label_dir.is_dir():
            continue
        cls, ds = label_dir.parent.parent.name, label_dir.parent.name
        modality = ds.split("_", 1)[0] if "_" in ds else ""
        info = infos.setdefault(ds, DatasetInfo(name=ds, root=root, layout="sammed3d", modality=modality))
        info.labels.setdefault(cls, 1)
        ref = ClassRef(dataset=ds, value=1, name=cls)
        image_dir = label_dir.parent / label_dir.name.replace("labels", "images")
        for label in sorted(label_dir.glob("*.nii*")):
            image = _require(
                image_dir / label.name, f"image for {label.name} ({image_dir.name}/{label.name})"
            )
            cid = f"{cls}/{label.name.split('.nii')[0]}"
            cases.append(
                Case(
                    dataset=ds,
                    case_id=cid,
                    image=image,
                    label=label,
                    split=split,
                    modality=modality,
                    classes=(ref,),
                )
            )
    return list(infos.values()), cases


def detect_layout(root: Path) -> Layout:
    meta_path = root / "dataset.json"
    if meta_path.exists():
        meta = _read_json(meta_path)
        labels = meta.get("labels", {})
        if "file_ending" in meta or any(not isinstance(v, str) for v in labels.values()):
            return "nnunet"
        return "msd"
    if any(root.glob("*/*/labelsTr")) or any(root.glob("*/*/labelsVal")) or any(root.glob("*/*/labelsTs")):
        return "sammed3d"
    raise DataError(
        f"{root}: not a dataset (no dataset.json and no <class>/<dataset>/labelsTr folders); point to an "
        "nnU-Net v2, MSD or SAM-Med3D dataset root"
    )


def index_dataset(root: str | Path, layout: str = "auto", channel: int = 0) -> CaseIndex:
    """Index one dataset root (layout detected unless given)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; check the path")
    kind = detect_layout(root) if layout == "auto" else layout
    if kind == "sammed3d":
        infos, cases = _load_sammed3d(root)
        return CaseIndex(datasets=infos, cases=cases)
    meta_path = root / "dataset.json"
    raw = _read_json(_require(meta_path, "dataset.json"))
    try:
        if kind == "nnunet":
            info, cases = _load_nnunet(root, _NnUNetJson.model_validate(raw), channel)
        elif kind == "msd":
            info, cases = _load_msd(root, _MsdJson.model_validate(raw), channel)
        else:
            raise DataError(f"{root}: unknown layout {layout!r}; use auto, nnunet, msd or sammed3d")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DataError(
            f"{meta_path}: not a valid {kind} dataset.json ({where}: {first['msg']}); fix the field"
        ) from None
    return CaseIndex(datasets=[info], cases=cases)


def build_index(roots: str | Path | Sequence[str | Path], channel: int = 0) -> CaseIndex:
    """Index several dataset roots into one ``CaseIndex`` (dataset names must be unique)."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    merged = CaseIndex()
    for root in roots:
        part = index_dataset(root, channel=channel)
        clash = {d.name for d in merged.datasets} & {d.name for d in part.datasets}
        if clash:
            raise DataError(
                f"{root}: dataset name(s) {sorted(clash)} already indexed; rename one dataset folder"
            )
        merged.datasets.extend(part.datasets)
        merged.cases.extend(part.cases)
    return merged
