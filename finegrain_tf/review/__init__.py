"""Human review of bootstrapping candidates (seed 000 §2.2.2): the label store and the web app.

`store.LabelStore` is what the bootstrapping rounds use; `app.create_app` is the FastAPI app that
`finegrain-review serve` runs. This package knows only its store and the images it serves.
"""

from finegrain_tf.review.store import LabelStore

__all__ = ["LabelStore"]
