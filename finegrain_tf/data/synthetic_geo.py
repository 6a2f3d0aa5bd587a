"""The embedded synthetic geo-tagged photo collection (seed 004 ch.5, imitating the Flickr set).

`generate_geo(...)` scatters "places" over a city-sized box and renders several photos of each, so
the whole geo pipeline (pair sampling, Siamese training, fuzziness statistics) runs offline.

A place is a little street scene fixed by the seed: a skyline of buildings with a palette and window
pattern, and a landmark (a shape from `synthetic.py`'s families with its subtle detail and colour).
Some places are neighbours 40-90 m from another one sharing its skyline palette (hard negatives for
ring queries). Each photo of a place varies by the nuisances of a real photo collection:

- viewpoint (pan, zoom, a small roll; each user has a habitual viewpoint), and users who shoot
  series: several photos of a place within minutes,
- time of day from the timestamp's hour (daylight, golden hour, night with lit windows),
- season from the timestamp's month (snow, spring green, summer green, autumn orange),
- weather (clear, overcast, fog, rain streaks) and people standing in front,
- GPS noise of a few metres, except for a share of photos snapped to the place's venue coordinates
  (so that, as in the thesis's data, pairs within 1 m share their coordinates exactly),
- a share of grayscale photos, a few byte-identical re-uploads,
- time-lapse users: one camera at one place shooting bursts over months (the Barclays Center user),
  with a construction site growing over time,
- "fuzzy" photos: taken at the place but showing something else (a selfie, an indoor shot) -- the
  same-place pairs that look nothing alike (§5.1.1 "Filtering by User", §5.3.1).

Ground truth comes with it (`place`, `fuzzy`, `season`, `hour`, ...), which the studies use.
Deterministic: photo k is rendered from a generator seeded by (seed, k).
"""

from __future__ import annotations

import dataclasses
import datetime
import math

import numpy as np

from finegrain_tf.data.geo import GeoPhotos
from finegrain_tf.data.synthetic import (FAMILIES, _detail_value, _grid, _hsv_to_rgb, _paste_blob,
                                         _shape_alpha, _soft)
from finegrain_tf.utils import checks

