"""finegrain_tf.data: the embedded synthetic dataset, tfds / image-folder loaders, preprocessing.

  synthetic      generate(...), make_dataset(cfg, split), write_image_folder(data, root)
  preprocessing  decode_image, preprocess_train, preprocess_eval (pure TF, used in exports too)
  loaders        load_tfds(name, split), load_image_folder(root), SUPPORTED_TFDS
  pipeline       build_datasets(data_cfg, global_batch_size, input_context) -> train, eval, info
  long_tail      make_long_tailed, balanced_subset
"""

from finegrain_tf.data.loaders import SUPPORTED_TFDS, FolderInfo, load_image_folder, load_tfds
from finegrain_tf.data.pipeline import DatasetInfo, build_datasets
from finegrain_tf.data.preprocessing import decode_image, preprocess_eval, preprocess_train
from finegrain_tf.data.synthetic import SyntheticData, generate, make_dataset, write_image_folder

__all__ = [
        "SUPPORTED_TFDS", "FolderInfo", "load_image_folder", "load_tfds", "DatasetInfo", "build_datasets",
        "decode_image", "preprocess_eval", "preprocess_train", "SyntheticData", "generate", "make_dataset",
        "write_image_folder",
]
