"""The preprocessing cache: each case stored once on the preprocessing grid, so training never waits on
resampling.

``PreprocessCache(cache_dir, preprocessor)`` stores a case as ``.npy`` (image float32, label uint8/uint16)
beside a ``meta.json`` (affines, shapes, per-class bounding boxes). The entry's key is a hash of the source
files' contents and of the preprocessing parameters, so a changed file or spacing gets a new entry. File
hashes are memoised by (size, mtime), so a warm epoch only stats the sources and memory-maps the arrays.
An entry is written into a temp folder and renamed into place, so concurrent workers never see half of one.
``load(case, allowed_values=None) -> CachedCase``; ``key(case)``; ``entries()``; ``label_values(path)``
(memoised by content). ``cache_dir=None``: no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sammoe.data.datasets import Case
from sammoe.data.io import check_label_values, label_values, read_image, read_label
from sammoe.data.preprocess import Preprocessor, Resampled
from sammoe.files import sha256_file, write_text

CACHE_VERSION = 1


def _sha256_source(path: Path) -> str:
    """sha256 of a source file, or of a folder's files (a DICOM series) by name and content."""
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.name.encode() + sha256_file(file).encode())
    return digest.hexdigest()


@dataclass
class CachedCase:
    resampled: Resampled
    bboxes: dict[int, tuple[np.ndarray, np.ndarray, int]]


class PreprocessCache:
    """Disk cache of resampled RAS volumes, keyed by source-file hashes + preprocessing parameters."""

    def __init__(self, cache_dir: str | Path | None, preprocessor: Preprocessor) -> None:
        self.root = Path(cache_dir) if cache_dir is not None else None
        self.pre = preprocessor

    # ------------------------------------------------------------------------------------------ hashing
    def file_hash(self, path: Path) -> str:
        """Content hash, memoised on (size, mtime_ns) in ``<cache>/hashes``."""
        path = Path(path)
        if self.root is None:
            return _sha256_source(path)
        stat = path.stat()
        stamp = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        memo = self.root / "hashes" / (hashlib.sha1(stamp["path"].encode()).hexdigest() + ".json")
        try:
            known = json.loads(memo.read_text())
            if all(known.get(k) == v for k, v in stamp.items()):
                return known["sha256"]
        except (OSError, ValueError):
            pass
        digest = _sha256_source(path)
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_text(memo, json.dumps({**stamp, "sha256": digest}))
        return digest

    def key(self, case: Case) -> tuple[str, dict]:
        source = {
            "image": self.file_hash(case.image),
            "label": self.file_hash(case.label) if case.label is not None else None,
            "channel": case.channel,
        }
        params = {"version": CACHE_VERSION, **self.pre.params()}
        blob = json.dumps({"source": source, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32], {"source": source, "params": params}

    def label_values(self, path: Path) -> list[int]:
        """The non-zero values of the label map ``path``, read with ``read_label`` (which refuses a float map
        holding non-integer values, negative values or values above 65535) and memoised by content hash in
        ``<cache>/labels``, so checking every case's label costs one read per label file, ever."""
        if self.root is None:
            return label_values(read_label(path))
        memo = self.root / "labels" / f"{self.file_hash(Path(path))}.json"
        try:
            return [int(v) for v in json.loads(memo.read_text())["values"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        values = label_values(read_label(path))
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_text(memo, json.dumps({"label": str(path), "values": values}))
        return values

    # --------------------------------------------------------------------------------------------- load
    def _compute(self, case: Case, allowed_values: Sequence[int] | None) -> tuple[Resampled, dict]:
        image = read_image(case.image, channel=case.channel)
        label = None
        if case.label is not None:
            label = read_label(case.label, like=image)
            if allowed_values is not None:
                check_label_values(label, allowed_values, source=f"the labels of dataset {case.dataset}")
        res = self.pre.resample(image, label)
        boxes = {}
        if res.label is not None:
            from scipy import ndimage

            # one pass for every class's bounding box, one for the voxel counts
            counts = np.bincount(res.label.reshape(-1))
            for value, slices in enumerate(ndimage.find_objects(res.label), start=1):
                if slices is not None:
                    lo = np.array([s.start for s in slices], dtype=np.int64)
                    hi = np.array([s.stop for s in slices], dtype=np.int64)
                    boxes[value] = (lo, hi, int(counts[value]))
        return res, boxes

    def load(self, case: Case, allowed_values: Sequence[int] | None = None) -> CachedCase:
        if self.root is None:
            res, boxes = self._compute(case, allowed_values)
            return CachedCase(res, boxes)
        key, info = self.key(case)
        entry = self.root / "entries" / key
        meta_path = entry / "meta.json"
        if not meta_path.exists():
            res, boxes = self._compute(case, allowed_values)
            tmp = self.root / "entries" / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.mkdir(parents=True)
            np.save(tmp / "image.npy", res.image)
            if res.label is not None:
                np.save(tmp / "label.npy", res.label)
            meta = {
                **info,
                "case": {
                    "dataset": case.dataset,
                    "case_id": case.case_id,
                    "image": str(case.image),
                    "label": str(case.label) if case.label else None,
                },
                "affine": res.affine.tolist(),
                "orig_affine": res.orig_affine.tolist(),
                "orig_shape": list(res.orig_shape),
                "bboxes": {str(v): [lo.tolist(), hi.tolist(), n] for v, (lo, hi, n) in boxes.items()},
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.replace(tmp, entry)
            except OSError:  # another worker finished the same entry first
                shutil.rmtree(tmp, ignore_errors=True)
            return CachedCase(res, boxes)
        meta = json.loads(meta_path.read_text())
        label_path = entry / "label.npy"
        res = Resampled(
            image=np.load(entry / "image.npy", mmap_mode="r"),
            affine=np.asarray(meta["affine"]),
            orig_affine=np.asarray(meta["orig_affine"]),
            orig_shape=tuple(meta["orig_shape"]),
            label=np.load(label_path, mmap_mode="r") if label_path.exists() else None,
            path=case.image,
        )
        boxes = {
            int(v): (np.asarray(lo), np.asarray(hi), int(n)) for v, (lo, hi, n) in meta["bboxes"].items()
        }
        return CachedCase(res, boxes)

    def entries(self) -> list[dict]:
        """The manifest: every cache entry's ``meta.json`` (plus its key)."""
        if self.root is None or not (self.root / "entries").exists():
            return []
        out = []
        for meta in sorted((self.root / "entries").glob("*/meta.json")):
            out.append({"key": meta.parent.name, **json.loads(meta.read_text())})
        return out