# Around lower Manhattan; about 8 km x 8 km.
DEFAULT_ORIGIN = (40.70, -74.02)
DEFAULT_EXTENT_M = 8000.0
START = datetime.datetime(2013, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
YEARS = 3  # photos are taken in 2013-2015 (the thesis's Table 5.2 span)
SEASONS = ("winter", "spring", "summer", "autumn")
_SEASON_GROUND = {"winter": (0.0, 0.02, 0.92), "spring": (95.0, 0.45, 0.62),
                  "summer": (115.0, 0.6, 0.45), "autumn": (28.0, 0.65, 0.6)}  # hsv
_METRES_PER_DEGREE = 111_194.9  # on the 6 371 008.8 m sphere


@dataclasses.dataclass
class SyntheticGeo:
    """The generated photos plus the ground truth behind them (arrays [N])."""
    photos: GeoPhotos
    place: np.ndarray  # int64 place id of each photo
    fuzzy: np.ndarray  # bool: the photo shows something unrelated to its place
    season: np.ndarray  # int64 index into SEASONS
    hour: np.ndarray  # int64 local hour of day
    grayscale: np.ndarray  # bool
    timelapse: np.ndarray  # bool: taken by a time-lapse user
    duplicate_of: np.ndarray  # int64: index of the photo it re-uploads, or -1
    place_latitudes: np.ndarray
    place_longitudes: np.ndarray


def _season_of(month: int) -> int:
    return {12: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2}.get(month, 3)


def _place_scenes(num_places: int, rng: np.random.Generator) -> list[dict]:
    scenes = []
    for k in range(num_places):
        n_buildings = int(rng.integers(3, 6))
        edges = np.sort(rng.uniform(-1.6, 1.6, n_buildings - 1))
        scenes.append(dict(
            horizon=rng.uniform(0.25, 0.55),
            edges=np.concatenate([[-1.6], edges, [1.6]]),
            heights=rng.uniform(0.3, 1.3, n_buildings),
            hues=rng.uniform(0, 360, n_buildings), sats=rng.uniform(0.1, 0.55, n_buildings),
            vals=rng.uniform(0.35, 0.85, n_buildings),
            window_freq=rng.uniform(4, 12), family=FAMILIES[int(rng.integers(len(FAMILIES)))],
            detail=int(rng.integers(0, 3)), landmark_hue=rng.uniform(0, 360),
            landmark_x=rng.uniform(-0.5, 0.5), landmark_y=rng.uniform(-0.55, -0.1),
            landmark_r=rng.uniform(0.22, 0.38)))
    return scenes


def _neighbour_of(scene: dict, rng: np.random.Generator) -> dict:
    """A nearby place on the same street: same skyline palette, a different landmark and layout."""
    other = dict(scene)
    other.update(family=FAMILIES[int(rng.integers(len(FAMILIES)))], detail=int(rng.integers(0, 3)),
                 landmark_hue=rng.uniform(0, 360), landmark_x=rng.uniform(-0.5, 0.5),
                 heights=np.clip(scene["heights"] + rng.normal(0, 0.2, scene["heights"].size), 0.2, 1.4))
    return other


def _daylight(hour: int) -> tuple[float, np.ndarray, bool]:
    """(gain, colour cast, night) for an hour of the day."""
    if 8 <= hour < 17:
        return 1.0, np.array([1.0, 1.0, 1.0]), False
    if 6 <= hour < 8 or 17 <= hour < 20:
        return 0.8, np.array([1.15, 0.92, 0.72]), False  # golden hour
    return 0.32, np.array([0.75, 0.85, 1.25]), True


def _render_scene(rng: np.random.Generator, scene: dict, view: dict, size: int) -> np.ndarray:
    u, v, interp, coords = _grid(size)
    px = 2.0 / size
    ct, st = math.cos(view["roll"]), math.sin(view["roll"])
    x = (ct * u + st * v) / view["zoom"] + view["pan"]
    y = (-st * u + ct * v) / view["zoom"] + view["tilt"]
    gain, cast, night = _daylight(view["hour"])

    sky_top = _hsv_to_rgb(215, 0.55, 0.95) if not night else _hsv_to_rgb(230, 0.6, 0.25)
    sky_low = _hsv_to_rgb(200, 0.25, 1.0) if not night else _hsv_to_rgb(250, 0.4, 0.35)
    t = np.clip((y + 1.0) / 2.0, 0, 1)[..., None]
    img = (sky_top * (1 - t) + sky_low * t).astype(np.float32)

    horizon = scene["horizon"]
    h, s, val = _SEASON_GROUND[SEASONS[view["season"]]]
    ground = _hsv_to_rgb(h + rng.uniform(-8, 8), s, val)
    img = np.where((y > horizon)[..., None], ground.astype(np.float32), img)

    # Skyline: buildings between edges, from the horizon up to their height, with window grids.
    for b in range(scene["heights"].size):
        x0, x1 = scene["edges"][b], scene["edges"][b + 1]
        top = horizon - scene["heights"][b]
        inside = _soft(np.minimum(x - x0, x1 - x), px) * _soft(np.minimum(y - top, horizon - y), px)
        colour = _hsv_to_rgb(scene["hues"][b], scene["sats"][b], scene["vals"][b])
        windows = (np.sin(np.pi * scene["window_freq"] * x) > 0.3) & (np.sin(np.pi * 2 * scene["window_freq"] * y) > 0.2)
        lit = np.array([1.0, 0.85, 0.35]) if night else colour * 0.55
        facade = np.where(windows[..., None], lit.astype(np.float32), colour.astype(np.float32))
        img = img * (1 - inside[..., None]) + facade * inside[..., None]

    # Construction site of a time-lapse place: a crane-coloured block growing over the months.
    if view.get("progress", -1.0) >= 0:
        top = horizon - 1.2 * view["progress"]
        inside = _soft(np.minimum(x + 0.35, 0.35 - x), px) * _soft(np.minimum(y - top, horizon - y), px)
        img = img * (1 - inside[..., None]) + np.float32([0.85, 0.6, 0.15]) * inside[..., None]

    # The landmark.
    lx, ly, lr = scene["landmark_x"], scene["landmark_y"], scene["landmark_r"]
    dx, dy = (x - lx) / lr, (y - ly) / lr
    rho, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    alpha = _shape_alpha(scene["family"], _detail_value(scene["family"], scene["detail"])[0], rho, phi,
                         dx, dy, px / (lr * view["zoom"]))
    body = _hsv_to_rgb(scene["landmark_hue"], 0.75, 0.9).astype(np.float32)
    img = img * (1 - alpha[..., None]) + body * alpha[..., None]

    img = img * np.float32(gain) * cast.astype(np.float32)
    if view["weather"] == "overcast":
        img = 0.6 * img + 0.4 * img.mean(axis=-1, keepdims=True)
    elif view["weather"] == "fog":
        img = 0.45 * img + 0.55 * np.float32(0.75 * gain)
    elif view["weather"] == "rain":
        streaks = (np.sin(40.0 * (u + 0.3 * v) + rng.uniform(0, 6.3)) > 0.92)[..., None]
        img = np.where(streaks, 0.5 * img + 0.35, 0.8 * img)

    # People in front.
    for _ in range(view["people"]):
        bx, by = rng.uniform(-0.9, 0.9), rng.uniform(0.35, 0.8)
        clothes = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.9))
        _paste_blob(img, coords, bx, by + 0.15, 0.12, 0.45, True, clothes, px)
        _paste_blob(img, coords, bx, by - 0.05, 0.07, 1.0, False, _hsv_to_rgb(25, 0.45, 0.8), px)
    return img


