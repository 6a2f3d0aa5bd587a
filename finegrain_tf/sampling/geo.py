"""Weak labels from where photos were taken: geo/time pair sampling (seed 004 §5.1.1).

Two photos taken a few metres apart are a positive (similar) pair, two photos kilometres apart a
negative one. Coordinates become unit 3-D vectors, so great-circle neighbourhoods are Euclidean balls
(chord = 2 sin(d / 2R)) that `scipy.spatial.cKDTree` answers exactly, with no special case at the
antimeridian or the poles; candidates are then confirmed with the haversine distance so that the
answer is exactly "haversine <= radius".

- `geo_pairs(lat, lon, radius_m)`: every pair (i < j) within `radius_m`, sorted.
- `sample_geo_pairs(...)`: the thesis's pair sets (Table 5.2): positives within r, negatives beyond R
  (or in a ring [a, b] -- the hard negatives the thesis found intractable -- or near pairs that fail
  the positive's user rule), time windows, same/different user, time-lapse pairs, duplicate removal,
  balanced positives / negatives and a count after every filter.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from absl import logging
from scipy.spatial import cKDTree

from finegrain_tf.utils import checks

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), the one the haversine distances use
USER_RULES = ("any", "same", "different")
NEGATIVE_KINDS = ("far", "ring", "near")
# The KD-tree's ball is widened by this relative slack before the exact haversine check, so a pair
# that haversine puts on the boundary is never lost to rounding in the chord.
_CHORD_SLACK = 1e-9


def _coordinates(latitudes, longitudes) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(latitudes, dtype=np.float64).reshape(-1)
    lon = np.asarray(longitudes, dtype=np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise ValueError(f"latitudes ({lat.size}) and longitudes ({lon.size}) differ in length")
    for name, values, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > limit))
        if bad.size:
            raise ValueError(f"{name} at index {int(bad[0])} is {float(values[bad[0]])!r}; "
                             f"expected a finite value in [-{limit:g}, {limit:g}]")
    return lat, lon


def unit_vectors(latitudes, longitudes) -> np.ndarray:
    """Degrees -> points on the unit sphere [N, 3] (float64)."""
    lat, lon = np.deg2rad(latitudes), np.deg2rad(longitudes)
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasts)."""
    lat1, lon1, lat2, lon2 = (np.deg2rad(np.asarray(v, np.float64)) for v in (lat1, lon1, lat2, lon2))
    a = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def chord_length(radius_m: float) -> float:
    """Straight-line distance on the unit sphere between two points `radius_m` apart on the surface."""
    angle = min(radius_m / EARTH_RADIUS_M, np.pi)
    return 2.0 * np.sin(angle / 2.0)


def _pairs_within(lat: np.ndarray, lon: np.ndarray, radius_m: float, tree: Optional[cKDTree] = None):
    """(pairs [P, 2] with i < j sorted by i then j, haversine distances [P]) for distance <= radius_m."""
    tree = tree if tree is not None else cKDTree(unit_vectors(lat, lon))
    query = chord_length(radius_m) * (1.0 + _CHORD_SLACK) + 1e-15
    pairs = tree.query_pairs(query, output_type="ndarray").astype(np.int64, copy=False)
    if pairs.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.float64)
    dist = haversine_m(lat[pairs[:, 0]], lon[pairs[:, 0]], lat[pairs[:, 1]], lon[pairs[:, 1]])
    keep = dist <= radius_m
    pairs, dist = pairs[keep], dist[keep]
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], dist[order]


def geo_pairs(latitudes, longitudes, radius_m: float) -> np.ndarray:
    """Every pair (i, j), i < j, whose haversine distance is <= `radius_m` metres.

    Args:
      latitudes, longitudes: [N] degrees (latitude in [-90, 90], longitude in [-180, 180]).
      radius_m: the radius in metres (>= 0; 0 finds photos at identical coordinates).

    Returns:
      int64 array [P, 2], sorted by i then j. Exact: the KD-tree's ball is only a prefilter and every
      candidate is confirmed with `haversine_m` (Earth radius 6 371 008.8 m).
    """
    lat, lon = _coordinates(latitudes, longitudes)
    radius = checks.in_range(radius_m, "radius_m", 0.0)
    return _pairs_within(lat, lon, radius)[0]


