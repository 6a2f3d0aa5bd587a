"""Reference count-sketch / tensor-sketch paths the library does not use (benchmark baselines and
test references for `finegrain_tf.ops.tensor_sketch`).

* `dense_count_sketch`: a dense ±1 [c, d] matrix per sketch (2 c d flops per location instead of c).
* `sparse_count_sketch`: one fused `tf.sparse.sparse_dense_matmul` (no XLA kernel).
* `autodiff_pooled_tensor_sketches`: the location-averaged tensor sketches with TF's generic
  RFFT/IRFFT gradients instead of the hand-written one.
"""

from __future__ import annotations

import tensorflow as tf


def _sketch_matrix(hashes, signs, dims) -> tf.sparse.SparseTensor:
    """One sparse [sum_g m_g d_g, c] matrix holding every count sketch of every group as rows."""
    rows, cols, values = [], [], []
    offset = 0
    for h, s, dim in zip(hashes, signs, dims):
        h = tf.convert_to_tensor(h, tf.int32)
        m, c = h.shape
        rows.append(tf.reshape(h + offset + tf.range(m)[:, None] * dim, [-1]))
        cols.append(tf.reshape(tf.broadcast_to(tf.range(c)[None, :], h.shape), [-1]))
        values.append(tf.reshape(tf.cast(s, tf.float32), [-1]))
        offset += m * dim
    indices = tf.cast(tf.stack([tf.concat(rows, 0), tf.concat(cols, 0)], 1), tf.int64)
    return tf.sparse.reorder(tf.sparse.SparseTensor(indices, tf.concat(values, 0),
                                                    [offset, hashes[0].shape[1]]))


def _split_groups(rows, hashes, dims):
    """[sum m_g d_g, N] -> per group [N, m_g, d_g]."""
    out, start = [], 0
    for h, d in zip(hashes, dims):
        m = int(h.shape[0])
        out.append(tf.transpose(tf.reshape(rows[start:start + m * d], [m, d, -1]), [2, 0, 1]))
        start += m * d
    return out


def sparse_count_sketch(x, hashes, signs, dims):
    """Count sketches of x [N, c] by a fused sparse matmul: per group [N, m_g, d_g]."""
    rows = tf.sparse.sparse_dense_matmul(_sketch_matrix(hashes, signs, dims), tf.cast(x, tf.float32),
                                         adjoint_b=True)
    return _split_groups(rows, hashes, dims)


def dense_count_sketch(x, hashes, signs, dims):
    """Count sketches of x [N, c] by a dense ±1 matrix product: per group [N, m_g, d_g]."""
    dense = tf.sparse.to_dense(_sketch_matrix(hashes, signs, dims))
    rows = tf.matmul(dense, tf.cast(x, tf.float32), transpose_b=True)
    return _split_groups(rows, hashes, dims)


def autodiff_pooled_tensor_sketches(x, hashes, signs, dims, orders):
    """`finegrain_tf.ops.tensor_sketch.pooled_tensor_sketches` with TF's generic gradients."""
    x = tf.cast(x, tf.float32)
    batch, locations, c = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
    groups = sparse_count_sketch(tf.reshape(x, [-1, c]), hashes, signs, dims)
    results = []
    for sk, dim, wanted in zip(groups, dims, orders):
        spectra = tf.signal.rfft(sk)  # [N, m, F]
        product = spectra[:, 0]
        prefix = [product]
        for t in range(1, max(wanted)):
            product = product * spectra[:, t]
            prefix.append(product)
        for k in sorted(wanted):
            pooled = tf.reduce_mean(tf.reshape(prefix[k - 1], [batch, locations, -1]), 1)
            results.append(tf.signal.irfft(pooled, fft_length=[dim]))
    return results
