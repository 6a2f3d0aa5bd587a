"""geo_pairs against a brute-force haversine loop, and the §5.1.1 pair sampler's rules."""

import math

import numpy as np
import pytest

from finegrain_tf.sampling import geo_pairs
from finegrain_tf.sampling.geo import (EARTH_RADIUS_M, TimeWindow, haversine_m, sample_geo_pairs)


def _haversine_loop(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(
        math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))


def _brute_force(lat, lon, radius):
    out = []
    for i in range(len(lat)):
        for j in range(i + 1, len(lat)):
            if _haversine_loop(lat[i], lon[i], lat[j], lon[j]) <= radius:
                out.append((i, j))
    return np.asarray(out, np.int64).reshape(-1, 2)


def _offset(lat, lon, metres_north, metres_east):
    """A point about (north, east) metres away (small offsets)."""
    dlat = metres_north / EARTH_RADIUS_M
    dlon = metres_east / (EARTH_RADIUS_M * math.cos(math.radians(lat)))
    return lat + math.degrees(dlat), ((lon + math.degrees(dlon) + 180) % 360) - 180


@pytest.mark.parametrize("radius", [0.0, 3.0, 10.0, 50.0])
def test_matches_brute_force_in_a_city(radius):
    rng = np.random.default_rng(1)
    lat = 40.75 + rng.normal(0, 2e-4, 300)
    lon = -73.98 + rng.normal(0, 2e-4, 300)
    lat[:20], lon[:20] = lat[20:40], lon[20:40]  # duplicates: identical coordinates
    all_d = haversine_m(lat[:, None], lon[:, None], lat[None], lon[None])
    assert np.abs(all_d - radius).min() > 1e-6 or radius == 0.0  # no pair on the rounding edge
    got = geo_pairs(lat, lon, radius)
    want = _brute_force(lat, lon, radius)
    np.testing.assert_array_equal(got, want)
    assert len(want) > 0


def test_antimeridian_poles_and_duplicates():
    points = [(10.0, 179.99995), (10.0, -179.99995),  # ~11 m apart across the antimeridian
              (89.99999, 0.0), (89.99999, 180.0),  # ~2.2 m apart across the pole
              (90.0, 45.0), (90.0, -120.0),  # the pole itself under two longitudes: 0 m
              (-33.0, 151.0), (-33.0, 151.0), (-33.0, 151.0),  # three duplicates
              (0.0, 0.0), (0.0, 0.0001)]  # ~11.1 m apart on the equator
    lat, lon = np.array(points).T
    for radius in (0.0, 2.5, 12.0, 50.0):
        np.testing.assert_array_equal(geo_pairs(lat, lon, radius), _brute_force(lat, lon, radius))
    got = {tuple(p) for p in geo_pairs(lat, lon, 12.0)}
    assert {(0, 1), (2, 3), (4, 5), (6, 7), (6, 8), (7, 8), (9, 10)} <= got


def test_boundary_is_inclusive_and_exact():
    """A pair exactly at the radius (as `haversine_m` measures it) is found; 1 mm more is not.

    The KD-tree ball is only a prefilter, so this checks that the chord conversion loses nothing at
    the boundary. (libm and numpy's vectorised sin may differ in the last bit, so the brute-force
    loop is compared away from the boundary in the other tests.)
    """
    lat0, lon0 = 48.85, 2.35
    lats, lons = [lat0], [lon0]
    for metres in (10.0, 10.001, 5.0, 20.0):
        la, lo = _offset(lat0, lon0, metres * 0.6, metres * 0.8)
        lats.append(la)
        lons.append(lo)
    lat, lon = np.array(lats), np.array(lons)
    d = haversine_m(lat[:1], lon[:1], lat[1:], lon[1:])
    pairs = {tuple(p) for p in geo_pairs(lat, lon, float(d[0]))}
    assert (0, 1) in pairs and (0, 2) not in pairs and (0, 3) in pairs and (0, 4) not in pairs
    assert (0, 1) not in {tuple(p) for p in geo_pairs(lat, lon, float(d[0]) * (1 - 1e-12))}


def test_sorted_int_array_and_empty():
    lat = np.array([0.0, 10.0, 20.0])
    lon = np.array([0.0, 0.0, 0.0])
    out = geo_pairs(lat, lon, 1.0)
    assert out.shape == (0, 2) and out.dtype == np.int64
    everything = geo_pairs(lat, lon, 1e8)  # beyond half the circumference: all pairs
    np.testing.assert_array_equal(everything, [[0, 1], [0, 2], [1, 2]])


