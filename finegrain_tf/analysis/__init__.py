"""finegrain_tf.analysis."""
# Dataset analysis (seed 000 §4.3 and ch.6). Note: `granularity` and `domain_similarity` are the
# functions; their modules stay reachable via importlib / sys.modules.
from finegrain_tf.analysis.domain_similarity import (  # noqa: E402
    SourceSelection, domain_similarity, emd_distance, select_source_classes, union_source_classes,
    write_class_list)
from finegrain_tf.analysis.features import class_means, extract_features  # noqa: E402
from finegrain_tf.analysis.granularity import granularity  # noqa: E402
from finegrain_tf.analysis.kernel_approx import (  # noqa: E402
    approximation_error_sweep, kernel_approximation_error)
