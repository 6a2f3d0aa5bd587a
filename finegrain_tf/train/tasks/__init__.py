"""The registered training tasks: importing this package registers every one of them.

Add one import line for a new task module (`finegrain_tf/train/tasks/<name>.py`).
"""
from finegrain_tf.train.tasks import classification  # noqa: F401
from finegrain_tf.train.tasks import pairs  # noqa: F401
from finegrain_tf.train.tasks import metric  # noqa: F401
