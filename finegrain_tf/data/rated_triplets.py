"""Human-rated image triplets (seed 004 §5.3, the "Wang set" of Wang et al. 2014).

Each row is a query Q, two candidates A and B, and the raters' verdict, one of:

  both_similar     (1 in the thesis's numbering)  both A and B are similar to Q
  both_dissimilar  (2)                            neither is
  a_closer         (3)                            A is more similar to Q than B
  b_closer         (4)                            B is more similar to Q than A

File format: CSV with a header `query,a,b,rating` (image paths relative to the file's folder; the
rating as the name above or its number 1-4), or JSON Lines with the same keys. Only the decisive
triplets (a_closer / b_closer) have a right answer; `triplet_accuracy` of
`finegrain_tf.metrics` scores an embedding on them.

`generate_rated_triplets` makes a rated set from the synthetic geo collection, whose ground truth
(same place, not fuzzy) stands in for the human raters.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from finegrain_tf.data.manifest import JSON_SUFFIXES, read_rows
from finegrain_tf.data.synthetic_geo import SyntheticGeo

RATINGS = ("both_similar", "both_dissimilar", "a_closer", "b_closer")
COLUMNS = ("query", "a", "b", "rating")


@dataclasses.dataclass
class RatedTriplets:
    """Rated triplets: image paths (or indices into `images`) and rating codes (index into RATINGS)."""
    query: list
    a: list
    b: list
    ratings: np.ndarray  # int64 [T]

    def __len__(self) -> int:
        return int(self.ratings.size)

    @property
    def decisive(self) -> np.ndarray:
        """Mask of triplets with a right answer (A closer or B closer)."""
        return self.ratings >= 2

    @property
    def closer(self) -> np.ndarray:
        """For decisive triplets: 0 if A is closer to Q, 1 if B is (the input of triplet_accuracy)."""
        return (self.ratings[self.decisive] == 3).astype(np.int64)

    def counts(self) -> dict:
        return {name: int((self.ratings == i).sum()) for i, name in enumerate(RATINGS)}


def parse_rating(value, where: str) -> int:
    text = str(value).strip().lower().replace(" ", "_")
    if text in RATINGS:
        return RATINGS.index(text)
    if text in ("1", "2", "3", "4"):
        return int(text) - 1
    raise ValueError(f"{where}: rating {value!r} is not one of {list(RATINGS)} or 1-4")


def load_rated_triplets(path: str) -> RatedTriplets:
    """Reads a CSV or JSONL rated-triplet file (see the module docstring); bad rows raise a ValueError
    naming the row. Image paths are made absolute relative to the file's folder."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"rated triplet file {path!r} does not exist or is not a file")
    base = os.path.dirname(os.path.abspath(path))
    rows = [(f"{path}:{line}", row) for line, row in read_rows(path)]
    columns = {c: [] for c in COLUMNS}
    for where, row in rows:
        missing = [c for c in COLUMNS if row.get(c) in (None, "")]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        for c in ("query", "a", "b"):
            columns[c].append(os.path.join(base, str(row[c])))
        columns["rating"].append(parse_rating(row["rating"], where))
    if not rows:
        raise ValueError(f"rated triplet file {path!r} has no triplets")
    return RatedTriplets(columns["query"], columns["a"], columns["b"],
                         np.asarray(columns["rating"], np.int64))


def write_rated_triplets(triplets: RatedTriplets, path: str) -> str:
    """Writes a CSV (or JSONL by extension) with paths as given and ratings by name."""
    rows = [{"query": q, "a": a, "b": b, "rating": RATINGS[int(r)]}
            for q, a, b, r in zip(triplets.query, triplets.a, triplets.b, triplets.ratings)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        if path.lower().endswith(JSON_SUFFIXES):
            f.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    return path


def generate_rated_triplets(geo: SyntheticGeo, num_triplets: int, seed: int = 0,
                            decisive_share: float = 0.8) -> RatedTriplets:
    """Rated triplets over the synthetic geo photos, rated by ground truth (indices into the photos).

    Decisive: Q and the closer candidate show the same place (neither fuzzy nor a re-upload), the
    other candidate a different place. The rest are "both similar" (both of Q's place) or "both
    dissimilar" (two other places). Grayscale photos are left out, as the thesis's filter would.
    """
    if not isinstance(num_triplets, int) or num_triplets < 1:
        raise ValueError(f"num_triplets must be a positive int, got {num_triplets!r}")
    rng = np.random.default_rng(seed)
    usable = np.flatnonzero(~geo.fuzzy & (geo.duplicate_of < 0) & ~geo.grayscale & ~geo.timelapse)
    by_place = {}
    for index in usable:
        by_place.setdefault(int(geo.place[index]), []).append(int(index))
    places = [p for p, members in by_place.items() if len(members) >= 3]
    if len(places) < 3:
        raise ValueError(f"the synthetic set has only {len(places)} places with >= 3 usable photos; "
                         f"generate more photos per place")
    query, a, b, ratings = [], [], [], []
    for _ in range(num_triplets):
        place, other, third = rng.choice(places, 3, replace=False)
        q, same, same2 = rng.choice(by_place[place], 3, replace=False)
        far, far2 = rng.choice(by_place[other]), rng.choice(by_place[third])
        if rng.random() < decisive_share:
            rating = 2 if rng.random() < 0.5 else 3
            first, second = (same, far) if rating == 2 else (far, same)
        elif rng.random() < 0.5:
            rating, first, second = 0, same, same2
        else:
            rating, first, second = 1, far, far2
        query.append(int(q))
        a.append(int(first))
        b.append(int(second))
        ratings.append(rating)
    return RatedTriplets(query, a, b, np.asarray(ratings, np.int64))