def _render_unrelated(rng: np.random.Generator, size: int) -> np.ndarray:
    """A selfie or an indoor shot: nothing of the place is visible."""
    u, v, interp, coords = _grid(size)
    px = 2.0 / size
    low = rng.uniform(0.2, 0.9, size=(3, interp.shape[1], interp.shape[1])).astype(np.float32)
    img = np.ascontiguousarray((interp @ low @ interp.T).transpose(1, 2, 0))
    if rng.random() < 0.5:  # selfie: a large face filling the frame
        _paste_blob(img, coords, rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.2), rng.uniform(0.5, 0.75),
                    1.0, False, _hsv_to_rgb(rng.uniform(15, 35), rng.uniform(0.3, 0.6), rng.uniform(0.5, 0.95)), px)
    else:  # indoor: furniture-like rectangles
        for _ in range(int(rng.integers(3, 8))):
            _paste_blob(img, coords, rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.1, 0.4),
                        rng.uniform(0.3, 1.0), True,
                        _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.9)), px)
    return img


def _finish(img: np.ndarray, rng: np.random.Generator, grayscale: bool) -> np.ndarray:
    img = img + rng.standard_normal(img.shape).astype(np.float32) * np.float32(rng.uniform(0.01, 0.03))
    if grayscale:
        img = np.repeat(img.mean(axis=-1, keepdims=True), 3, axis=-1)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def generate_geo(num_places: int = 300, photos_per_place: int = 6, image_size: int = 64, seed: int = 0,
                 num_users: int = 0, gps_noise_m: float = 3.0, snap_share: float = 0.3,
                 session_share: float = 0.5,
                 fuzzy_share: float = 0.1,
                 grayscale_share: float = 0.05, duplicate_share: float = 0.02,
                 neighbour_share: float = 0.2, timelapse_users: int = 1, timelapse_photos: int = 30,
                 seasons: tuple = (0, 1, 2, 3), hours: tuple = tuple(range(24)),
                 extent_m: float = DEFAULT_EXTENT_M, origin: tuple = DEFAULT_ORIGIN) -> SyntheticGeo:
    """Generates the synthetic geo-tagged collection (see the module docstring).

    Args:
      num_places, photos_per_place: places and ordinary photos per place.
      image_size: side of the square photos.
      seed: the same seed gives identical bytes and metadata.
      num_users: photographers (0 = one per two places).
      gps_noise_m: standard deviation of the GPS error per coordinate, metres.
      snap_share: share of photos placed exactly at their place's coordinates (no GPS noise).
      session_share: chance that a user's photo at a place they photographed before is taken in the
        same outing (minutes after the previous one), as Flickr users upload series.
      fuzzy_share, grayscale_share, duplicate_share: shares of unrelated, grayscale, re-uploaded photos.
      neighbour_share: share of places that sit 40-90 m from another with the same skyline palette.
      timelapse_users, timelapse_photos: time-lapse cameras and their photos each.
      seasons, hours: allowed seasons (indices into SEASONS) and hours (the invariants study trains
        with one season / daytime only and tests on the others).
      extent_m, origin: the box (metres on a side) and its south-west corner (lat, lon).
    """
    num_places = checks.positive_int(num_places, "num_places")
    photos_per_place = checks.positive_int(photos_per_place, "photos_per_place")
    image_size = checks.positive_int(image_size, "image_size")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size!r}")
    seed = checks.non_negative_int(seed, "seed")
    for name, share in (("fuzzy_share", fuzzy_share), ("grayscale_share", grayscale_share),
                        ("snap_share", snap_share), ("session_share", session_share),
                        ("duplicate_share", duplicate_share), ("neighbour_share", neighbour_share)):
        checks.in_range(share, name, 0.0, 1.0)
    gps_noise_m = checks.in_range(gps_noise_m, "gps_noise_m", 0.0)
    seasons = tuple(checks.one_of(s, "season", range(len(SEASONS))) for s in seasons)
    hours = tuple(checks.one_of(h, "hour", range(24)) for h in hours)
    if not seasons or not hours:
        raise ValueError(f"seasons and hours must not be empty, got {seasons!r} and {hours!r}")
    num_users = checks.non_negative_int(num_users, "num_users") or max(2, num_places // 2)
    rng = np.random.default_rng([seed, 0])

    scenes = _place_scenes(num_places, rng)
    east = rng.uniform(0, extent_m, num_places)
    north = rng.uniform(0, extent_m, num_places)
    for k in range(1, num_places):
        if rng.random() < neighbour_share:  # a neighbour of an earlier place
            other = int(rng.integers(0, k))
            distance, bearing = rng.uniform(40, 90), rng.uniform(0, 2 * np.pi)
            east[k] = east[other] + distance * math.cos(bearing)
            north[k] = north[other] + distance * math.sin(bearing)
            scenes[k] = _neighbour_of(scenes[other], rng)
    lat0, lon0 = origin
    metres_east = _METRES_PER_DEGREE * math.cos(math.radians(lat0))
    place_lat = lat0 + north / _METRES_PER_DEGREE
    place_lon = lon0 + east / metres_east
    user_view = rng.uniform(-0.25, 0.25, num_users)  # each user's habitual pan
    hour_weights = np.array([3.0 if 8 <= h < 20 else 1.0 for h in hours])  # mostly daytime photos
    hour_weights /= hour_weights.sum()

    # Photo metadata: ordinary photos, then time-lapse bursts.
    records = []
    for k in range(num_places):
        for _ in range(photos_per_place):
            records.append(dict(place=k, user=int(rng.integers(num_users)), timelapse=False))
    for t in range(timelapse_users):
        k = int(rng.integers(num_places))
        for i in range(timelapse_photos):
            records.append(dict(place=k, user=num_users + t, timelapse=True, progress=i / max(timelapse_photos - 1, 1)))
    n = len(records)
    lat, lon, times = np.zeros(n), np.zeros(n), np.zeros(n)
    place, season, hour = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    fuzzy, gray, lapse = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    users = []
    last_visit = {}  # (user, place) -> time of that user's latest photo there
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    for index, rec in enumerate(records):
        r = np.random.default_rng([seed, 1, index])
        k = rec["place"]
        # When: a day in 2013-2015 within the allowed seasons, an allowed hour (time-lapse: a burst
        # over one year at the same hour band).
        while True:
            day = r.integers(0, 365 * YEARS)
            when = datetime.datetime.fromtimestamp(START + day * 86400.0, datetime.timezone.utc)
            if _season_of(when.month) in seasons:
                break
        if rec["timelapse"]:
            day = int(rec["progress"] * 360)
            when = datetime.datetime.fromtimestamp(START + day * 86400.0, datetime.timezone.utc)
            while _season_of(when.month) not in seasons:
                when += datetime.timedelta(days=30)
        hr = int(r.choice(hours, p=hour_weights))
        times[index] = when.timestamp() + hr * 3600 + r.uniform(0, 3600)
        visit = (rec["user"], k)
        if not rec["timelapse"] and visit in last_visit and r.random() < session_share:
            # The same outing: a few minutes after this user's previous photo here.
            later = last_visit[visit] + r.uniform(60, 1800)
            if int(later % 86400 // 3600) in hours:
                times[index], hr = later, int(later % 86400 // 3600)
        last_visit[visit] = times[index]
        place[index], hour[index] = k, hr
        season[index] = _season_of(datetime.datetime.fromtimestamp(times[index], datetime.timezone.utc).month)
        snapped = rec["timelapse"] or r.random() < snap_share  # a time-lapse camera stands still
        noise = r.normal(0, gps_noise_m, 2) if gps_noise_m and not snapped else np.zeros(2)
        lat[index] = place_lat[k] + noise[0] / _METRES_PER_DEGREE
        lon[index] = place_lon[k] + noise[1] / metres_east
        users.append(f"user{rec['user']:04d}")
        lapse[index] = rec["timelapse"]
        if rec["timelapse"]:
            view = dict(pan=0.05, tilt=0.0, zoom=1.0, roll=0.0, people=int(r.integers(0, 3)),
                        weather=str(r.choice(["clear", "overcast", "fog", "rain"], p=[.6, .25, .1, .05])),
                        progress=rec["progress"])
        else:
            view = dict(pan=user_view[rec["user"]] + r.normal(0, 0.08), tilt=r.normal(0, 0.06),
                        zoom=r.uniform(0.85, 1.2), roll=np.deg2rad(r.normal(0, 3)),
                        people=int(r.integers(1, 4)) if r.random() < 0.4 else 0,
                        weather=str(r.choice(["clear", "overcast", "fog", "rain"], p=[.6, .25, .1, .05])))
        view.update(hour=hr, season=int(season[index]))
        fuzzy[index] = not rec["timelapse"] and r.random() < fuzzy_share
        gray[index] = r.random() < grayscale_share
        pixels = _render_unrelated(r, image_size) if fuzzy[index] else _render_scene(r, scenes[k], view, image_size)
        images[index] = _finish(pixels, r, gray[index])

    # Re-uploads: byte-identical copies under the same user and coordinates, a little later.
    duplicate_of = np.full(n, -1, np.int64)
    copies = np.flatnonzero(rng.random(n) < duplicate_share)
    sources = np.asarray(["synthetic"] * n + ["synthetic_reupload"] * copies.size)
    photos = GeoPhotos(np.concatenate([lat, lat[copies]]), np.concatenate([lon, lon[copies]]),
                       np.concatenate([times, times[copies] + 60.0]),
                       np.asarray(users + [users[i] for i in copies]), sources,
                       images=np.concatenate([images, images[copies]]))
    return SyntheticGeo(photos=photos, place=np.concatenate([place, place[copies]]),
                        fuzzy=np.concatenate([fuzzy, fuzzy[copies]]),
                        season=np.concatenate([season, season[copies]]),
                        hour=np.concatenate([hour, hour[copies]]),
                        grayscale=np.concatenate([gray, gray[copies]]),
                        timelapse=np.concatenate([lapse, lapse[copies]]),
                        duplicate_of=np.concatenate([duplicate_of, copies]),
                        place_latitudes=place_lat, place_longitudes=place_lon)
