"""finegrain_tf.data: the embedded synthetic dataset, loaders, bounded decoding, preprocessing.

  synthetic      generate(...), make_dataset(cfg, split), write_image_folder(data, root)
  decode         DecodeLimits, image_shape, decode_image (header checked before decoding: pixels,
                 aspect ratio), decode_or_flag (for loaders that skip and count)
  preprocessing  preprocess_train (crop / flips / rotation / zoom options), preprocess_eval (centre
                 crop), multi_crop (12 evaluation views); pure TF, used in exports too
  loaders        load_tfds(name, split), load_image_folder(root) (symlinks followed, each real file once),
                 SUPPORTED_TFDS
  manifest       read_rows (the CSV/JSONL row reader), read_manifest, load_manifest (path,label[,split])
  pipeline       build_datasets(data_cfg, global_batch_size, input_context) -> train, eval, info
                 (info.skip_counter counts images dropped while reading)
  long_tail      make_long_tailed, balanced_subset
"""

from finegrain_tf.data.decode import DecodeLimits, decode_image
from finegrain_tf.data.loaders import SUPPORTED_TFDS, FolderInfo, load_image_folder, load_tfds
from finegrain_tf.data.manifest import load_manifest, read_manifest
from finegrain_tf.data.pipeline import DatasetInfo, SkipCounter, build_datasets
from finegrain_tf.data.preprocessing import multi_crop, preprocess_eval, preprocess_train
from finegrain_tf.data.synthetic import SyntheticData, generate, make_dataset, write_image_folder

__all__ = [
    "DecodeLimits", "decode_image", "SUPPORTED_TFDS", "FolderInfo", "load_image_folder", "load_tfds",
    "load_manifest", "read_manifest", "DatasetInfo", "SkipCounter", "build_datasets", "multi_crop",
    "preprocess_eval", "preprocess_train", "SyntheticData", "generate", "make_dataset", "write_image_folder",
]
