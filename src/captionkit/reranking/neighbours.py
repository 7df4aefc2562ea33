"""The neighbour index of a run: its training images' pooled features and captions.

Training writes it into the run folder (`neighbours.safetensors`: L2-normalised pooled features
[N, D] in float16; `neighbours.json`: the images' keys and raw training captions, and the encoder
fingerprint the features came from), so consensus re-ranking can find the training images nearest
to any new image without the dataset at hand. No pickle: safetensors and JSON only.

Search is exact cosine k-NN: one matrix product of the normalised queries with every indexed image
and a top-k (timings for a COCO-sized index in `bench/bench_rerank.py --knn`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from captionkit.data.files import write_atomically, write_json_atomically
from captionkit.errors import CaptionkitError

INDEX_FEATURES, INDEX_CAPTIONS = "neighbours.safetensors", "neighbours.json"
INDEX_FORMAT = "captionkit-neighbours"


def l2_normalised(pooled: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm, as float32 [N, D] (a zero row stays zero)."""
    x = torch.as_tensor(
        np.asarray(pooled, dtype=np.float32) if isinstance(pooled, np.ndarray) else pooled.float()
    )
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def write_neighbour_index(
    run_dir: str | Path,
    pooled: np.ndarray | torch.Tensor,
    keys: Sequence[str],
    captions: Sequence[Sequence[str]],
    encoder: str | None = None,
) -> None:
    """Write the index of `pooled` [N, D] features (normalised here, stored in float16), image
    `keys` [N] and each image's raw training `captions` into `run_dir`, each file atomically.
    `encoder`: the fingerprint of the encoder the features came from."""
    run_dir = Path(run_dir)
    features = l2_normalised(pooled)
    if features.ndim != 2 or not (features.shape[0] == len(keys) == len(captions)):
        raise CaptionkitError(
            f"neighbour index: {tuple(features.shape)} features for "
            f"{len(keys)} keys and {len(captions)} caption lists"
        )
    doc = {
        "format": INDEX_FORMAT,
        "images": len(keys),
        "dim": features.shape[1],
        "encoder": encoder,
        "keys": list(map(str, keys)),
        "captions": [list(map(str, caps)) for caps in captions],
    }
    write_atomically(
        run_dir / INDEX_FEATURES, lambda tmp: save_file({"features": features.half().numpy()}, tmp)
    )
    write_json_atomically(run_dir / INDEX_CAPTIONS, doc, ensure_ascii=False)


@dataclass
class NeighbourIndex:
    """Training images of a run: normalised features, keys and raw captions, row by row."""

    features: torch.Tensor
    """[N, D] float32, unit L2 norm."""
    keys: list[str]
    captions: list[list[str]]
    encoder: str | None = None
    """Fingerprint of the encoder the features came from (None: not recorded)."""

    @staticmethod
    def exists(run_dir: str | Path) -> bool:
        return (Path(run_dir) / INDEX_CAPTIONS).is_file()

    @classmethod
    def load(cls, run_dir: str | Path) -> NeighbourIndex:
        """The index of a run folder; a missing or damaged file is an error naming it."""
        run_dir = Path(run_dir)
        doc = _read_json(run_dir / INDEX_CAPTIONS)
        path = run_dir / INDEX_FEATURES
        if not path.is_file():
            raise CaptionkitError(f"{path}: no such file (the neighbour index is incomplete)")
        try:
            features = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise CaptionkitError(f"{path}: not a neighbour index ({e})") from e
        n = len(doc["keys"])
        if features.ndim != 2 or features.shape != (n, doc["dim"]):
            raise CaptionkitError(
                f"{path}: features {list(features.shape)}, but "
                f"{run_dir / INDEX_CAPTIONS} lists {n} images of "
                f"{doc['dim']} dimensions"
            )
        if not np.isfinite(features).all():
            raise CaptionkitError(f"{path}: features that are not finite numbers")
        return cls(
            torch.from_numpy(features.astype(np.float32)),
            doc["keys"],
            doc["captions"],
            doc.get("encoder"),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def nearest(self, pooled: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` indexed images most cosine-similar to each of `pooled` [B, D]: (similarities
        [B, k], rows [B, k]), most similar first (all images when the index has fewer than k)."""
        queries = l2_normalised(pooled)
        if queries.ndim != 2 or queries.shape[1] != self.features.shape[1]:
            raise CaptionkitError(
                f"neighbour index of {self.features.shape[1]}-dimensional "
                f"features, queried with {list(queries.shape)}"
            )
        # float32 even under a caller's bf16 autocast: near neighbours are close calls.
        with torch.autocast(queries.device.type, enabled=False):
            similarity = queries @ self.features.T  # [B, N]
        top = similarity.topk(min(k, len(self)), dim=1)
        return top.values.numpy(), top.indices.numpy()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CaptionkitError(f"{path}: no such file (no neighbour index in this run)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CaptionkitError(f"{path}: cannot read the neighbour index ({e})") from e
    fields = {"keys": list, "captions": list, "dim": int}
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise CaptionkitError(f"{path}: not a captionkit neighbour index")
    for name, kind in fields.items():
        if not isinstance(doc.get(name), kind):
            raise CaptionkitError(f"{path}: '{name}' missing or not a {kind.__name__}")
    if len(doc["captions"]) != len(doc["keys"]) or not all(
        isinstance(caps, list) and caps and all(isinstance(c, str) for c in caps)
        for caps in doc["captions"]
    ):
        raise CaptionkitError(f"{path}: 'captions' must hold a non-empty list of strings per key")
    return doc


def index_training_images(
    run_dir: str | Path, store, paths: Sequence[Path], records, encoder: str | None = None
) -> None:
    """`write_neighbour_index` of training `records` (their `filename` and `captions`) whose
    images are `paths`, with their pooled features from a feature store (`FeatureStore`)."""
    rows = store.rows(list(paths))
    pooled = np.asarray(store.pooled[rows], dtype=np.float32)  # [N, D]
    write_neighbour_index(
        run_dir, pooled, [r.filename for r in records], [r.captions for r in records], encoder
    )
