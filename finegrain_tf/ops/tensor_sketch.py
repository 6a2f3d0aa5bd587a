"""Count sketch and tensor sketch (seed 000 eq 3.8-3.9), location-averaged, with a hand-written gradient.

    C_t(x)_j = sum_{i: h_t(i) = j} s_t(i) x_i                                        (eq 3.8)
    TS_k(x)  = FFT^-1( FFT(C_1(x)) o ... o FFT(C_k(x)) )                             (eq 3.9)

with independent hashes h_t: {1..c} -> {1..d}, s_t: {1..c} -> {+1, -1}. Kernel pooling and compact
bilinear pooling need mean_l TS_k(x_l) over the L locations of each image, for a few orders k.

How it is computed:
  * Every count sketch of every order is one row block of a single [sum_t d_t, N] matrix, built by
    ONE `tf.sparse.segment_sum` over the rows of [x^T; -x^T] (the sign picks the row; the segments
    are the bins, pre-sorted), i.e. a gather-and-add of N-float rows with no [m, c, N] signed copy.
    Under XLA (which has no sparse-segment kernel) a row gather + `unsorted_segment_sum` does it.
  * Each sketch is transposed to [N, d] and goes through one `rfft` over all N locations
    (float32/complex64 whatever the Keras dtype policy); the running products P_k = F_1 ... F_k
    (Algorithm 1, line 5) are shared by all orders.
  * The inverse FFT is linear, so the average over locations is taken in the frequency domain: one
    `irfft` per image and order instead of one per location (exactly mean_l TS_k(x_l)).
  * Backward, for the incoming gradient g_k [B, d] of order k: G_k = rfft(g_k) / L (the adjoints of
    irfft, of the mean and of rfft combined; their frequency weights cancel exactly), then
    R_m = G_m, R_t = [t wanted] G_t + conj(F_{t+1}) R_{t+1}, dF_t = conj(P_{t-1}) R_t (no division, so
    zeros in a spectrum are harmless), computed on conjugates (`_group_gradient`) so no big
    spectrum is ever conjugated; one `irfft` per sketch over all locations, and the adjoint count
    sketch as a row gather (bin (-h) mod d, the time reversal that stands for the conjugation).

Profile (benchmarks/bench_kernel_pooling.py --profile, d = 4096, p = 4, C = 2048, 14x14, B = 2, a
heavily shared 2-core CPU; sums of op durations): transposes between the bins-major sketch rows and
the location-major FFT input ~31 %, complex multiplies ~19 %, IRFFT ~13 %, RFFT ~11 %, adds ~9 %,
slices ~6 %, gathers ~4 %, the sparse segment sum ~2 %. The transposes exist because TF's segment
ops reduce along the first axis and its FFTs transform the last one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from finegrain_tf.ops.xla import in_xla_context


def draw_count_sketch_hashes(seed: int, input_dim: int, dims: Sequence[int],
                             num_sketches: Sequence[int]):
    """Independent hashes (h_t, s_t) per sketch (Algorithm 1, line 3), deterministic in `seed`.

    For each group g (sketch dimension dims[g] with num_sketches[g] sketches) returns
    h: int32 [m_g, input_dim] uniform in [0, dims[g]) and s: float32 [m_g, input_dim] uniform in {+1, -1}.
    Uses `np.random.RandomState`, whose stream numpy keeps stable across versions.
    """
    rs = np.random.RandomState(seed)
    out = []
    for dim, m in zip(dims, num_sketches):
        hs, ss = [], []
        for _ in range(m):
            hs.append(rs.randint(0, dim, size=input_dim))
            ss.append(rs.randint(0, 2, size=input_dim) * 2 - 1)
        out.append((np.asarray(hs, np.int32).reshape(m, input_dim),
                    np.asarray(ss, np.float32).reshape(m, input_dim)))
    return out


class _SketchIndex:
    """Where every (sketch t, input channel i) pair goes, for all groups fused into one matrix.

    Row r of the fused [rows, N] sketch matrix is bin j of sketch t of group g
    (r = offset_g + t d_g + j); channel i with sign s_t(i) reads row i (s = +1) or c + i (s = -1) of
    [x^T; -x^T]. The forward op's segments are the bins, so the pairs are sorted by bin.
    """

    def __init__(self, hashes, signs, dims):
        bins, sources, self.blocks = [], [], []
        offset = 0
        for h, s, d in zip(hashes, signs, dims):
            h = tf.convert_to_tensor(h, tf.int32)
            s = tf.convert_to_tensor(s, tf.float32)
            m, c, d = int(h.shape[0]), int(h.shape[1]), int(d)
            bins.append(tf.reshape(h + offset + tf.range(m)[:, None] * d, [-1]))
            sources.append(tf.reshape(tf.range(c)[None, :] + c * tf.cast(s < 0, tf.int32), [-1]))
            # Backward gathers bin (-h) mod d: see `_pooled_sketches` (the time reversal that
            # replaces complex conjugation).
            self.blocks.append([((d - h[t]) % d, s[t][:, None], d) for t in range(m)])
            offset += m * d
        self.input_dim = c
        self.rows = offset
        bins, sources = tf.concat(bins, 0), tf.concat(sources, 0)
        order = tf.argsort(bins, stable=True)
        self.bins, self.sources = tf.gather(bins, order), tf.gather(sources, order)

    def sketch(self, xt):
        """[c, N] -> every count sketch of every group as rows [rows, N]."""
        data = tf.concat([xt, -xt], 0)
        if in_xla_context():  # XLA has no sparse-segment kernel
            return tf.math.unsorted_segment_sum(tf.gather(data, self.sources), self.bins, self.rows)
        return tf.sparse.segment_sum(data, self.sources, self.bins, num_segments=self.rows)

    def group_sketches(self, rows):
        """[rows, N] -> per group, the list of its m_g sketches [N, d_g] (location-major for rfft)."""
        out, start = [], 0
        for block in self.blocks:
            group = []
            for _, _, d in block:
                group.append(tf.transpose(rows[start:start + d]))
                start += d
            out.append(group)
        return out


def count_sketch(x, hashes, signs, dims):
    """Count sketches C_t(x) (eq 3.8) of x [N, c] for every group: a list of [N, m_g, d_g] float32."""
    index = _SketchIndex(hashes, signs, dims)
    rows = index.sketch(tf.transpose(tf.cast(x, tf.float32)))
    return [tf.stack(group, 1) for group in index.group_sketches(rows)]


def _pooled_group(sketches, batch, locations, wanted, dim):
    """Forward of one group: spectra, prefix products and mean_l TS_k for k in `wanted` [n, B, d]."""
    spectra = [tf.signal.rfft(sk) for sk in sketches]  # m x [N, F]
    prefix = [spectra[0]]
    for t in range(1, wanted[-1]):
        prefix.append(prefix[-1] * spectra[t])  # P <- P o FFT(C_{t+1}(x)) (Algorithm 1, line 5)
    freqs = dim // 2 + 1
    pooled = tf.stack([tf.reduce_mean(tf.reshape(prefix[k - 1], [batch, locations, freqs]), 1)
                       for k in wanted], 0)
    return spectra, prefix, tf.signal.irfft(pooled, fft_length=[dim])


def _group_gradient(g, spectra, prefix, block, batch, locations, wanted, dim):
    """d x^T [c, N] contributed by one group, for the gradient g [n, B, d] of its pooled orders.

    Works with conjugated quantities r' = conj(r): dF'_t = conj(dF_t) = r'_t P_{t-1} and
    r'_{t-1} = [t - 1 wanted] G'_{t-1} + F_t r'_t need no conjugation of the big spectra, and
    irfft(conj(X))[n] = irfft(X)[-n mod d] is absorbed by gathering bin (-h) mod d.
    """
    freqs = dim // 2 + 1
    big = tf.math.conj(tf.signal.rfft(g)) / tf.cast(locations, tf.complex64)  # G' [n, B, F]
    per_order = {k: big[i][:, None, :] for i, k in enumerate(wanted)}  # [B, 1, F]
    dxt = None
    r = None
    for t in range(len(spectra), 0, -1):  # 1-based sketch index
        if t in per_order:
            r = per_order[t] if r is None else r + per_order[t]
        if t > 1:
            d_spectrum = r * tf.reshape(prefix[t - 2], [batch, locations, freqs])
            r = r * tf.reshape(spectra[t - 1], [batch, locations, freqs])
        else:
            d_spectrum = tf.broadcast_to(r, [batch, locations, freqs])
        d_sketch = tf.signal.irfft(tf.reshape(d_spectrum, [-1, freqs]), fft_length=[dim])  # [N, d]
        bins, sign, _ = block[t - 1]
        term = tf.gather(tf.transpose(d_sketch), bins) * sign  # adjoint count sketch: [c, N]
        dxt = term if dxt is None else dxt + term
    return dxt


def pooled_tensor_sketches(x, hashes, signs, dims, orders):
    """Location-averaged tensor sketches (eq 3.9) of x [B, L, c] for the requested orders.

    `orders[g]` lists the orders k >= 1 computed with group g (dimension dims[g], sketches
    hashes[g] [m_g, c], signs[g] [m_g, c]); group g must hold at least max(orders[g]) sketches.
    Returns, group by group and in increasing order within a group, a list of float32 [B, d_g]
    tensors mean_l TS_k(x_l), with a hand-written gradient with respect to x.
    """
    x = tf.cast(x, tf.float32)
    c = x.shape[-1]
    wanted = [sorted(int(k) for k in o) for o in orders]
    hashes = [tf.convert_to_tensor(h)[:w[-1]] for h, w in zip(hashes, wanted)]
    signs = [tf.convert_to_tensor(s)[:w[-1]] for s, w in zip(signs, wanted)]
    index = _SketchIndex(hashes, signs, dims)
    dims = [int(d) for d in dims]

    @tf.custom_gradient
    def pooled(x):
        batch, locations = tf.shape(x)[0], tf.shape(x)[1]
        rows = index.sketch(tf.transpose(tf.reshape(x, [-1, c])))
        saved, outputs = [], []
        for sketches, d, w in zip(index.group_sketches(rows), dims, wanted):
            spectra, prefix, out = _pooled_group(sketches, batch, locations, w, d)
            saved.append((spectra, prefix))
            outputs.append(out)

        def grad(*upstream):
            dxt = None
            for g, (spectra, prefix), block, d, w in zip(upstream, saved, index.blocks, dims, wanted):
                term = _group_gradient(g, spectra, prefix, block, batch, locations, w, d)
                dxt = term if dxt is None else dxt + term
            return tf.reshape(tf.transpose(dxt), tf.shape(x))

        return tuple(outputs), grad

    results = []
    for out in pooled(x):
        results.extend(tf.unstack(out, axis=0))
    return results


__all__ = ["draw_count_sketch_hashes", "count_sketch", "pooled_tensor_sketches"]
