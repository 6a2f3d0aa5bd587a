"""The export module: a `tf.Module` that tracks the model, its preprocessing and the gallery index and
returns the serving signatures (modelled on tensorflow/models `official/core/export_base.py`).

Signatures (`ExportModule.signatures()`):

  serving_default, classify   images: string [None] (encoded JPEG/PNG/GIF/BMP)
                              -> classes int32 [None, k], class_names string [None, k], scores float32 [None, k]
  classify_examples           inputs: string [None] serialized tf.Example with feature `image/encoded`
                              -> classes string [None, k], scores float32 [None, k]; method name
                              `tensorflow/serving/classify`, so TF Serving's Classify RPC and REST
                              `:classify` work on it
  classify_tensor             images: float32 [None, H, W, 3] in [0, 255] (any H, W) -> as classify
  classify_tensor_uint8       images: uint8 [None, H, W, 3] -> as classify
  embed                       images: string [None] -> embeddings float32 [None, D] (L2-normalised)
  lookup (with an index)      images: string [None], nprobe: int32 scalar >= 1, inverted lists an IVF
                              index scans (optional: SignatureDef.defaults holds the index's default;
                              an exact index ignores it) -> ids string [None, k], distances float32 [None, k]
                              (squared L2 between unit vectors = 2 - 2 cos, ascending)

Decoding and the evaluation preprocessing of training (`finegrain_tf.data.preprocessing`) run inside
the graph with stock ops, so clients send encoded bytes.

Why the module lists `served_variables`: a `tf.Module` that merely holds a Keras 3 model saves the
Keras variables in its object graph, but the signature functions capture the `tf.Variable`s inside
them, and the TF1 session loader (TF Serving's path) then fails with "Could not find variable ...".
Tracking the variables the traced signatures capture (public `ConcreteFunction.variables`) names each
one in the object graph, which is what `keras.export.ExportArchive` does internally too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from finegrain_tf.data import preprocessing
from finegrain_tf.data.decode import DEFAULT_LIMITS, DecodeLimits, decode_image

CLASSIFY_METHOD = "tensorflow/serving/classify"  # tf.saved_model.CLASSIFY_METHOD_NAME in TF1
CLASSIFY_INPUTS = "inputs"  # the input key TF Serving's Classify handler feeds
IMAGE_FEATURE = "image/encoded"
BYTES_SIGNATURES = ("serving_default", "classify", "embed", "lookup")
TENSOR_SIGNATURES = ("classify_tensor", "classify_tensor_uint8")
EXAMPLE_SIGNATURES = ("classify_examples",)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """The eval preprocessing of the training run, applied inside the served graph.

    Attributes:
      image_size: side S of the model input.
      resize_size: shorter side before the centre crop (0 = `default_resize_size(S)`).
      limits: largest image decoded (pixels, aspect ratio): the header is read first
        (`finegrain_tf.data.decode`) and a larger one is refused with INVALID_ARGUMENT naming its size
        before any allocation proportional to it.
    """

    image_size: int
    resize_size: int = 0
    limits: DecodeLimits = DEFAULT_LIMITS

    def __post_init__(self):
        _, resize = preprocessing.check_sizes(self.image_size, self.resize_size)
        object.__setattr__(self, "resize_size", resize)

    def decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """One encoded image (scalar string) -> uint8 [H, W, 3], refused above the limits."""
        return decode_image(encoded, self.limits)

    def from_bytes(self, encoded: tf.Tensor) -> tf.Tensor:
        """One encoded image -> float32 [S, S, 3] in [0, 255]."""
        return self.from_pixels(self.decode(encoded))

    def from_pixels(self, image: tf.Tensor) -> tf.Tensor:
        """One decoded image [H, W, 3] (uint8 or float in [0, 255]) -> float32 [S, S, 3]."""
        image = tf.cast(preprocessing.preprocess_eval(image, self.image_size, self.resize_size), tf.float32)
        image.set_shape([self.image_size, self.image_size, 3])
        return image

    def batch(self, fn, images: tf.Tensor) -> tf.Tensor:
        size = self.image_size
        return tf.map_fn(fn, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
                         parallel_iterations=16)

    def check_pixels(self, images: tf.Tensor) -> tf.Tensor:
        """Refuses NaN / Inf and values outside [0, 255] in a float pixel batch (INVALID_ARGUMENT)."""
        if images.dtype == tf.uint8:
            return images
        images = tf.debugging.check_numerics(images, "images must be finite pixel values in [0, 255]")
        low, high = tf.reduce_min(images), tf.reduce_max(images)
        with tf.control_dependencies([tf.debugging.Assert(
                tf.logical_or(tf.equal(tf.size(images), 0), tf.logical_and(low >= 0.0, high <= 255.0)),
                ["images must be pixel values in [0, 255]; got min", low, "max", high])]):
            return tf.identity(images)


def preprocessing_of(info: dict) -> ImagePreprocessing:
    """The ImagePreprocessing recorded in an export's export_info.json."""
    limits = DecodeLimits(**info["decode_limits"]) if "decode_limits" in info else DEFAULT_LIMITS
    return ImagePreprocessing(info["image_size"], info["resize_size"], limits)