# --------------------------------------------------------------------------------------------------
# Pair sets of §5.1.1


@dataclasses.dataclass(frozen=True)
class TimeWindow:
    """Which photos a pair set draws from (Table 5.2: "Jun 2015", "Jan 2013 - Dec 2015").

    years / months: keep photos taken in one of these calendar years / months (1-12); empty = any.
    start / end: ISO dates (or datetimes), start inclusive and end exclusive; "" = open.
    Timestamps are seconds since the Unix epoch, UTC.
    """
    years: tuple = ()
    months: tuple = ()
    start: str = ""
    end: str = ""

    def __post_init__(self):
        for month in self.months:
            checks.in_range(month, "TimeWindow month", 1, 12)
        for year in self.years:
            checks.positive_int(year, "TimeWindow year")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value:
                try:
                    np.datetime64(value, "s")
                except ValueError:
                    raise ValueError(f"TimeWindow {name}={value!r} is not an ISO date") from None

    @property
    def is_open(self) -> bool:
        return not (self.years or self.months or self.start or self.end)

    def mask(self, timestamps_s: np.ndarray) -> np.ndarray:
        when = np.asarray(timestamps_s, np.float64).astype("int64").astype("datetime64[s]")
        keep = np.ones(when.shape, bool)
        if self.years:
            keep &= np.isin(when.astype("datetime64[Y]").astype(np.int64) + 1970, self.years)
        if self.months:
            keep &= np.isin(when.astype("datetime64[M]").astype(np.int64) % 12 + 1, self.months)
        if self.start:
            keep &= when >= np.datetime64(self.start, "s")
        if self.end:
            keep &= when < np.datetime64(self.end, "s")
        return keep


@dataclasses.dataclass
class GeoPairSet:
    """Pairs of photo indices with labels (1 = positive) and their great-circle distances.

    Positive i and negative i share their first photo (the anchor p), so (p, p+, p-) triplets can be
    formed for fuzziness statistics. `counts` holds the number left after each filter, in order.
    """
    left: np.ndarray  # int64 [P]
    right: np.ndarray  # int64 [P]
    labels: np.ndarray  # int64 [P]
    distances_m: np.ndarray  # float64 [P]
    counts: dict

    def __len__(self) -> int:
        return int(self.left.size)