def test_haversine_closed_form():
    quarter = haversine_m(0.0, 0.0, 0.0, 90.0)
    np.testing.assert_allclose(quarter, math.pi / 2 * EARTH_RADIUS_M, rtol=1e-12)
    np.testing.assert_allclose(haversine_m(90.0, 0.0, -90.0, 0.0), math.pi * EARTH_RADIUS_M, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# The pair sampler


def _city(seed=0, places=40, per_place=6):
    rng = np.random.default_rng(seed)
    place_lat = 40.70 + rng.uniform(0, 0.1, places)
    place_lon = -74.00 + rng.uniform(0, 0.1, places)
    lat = np.repeat(place_lat, per_place) + rng.normal(0, 1e-5, places * per_place)
    lon = np.repeat(place_lon, per_place) + rng.normal(0, 1e-5, places * per_place)
    users = rng.integers(0, 5, places * per_place)
    times = 1.4e9 + rng.uniform(0, 3 * 365 * 86400, places * per_place)
    return lat, lon, users, times


def test_far_negatives_are_balanced_and_far():
    lat, lon, users, times = _city()
    s = sample_geo_pairs(lat, lon, positive_radius_m=10, location_error_m=10, negative_min_m=2000)
    pos, neg = s.labels == 1, s.labels == 0
    assert pos.sum() == neg.sum() > 0
    d = haversine_m(lat[s.left], lon[s.left], lat[s.right], lon[s.right])
    np.testing.assert_allclose(d, s.distances_m)
    assert d[pos].max() <= 10 and d[neg].min() > 2020
    # Every negative shares its anchor with a positive: triplets (p, p+, p-).
    assert set(s.left[neg]) == set(s.left[pos])
    assert s.counts["positives"] == s.counts["negatives"] == pos.sum()


def test_ring_negatives_lie_in_the_ring():
    lat, lon, _, _ = _city(places=60)
    lat = np.concatenate([lat, lat[:60] + 50 / 111_000])  # partners ~50 m north of some photos
    lon = np.concatenate([lon, lon[:60]])
    s = sample_geo_pairs(lat, lon, positive_radius_m=10, negatives="ring", ring_m=(30, 100))
    neg = s.labels == 0
    assert neg.sum() > 0
    assert s.distances_m[neg].min() > 30 and s.distances_m[neg].max() <= 100


def test_user_time_window_and_timelapse_rules():
    lat, lon, users, times = _city(places=30, per_place=10)
    s = sample_geo_pairs(lat, lon, users=users, timestamps=times, positive_radius_m=10,
                         positive_user="same", negatives="near", negative_user="different")
    pos, neg = s.labels == 1, s.labels == 0
    assert np.all(users[s.left[pos]] == users[s.right[pos]])
    assert np.all(users[s.left[neg]] != users[s.right[neg]])
    assert s.distances_m.max() <= 10

    window = TimeWindow(years=(2015,), months=(6, 7))
    s = sample_geo_pairs(lat, lon, timestamps=times, window=window)
    when = times[np.concatenate([s.left, s.right])].astype("int64").astype("datetime64[s]")
    assert np.all(when.astype("datetime64[Y]").astype(int) + 1970 == 2015)
    assert set(when.astype("datetime64[M]").astype(int) % 12 + 1) <= {6, 7}
    assert s.counts["photos_in_window"] < s.counts["photos"]

    s = sample_geo_pairs(lat, lon, users=users, timestamps=times, timelapse_min_gap_s=86400)
    pos = s.labels == 1
    assert np.all(users[s.left[pos]] == users[s.right[pos]])
    assert np.all(np.abs(times[s.left[pos]] - times[s.right[pos]]) >= 86400)

    s = sample_geo_pairs(lat, lon, users=users, timestamps=times, max_time_gap_s=7200 * 24 * 30)
    pos = s.labels == 1
    assert np.all(np.abs(times[s.left[pos]] - times[s.right[pos]]) <= 7200 * 24 * 30)


def test_duplicates_are_removed_and_counted():
    lat, lon, _, _ = _city(places=10, per_place=4)
    keys = np.arange(lat.size).astype(str)
    keys[1] = keys[0]  # photo 1 is a byte-identical copy of photo 0
    s = sample_geo_pairs(lat, lon, duplicate_keys=keys)
    assert s.counts["duplicates_dropped"] == 1
    assert 1 not in set(s.left) | set(s.right)


def test_same_seed_same_pairs():
    lat, lon, _, _ = _city()
    a = sample_geo_pairs(lat, lon, seed=3, max_positives=20)
    b = sample_geo_pairs(lat, lon, seed=3, max_positives=20)
    np.testing.assert_array_equal(a.left, b.left)
    np.testing.assert_array_equal(a.right, b.right)
    assert a.counts["positives"] == 20