def embedding_model(model):
    """A Keras model sharing `model`'s weights: images -> [logits, embedding] (layer "embedding")."""
    import keras

    try:
        layer = model.get_layer("embedding")
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer named 'embedding' (needed for embed/lookup); "
                         f"last layers: {[l.name for l in model.layers][-6:]}") from None
    return keras.Model(model.inputs, [model.outputs[0], layer.output], name=f"{model.name}_with_embedding")


def normalized_embedding(embedding: tf.Tensor) -> tf.Tensor:
    """[B, ...] -> float32 [B, D] unit rows."""
    embedding = tf.cast(embedding, tf.float32)
    if embedding.shape.rank and embedding.shape.rank > 2:
        embedding = tf.reshape(embedding, [tf.shape(embedding)[0], -1])
    return tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-12)


class ExportModule(tf.Module):
    """Model + preprocessing + optional gallery index, with one `tf.function` per signature.

    Args:
      model: Keras classifier, float32 [None, S, S, 3] in [0, 255] -> logits [None, C]; a layer named
        "embedding" adds `embed` (and `lookup` with an index). Or any callable
        `pixels -> (logits, embedding or None)` with `num_classes` / `embedding_dim` given
        (how a gallery update reuses the model of a previous export).
      class_names: one name per logit.
      preprocess: the `ImagePreprocessing` of the training run.
      top_k: classes / neighbours returned per image (clipped to C and to the gallery size).

    `attach_index(index)` adds the gallery (a `finegrain_tf.retrieval.SearchIndex` over unit-norm
    embeddings of this model) and the `lookup` signature.
    """

    def __init__(self, model, class_names: Sequence[str], preprocess: ImagePreprocessing, top_k: int = 5, *,
                 num_classes: int | None = None, embedding_dim: int | None = None):
        super().__init__(name="finegrain_export")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if callable(getattr(model, "get_layer", None)):
            num_classes, embedding_dim, self.forward = self._wrap_keras(model, preprocess)
        else:
            self.forward = model
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim or 0)
        self.index = None
        self.preprocess = preprocess
        self.top_k = int(top_k)
        self.class_names = [str(n) for n in class_names]
        self.assets = {}

    def attach_index(self, index):
        if not self.embedding_dim:
            raise ValueError("a gallery needs a model with a layer named 'embedding'")
        if index.dim != self.embedding_dim:
            raise ValueError(f"gallery embeddings have dimension {index.dim}, the model's embedding has "
                             f"{self.embedding_dim}")
        self.index = index

    @staticmethod
    def _wrap_keras(model, preprocess):
        num_classes = int(model.outputs[0].shape[-1])
        in_shape = tuple(model.inputs[0].shape[1:3])
        if in_shape not in ((preprocess.image_size,) * 2, (None, None)):
            raise ValueError(f"image_size={preprocess.image_size} but the model expects inputs of shape "
                             f"{tuple(model.inputs[0].shape[1:])}")
        if model.layers[-1].name == "embedding":  # embedding-only (a Siamese tower): embed / lookup
            dim = int(np.prod(model.outputs[0].shape[1:]))
            return 0, dim, lambda pixels: (None, model(pixels, training=False))
        if not any(layer.name == "embedding" for layer in model.layers):
            return num_classes, 0, lambda pixels: (model(pixels, training=False), None)
        dual = embedding_model(model)
        dim = int(np.prod(dual.outputs[1].shape[1:]))
        return num_classes, dim, lambda pixels: tuple(dual(pixels, training=False))

    # -- signature bodies -----------------------------------------------------------------------
    def _classify_pixels(self, pixels):
        logits, _ = self.forward(pixels)
        scores, classes = tf.math.top_k(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1),
                                        k=min(self.top_k, self.num_classes))
        return {"classes": classes, "class_names": tf.gather(tf.constant(self.class_names), classes),
                "scores": scores}

    def _embed_pixels(self, pixels):
        _, embedding = self.forward(pixels)
        return normalized_embedding(embedding)

    def _model_outputs(self, pixels):
        logits, embedding = self.forward(pixels)
        out = {} if logits is None else {"logits": tf.cast(logits, tf.float32)}
        if embedding is not None:
            out["embedding"] = embedding
        return out

    def _decode(self, images):
        return self.preprocess.batch(self.preprocess.from_bytes, images)

    def classify(self, images):
        return self._classify_pixels(self._decode(images))

    def classify_tensor(self, images):
        images = self.preprocess.check_pixels(images)
        return self._classify_pixels(self.preprocess.batch(self.preprocess.from_pixels, images))

    def classify_examples(self, inputs):
        features = tf.io.parse_example(inputs, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        out = self._classify_pixels(self._decode(features[IMAGE_FEATURE]))
        return {"classes": out["class_names"], "scores": out["scores"]}

    def embed(self, images):
        return {"embeddings": self._embed_pixels(self._decode(images))}

    def lookup(self, images, nprobe):
        query = self._embed_pixels(self._decode(images))
        with tf.control_dependencies([tf.debugging.assert_positive(nprobe, message="nprobe must be >= 1")]):
            nprobe = tf.identity(nprobe)
        if self.index.kind == "exact":  # every item is compared; nprobe is only checked
            query = _after(query, nprobe)
            nprobe = None
        distances, ids = self.index.search(query, min(self.top_k, self.index.size), nprobe=nprobe)
        return {"ids": ids, "distances": distances}

    # -- SavedModel plumbing --------------------------------------------------------------------
    def signature_names(self) -> list[str]:
        """The signatures `signatures()` returns, without tracing them."""
        names = ["serving_default"]
        names += ["classify", "classify_examples", "classify_tensor", "classify_tensor_uint8"] if self.num_classes else []
        names += ["embed"] if self.embedding_dim else []
        names += ["lookup"] if self.index is not None else []
        return sorted(names)

    def signatures(self) -> dict:
        """{signature name: concrete function}; also tracks the variables they capture (see module doc)."""
        images = tf.TensorSpec([None], tf.string, name="images")
        fns = {"classify": (self.classify, [images]),
               "classify_examples": (self.classify_examples,
                                     [tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUTS)]),
               "classify_tensor": (self.classify_tensor,
                                   [tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]),
               "classify_tensor_uint8": (self.classify_tensor,
                                         [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
               } if self.num_classes else {}  # an embedding-only model serves embed / lookup only
        if self.embedding_dim:
            fns["embed"] = (self.embed, [images])
        if self.index is not None:
            fns["lookup"] = (self.lookup, [images, tf.TensorSpec([], tf.int32, name="nprobe")])
        concrete = {name: tf.function(fn, input_signature=spec, autograph=False).get_concrete_function()
                    for name, (fn, spec) in fns.items()}
        concrete["serving_default"] = concrete["classify"] if self.num_classes else concrete["embed"]
        # Not a signature: what a gallery update (`export_gallery_update`) calls to reuse this model.
        pixels = tf.TensorSpec([None, self.preprocess.image_size, self.preprocess.image_size, 3], tf.float32)
        self.model_outputs = tf.function(self._model_outputs, input_signature=[pixels], autograph=False)
        self.model_outputs.get_concrete_function()
        captured = {}
        for fn in concrete.values():
            for variable in fn.variables:
                captured[id(variable)] = variable
        self.served_variables = list(captured.values())
        return concrete

    def signature_defaults(self) -> dict:
        """{signature: {input: value}} for inputs a request may omit (written into SignatureDef.defaults)."""
        if self.index is None:
            return {}
        return {"lookup": {"nprobe": np.int32(self.index.config.get("nprobe", 1))}}

    def add_asset(self, path: str):
        """Registers a file as a SavedModel asset (copied to `assets/`, listed in asset_file_def)."""
        self.assets[os.path.basename(path).replace(".", "_")] = tf.saved_model.Asset(path)

    def save(self, path: str):
        """Writes the SavedModel, then records what `tf.saved_model.save` cannot express: the Classify
        method name of `classify_examples` and the default `nprobe` of `lookup`."""
        tf.saved_model.save(self, path, signatures=self.signatures())
        set_signature_metadata(path, {"classify_examples": CLASSIFY_METHOD}, self.signature_defaults())


def _after(tensor, dependency):
    """`tensor`, evaluated only once `dependency` has run (so its checks cannot be pruned)."""
    with tf.control_dependencies([dependency]):
        return tf.identity(tensor)


def set_signature_metadata(path: str, method_names: dict, defaults: dict):
    """Edits `saved_model.pb` in place: signature method names and input default values."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(path, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved.ParseFromString(f.read())
    for meta in saved.meta_graphs:
        for name, method in method_names.items():
            if name in meta.signature_def:
                meta.signature_def[name].method_name = method
        for name, values in defaults.items():
            if name in meta.signature_def:
                for key, value in values.items():
                    meta.signature_def[name].defaults[key].CopyFrom(tf.make_tensor_proto(value))
    with open(pb_path + ".tmp", "wb") as f:
        f.write(saved.SerializeToString())
    os.replace(pb_path + ".tmp", pb_path)
