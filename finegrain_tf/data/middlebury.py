"""Middlebury 2014 stereo scenes as positive pairs (seed 004 §5.2).

Layout (as distributed by Scharstein et al.): one folder per scene,

  <root>/<scene>/im0.png     left view
  <root>/<scene>/im1.png     right view
  <root>/<scene>/im1E.png    right view, different exposure   (optional)
  <root>/<scene>/im1L.png    right view, different lighting   (optional)

Positive pairs: "lr" takes (im0, im1) of each scene (P_stereoLR), "exposure" (im1, im1E), "lighting"
(im1, im1L), "all" every pair among the scene's available views (the LREL sets of Table 5.2).
Negative pairs come from the geo-tagged set: photos within `radius_m` of each other taken by the same
or by different users, as §5.2 does, one per positive.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np

from finegrain_tf.data.geo import GeoPhotos
from finegrain_tf.sampling.geo import geo_pairs

VIEWS = {"left": "im0.png", "right": "im1.png", "exposure": "im1E.png", "lighting": "im1L.png"}
POSITIVE_KINDS = ("lr", "exposure", "lighting", "all")
NEGATIVE_USERS = ("same", "different")


@dataclasses.dataclass
class MiddleburyPairs:
    """Image path pairs with labels (1 = the two views of one scene, 0 = two geo photos)."""
    left: list
    right: list
    labels: np.ndarray  # int64 [P]
    scenes: list  # scene of each positive pair ("" for negatives)


def scan_scenes(root: str) -> dict:
    """{scene: {view: path}} for every scene folder of `root` holding at least im0.png and im1.png."""
    if not root or not os.path.isdir(root):
        raise ValueError(f"Middlebury root {root!r} does not exist or is not a directory")
    scenes = {}
    for scene in sorted(os.listdir(root)):
        folder = os.path.join(root, scene)
        if not os.path.isdir(folder) or scene.startswith("."):
            continue
        views = {view: os.path.join(folder, name) for view, name in VIEWS.items()
                 if os.path.isfile(os.path.join(folder, name))}
        if "left" in views and "right" in views:
            scenes[scene] = views
    if not scenes:
        raise ValueError(f"Middlebury root {root!r} has no scene folder with im0.png and im1.png")
    return scenes


def positive_pairs(scenes: dict, kind: str = "lr") -> list[tuple[str, str, str]]:
    """(scene, path, path) positive pairs of one kind (see the module docstring)."""
    if kind not in POSITIVE_KINDS:
        raise ValueError(f"kind must be one of {list(POSITIVE_KINDS)}, got {kind!r}")
    pairs = []
    for scene, views in scenes.items():
        if kind == "lr":
            pairs.append((scene, views["left"], views["right"]))
        elif kind in ("exposure", "lighting"):
            if kind in views:
                pairs.append((scene, views["right"], views[kind]))
        else:
            pairs.extend((scene, a, b) for a, b in itertools.combinations(list(views.values()), 2))
    if not pairs:
        raise ValueError(f"no scene has the views for kind={kind!r}")
    return pairs


def middlebury_pairs(root: str, photos: GeoPhotos, kind: str = "lr", negative_user: str = "different",
                     radius_m: float = 10.0, seed: int = 0) -> MiddleburyPairs:
    """Balanced pairs: Middlebury positives and geo-set negatives (near photos, same/different user)."""
    if negative_user not in NEGATIVE_USERS:
        raise ValueError(f"negative_user must be one of {list(NEGATIVE_USERS)}, got {negative_user!r}")
    if photos.paths is None:
        raise ValueError("the geo photos must be files (a manifest) to pair with Middlebury images")
    positives = positive_pairs(scan_scenes(root), kind)
    near = geo_pairs(photos.latitudes, photos.longitudes, radius_m)
    same = photos.users[near[:, 0]] == photos.users[near[:, 1]]
    near = near[same if negative_user == "same" else ~same]
    if len(near) == 0:
        raise ValueError(f"the geo set has no photos within {radius_m} m taken by {negative_user} users")
    rng = np.random.default_rng(seed)
    chosen = near[rng.choice(len(near), len(positives), replace=len(near) < len(positives))]
    left = [a for _, a, _ in positives] + [photos.paths[i] for i in chosen[:, 0]]
    right = [b for _, _, b in positives] + [photos.paths[j] for j in chosen[:, 1]]
    labels = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(chosen), np.int64)])
    scenes = [s for s, _, _ in positives] + [""] * len(chosen)
    return MiddleburyPairs(left, right, labels, scenes)