def _as_array(values, n: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have one entry per photo ({n}), got shape {array.shape}")
    return array


def _user_rule(rule: str, users: Optional[np.ndarray], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    if rule == "any":
        return np.ones(i.shape, bool)
    same = users[i] == users[j]
    return same if rule == "same" else ~same


def _pick_partners(anchors: np.ndarray, pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each anchor, a random partner among `pairs` (undirected) touching it; -1 where none."""
    ends = np.concatenate([pairs, pairs[:, ::-1]])
    ends = ends[np.argsort(ends[:, 0], kind="stable")]
    firsts, starts, sizes = np.unique(ends[:, 0], return_index=True, return_counts=True)
    partners = np.full(anchors.shape, -1, np.int64)
    if firsts.size == 0:
        return partners
    slot = np.minimum(np.searchsorted(firsts, anchors), firsts.size - 1)
    found = firsts[slot] == anchors
    offset = (rng.random(int(found.sum())) * sizes[slot[found]]).astype(np.int64)
    partners[found] = ends[starts[slot[found]] + offset, 1]
    return partners


def sample_geo_pairs(latitudes, longitudes, *, timestamps=None, users=None, duplicate_keys=None,
                     positive_radius_m: float = 10.0, location_error_m: float = 10.0,
                     negatives: str = "far", negative_min_m: float = 2000.0,
                     ring_m: Sequence[float] = (30.0, 100.0), positive_user: str = "any",
                     negative_user: str = "any", max_time_gap_s: float = 0.0,
                     timelapse_min_gap_s: float = 0.0, window: TimeWindow = TimeWindow(),
                     max_positives: int = 0, seed: int = 0) -> GeoPairSet:
    """A balanced pair set of §5.1.1 (one negative per positive, sharing its anchor).

    Args:
      latitudes, longitudes: [N] degrees; timestamps: [N] seconds since the epoch (needed by time
        windows and time rules); users: [N] user ids (needed by user rules and time-lapse pairs);
        duplicate_keys: [N] identical keys mark duplicate photos (file digest or perceptual hash),
        of which only the first is kept.
      positive_radius_m: r, the ball query of positives (the thesis: 1 m or 10 m).
      location_error_m: e, the GPS error of each photo (thesis: 10 m). A positive is then at most
        r + 2e apart (P_21 / P_30), and "far" negatives are drawn beyond negative_min_m + 2e so that
        they are truly beyond negative_min_m (the thesis's 2020 m for R = 2000 m).
      negatives: "far" (beyond R), "ring" (measured distance in (a, b], hard negatives) or "near"
        (within r but failing the positive's user rule, the "user" rows of Table 5.2).
      positive_user / negative_user: "any", "same" or "different" user for positives / negatives.
      max_time_gap_s: > 0 keeps positives taken at most this far apart ("within 2 hours").
      timelapse_min_gap_s: > 0 makes positives time-lapse pairs: same user, same place, taken at least
        this far apart (§5.1.1 "Other").
      window: the photos a set draws from (year, month, date range).
      max_positives: > 0 subsamples the positives to at most this many before drawing negatives.
      seed: the random draws (subsampling, negatives) depend only on it.
    """
    lat, lon = _coordinates(latitudes, longitudes)
    n = lat.size
    r = checks.in_range(positive_radius_m, "positive_radius_m", 0.0)
    error = checks.in_range(location_error_m, "location_error_m", 0.0)
    checks.one_of(negatives, "negatives", NEGATIVE_KINDS)
    checks.one_of(positive_user, "positive_user", USER_RULES)
    checks.one_of(negative_user, "negative_user", USER_RULES)
    far = checks.in_range(negative_min_m, "negative_min_m", 0.0)
    gap = checks.in_range(max_time_gap_s, "max_time_gap_s", 0.0)
    lapse = checks.in_range(timelapse_min_gap_s, "timelapse_min_gap_s", 0.0)
    max_positives = checks.non_negative_int(max_positives, "max_positives")
    ring = tuple(ring_m)
    if negatives == "ring":
        if len(ring) != 2 or not 0 <= checks.finite_float(ring[0], "ring_m[0]") < \
                checks.finite_float(ring[1], "ring_m[1]"):
            raise ValueError(f"ring_m must be (a, b) with 0 <= a < b metres, got {ring_m!r}")
    if negatives == "near" and positive_user == negative_user == "any":
        raise ValueError("negatives='near' needs a user rule that separates them from positives "
                         "(e.g. positive_user='same', negative_user='different')")
    needs_time = not window.is_open or gap > 0 or lapse > 0
    if needs_time and timestamps is None:
        raise ValueError("timestamps are required for a time window, max_time_gap_s or time-lapse pairs")
    needs_users = positive_user != "any" or negative_user != "any" or lapse > 0
    if needs_users and users is None:
        raise ValueError("users are required for user rules and time-lapse pairs")
    times = None if timestamps is None else _as_array(timestamps, n, "timestamps").astype(np.float64)
    if times is not None and not np.all(np.isfinite(times)):
        bad = int(np.flatnonzero(~np.isfinite(times))[0])
        raise ValueError(f"timestamp at index {bad} is {float(times[bad])!r}")
    user_ids = None if users is None else _as_array(users, n, "users")
    rng = np.random.default_rng(seed)
    counts = {"photos": n}

    keep = np.ones(n, bool) if window.is_open else window.mask(times)
    counts["photos_in_window"] = int(keep.sum())
    if duplicate_keys is not None:
        keys = _as_array(duplicate_keys, n, "duplicate_keys")
        kept = np.flatnonzero(keep)
        _, first = np.unique(keys[kept], return_index=True)
        unique = np.zeros(n, bool)
        unique[kept[first]] = True
        counts["duplicates_dropped"] = int(keep.sum() - unique.sum())
        keep = unique
    photos = np.flatnonzero(keep)
    counts["photos_used"] = int(photos.size)
    tree = cKDTree(unit_vectors(lat[photos], lon[photos])) if photos.size else None

    def within(radius):
        if tree is None:
            return np.zeros((0, 2), np.int64), np.zeros((0,), np.float64)
        local, dist = _pairs_within(lat[photos], lon[photos], radius, tree)
        return photos[local], dist

    near, near_dist = within(r)
    counts["positive_candidates"] = int(len(near))
    pos = np.ones(len(near), bool)
    i, j = near[:, 0], near[:, 1]
    if positive_user != "any":
        pos &= _user_rule(positive_user, user_ids, i, j)
        counts[f"positives_{positive_user}_user"] = int(pos.sum())
    if gap > 0:
        pos &= np.abs(times[i] - times[j]) <= gap
        counts["positives_within_time_gap"] = int(pos.sum())
    if lapse > 0:
        pos &= (user_ids[i] == user_ids[j]) & (np.abs(times[i] - times[j]) >= lapse)
        counts["positives_timelapse"] = int(pos.sum())
    positives, pos_dist = near[pos], near_dist[pos]
    if max_positives and len(positives) > max_positives:
        chosen = np.sort(rng.choice(len(positives), max_positives, replace=False))
        positives, pos_dist = positives[chosen], pos_dist[chosen]
        counts["positives_subsampled"] = int(len(positives))
    # A random orientation per pair, so that either photo may be the anchor p.
    flip = rng.random(len(positives)) < 0.5
    positives = np.where(flip[:, None], positives[:, ::-1], positives)
    anchors = positives[:, 0]

    if negatives == "far":
        partners = _far_partners(anchors, photos, lat, lon, far + 2 * error, negative_user, user_ids, rng)
    else:
        if negatives == "ring":
            ring_pairs, ring_dist = within(ring[1])
            candidates = ring_pairs[ring_dist > ring[0]]
        else:
            candidates = near[~pos]
        rule = _user_rule(negative_user, user_ids, candidates[:, 0], candidates[:, 1]) \
            if len(candidates) else np.zeros((0,), bool)
        candidates = candidates[rule]
        counts["negative_candidates"] = int(len(candidates))
        partners = _pick_partners(anchors, candidates, rng)
    matched = partners >= 0
    positives, pos_dist, partners = positives[matched], pos_dist[matched], partners[matched]
    neg_dist = haversine_m(lat[positives[:, 0]], lon[positives[:, 0]], lat[partners], lon[partners])
    counts["positives"] = counts["negatives"] = int(matched.sum())
    left = np.concatenate([positives[:, 0], positives[:, 0]])
    right = np.concatenate([positives[:, 1], partners])
    labels = np.concatenate([np.ones(len(partners), np.int64), np.zeros(len(partners), np.int64)])
    dist = np.concatenate([pos_dist, neg_dist])
    order = rng.permutation(left.size)
    logging.info("geo pairs: %s", counts)
    return GeoPairSet(left[order], right[order], labels[order], dist[order], counts)


def _far_partners(anchors, photos, lat, lon, min_m, user_rule, user_ids, rng, rounds: int = 32):
    """For each anchor a random photo farther than `min_m` (rejection sampling); -1 where none found."""
    partners = np.full(anchors.shape, -1, np.int64)
    todo = np.arange(anchors.size)
    for _ in range(rounds):
        if todo.size == 0 or photos.size == 0:
            break
        guess = photos[rng.integers(0, photos.size, todo.size)]
        a = anchors[todo]
        ok = haversine_m(lat[a], lon[a], lat[guess], lon[guess]) > min_m
        ok &= _user_rule(user_rule, user_ids, a, guess)
        partners[todo[ok]] = guess[ok]
        todo = todo[~ok]
    return partners
