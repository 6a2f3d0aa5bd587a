"""Benchmark `finegrain_tf.sampling.geo_pairs`: 1 M geo-tagged photos, all pairs within 10 m.

The photos imitate the thesis's Flickr set over New York (seed 004 §5.1): a bounding box of about
26 x 40 km, half of the photos in tourist clusters (hotspots with a few tens of metres of spread,
some photos sharing exact coordinates), half spread uniformly. Prints the build + query time, the
pair count, and the time of the naive O(N^2) comparison extrapolated from a sample, side by side.

  .venv/bin/python benchmarks/bench_geo_pairs.py [--photos 1000000] [--radius 10]

The machine may be shared: the printed times are wall-clock and include any contention.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from finegrain_tf.sampling.geo import geo_pairs, haversine_m

BOX = (-74.052544, 40.525070, -73.740685, 40.889249)  # the thesis's (lon, lat) corners


def synthetic_city(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lon0, lat0, lon1, lat1 = BOX
    clustered = n // 2
    hotspots = 5000
    centre = rng.integers(0, hotspots, clustered)
    h_lat, h_lon = rng.uniform(lat0, lat1, hotspots), rng.uniform(lon0, lon1, hotspots)
    spread = rng.uniform(5, 60, hotspots)[centre] / 111_000.0  # metres -> degrees of latitude
    lat = np.concatenate([h_lat[centre] + rng.normal(0, 1, clustered) * spread,
                          rng.uniform(lat0, lat1, n - clustered)])
    lon = np.concatenate([h_lon[centre] + rng.normal(0, 1, clustered) * spread / np.cos(np.deg2rad(40.7)),
                          rng.uniform(lon0, lon1, n - clustered)])
    # Flickr rounds to 6 decimals; many photos of a spot share coordinates.
    return np.round(lat, 6), np.round(lon, 6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--radius", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lat, lon = synthetic_city(args.photos, args.seed)

    start = time.perf_counter()
    pairs = geo_pairs(lat, lon, args.radius)
    seconds = time.perf_counter() - start

    # The naive all-pairs haversine on a sample, extrapolated quadratically to N photos.
    sample = 4000
    start = time.perf_counter()
    for i in range(sample):
        haversine_m(lat[i], lon[i], lat[i + 1:sample], lon[i + 1:sample])
    naive = (time.perf_counter() - start) * (args.photos / sample) ** 2

    print(f"cpus available: {len(os.sched_getaffinity(0))} (wall-clock; the machine may be shared)")
    print(f"photos {args.photos:,}  radius {args.radius:g} m  pairs {len(pairs):,}")
    print(f"{'method':<34}{'seconds':>12}")
    print(f"{'geo_pairs (cKDTree + haversine)':<34}{seconds:>12.2f}")
    print(f"{'naive all pairs (extrapolated)':<34}{naive:>12.0f}")
    print(f"speed-up: {naive / seconds:,.0f}x")


if __name__ == "__main__":
    main()
