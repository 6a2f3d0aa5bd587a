"""Count sketch and tensor sketch (seed 000 eq 3.8-3.9), location-averaged, with a hand-written gradient.

    C_t(x)_j = sum_{i: h_t(i) = j} s_t(i) x_i                                        (eq 3.8)
    TS_k(x)  = FFT^-1( FFT(C_1(x)) o ... o FFT(C_k(x)) )                             (eq 3.9)

with independent hashes h_t: {1..c} -> {1..d}, s_t: {1..c} -> {+1, -1}. Kernel pooling and compact
bilinear pooling need mean_l TS_k(x_l) over the L locations of each image, for a few orders k.

How it is computed (layouts chosen by measurement, benchmarks/README.md):
  * Every count sketch of every order comes from ONE op over all (sketch, channel) pairs. Outside
    XLA: `tf.sparse.segment_sum` over the rows of [x^T; -x^T] (the sign picks the row, the bins are
    the sorted segments) into bins-major rows [sum_t d_t, N], then one transpose to [m, N, d].
    Under XLA (no sparse-segment kernel; its gathers of a transposed x read with a stride): one
    `unsorted_segment_sum` of the signed copies x_i s_t(i) straight into location-major bins
    [N, m, d], with no transpose, no gather and no sort.
  * One `rfft` over all sketches and locations (float32/complex64 whatever the Keras dtype
    policy); the running products P_k = F_1 ... F_k (Algorithm 1, line 5) are shared by all orders.
  * The inverse FFT is linear, so the average over locations is taken in the frequency domain: one
    `irfft` per image and order instead of one per location (exactly mean_l TS_k(x_l)).
  * Backward, for the incoming gradient g_k [B, d] of order k: G_k = rfft(g_k) / L (the adjoints of
    irfft, of the mean and of rfft combined; their frequency weights cancel exactly), then
    R_m = G_m, R_t = [t wanted] G_t + conj(F_{t+1}) R_{t+1}, dF_t = conj(P_{t-1}) R_t (no division, so
    zeros in a spectrum are harmless), computed on conjugates (`_spectra_gradient`) so no big
    spectrum is ever conjugated; one `irfft` over all sketches and locations, and the adjoint count
    sketch as a gather along the bins (bin (-h) mod d, the time reversal that stands for the
    conjugation). Outside XLA this chain of complex products and the adjoint gather are compiled
    (`jit_compile`) into fused loops: as separate TF kernels they were ~25 % of the layer's step.
    Only gradient code is compiled, so the forward pass that an exported model serves is plain TF.

Profile: see benchmarks/README.md (benchmarks/bench_kernel_pooling.py --profile).
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

    Row r of the fused sketch matrix is bin j of sketch t of group g (r = offset_g + t d_g + j);
    pairs p = (t, i) are numbered sketch-major over all groups' sketches.
    """

    def __init__(self, hashes, signs, dims):
        bins, reversed_bins, pair_signs, self.groups = [], [], [], []
        offset = 0
        for h, s, d in zip(hashes, signs, dims):
            h = tf.convert_to_tensor(h, tf.int32)
            s = tf.convert_to_tensor(s, tf.float32)
            m, c, d = int(h.shape[0]), int(h.shape[1]), int(d)
            base = tf.range(m)[:, None] * d
            bins.append(tf.reshape(h + offset + base, [-1]))
            # The adjoint gathers bin (-h) mod d: see `_spectra_gradient` (the time reversal that
            # replaces complex conjugation).
            reversed_bins.append(tf.reshape((d - h) % d + base, [-1]))
            pair_signs.append(tf.reshape(s, [-1]))
            self.groups.append((m, d))
            offset += m * d
        self.input_dim = c
        self.rows = offset
        self.bins = tf.concat(bins, 0)  # [P] fused row of pair p
        self.reversed_bins = reversed_bins  # per group [m_g c]: t d_g + (-h_t(i) mod d_g)
        self.signs = tf.concat(pair_signs, 0)  # [P]

    @staticmethod
    def sketch_axis() -> int:
        """Axis of the sketch index t in the per-group tensors: [N, m, d] under XLA (whose slices
        are free), [m, N, d] otherwise (TF copies slices of inner axes)."""
        return 1 if in_xla_context() else 0

    def sketches(self, x):
        """x [N, c] -> per group its count sketches, [N, m_g, d_g] or [m_g, N, d_g] (`sketch_axis`)."""
        c, pairs = self.input_dim, int(self.bins.shape[0])
        if in_xla_context():
            # XLA has no sparse-segment kernel and its gathers and transposes of x are slow: one
            # scatter-add of the signed copies x_i s_t(i) straight into location-major bins
            # (flat segment n * rows + bin), no transpose of x, no gather, no sort.
            n = tf.shape(x)[0]
            updates = tf.reshape(x[:, None, :] * tf.reshape(self.signs, [-1, c]), [n, pairs])
            segments = tf.range(n)[:, None] * self.rows + self.bins
            cols = tf.reshape(tf.math.unsorted_segment_sum(updates, segments, n * self.rows),
                              [n, self.rows])
            return [tf.reshape(block, [n, m, d])
                    for block, (m, d) in zip(self._split(cols, 1), self.groups)]
        # Pair p reads row i (s = +1) or c + i (s = -1) of [x^T; -x^T]; segments (bins) sorted.
        xt = tf.transpose(x)
        sources = tf.range(pairs) % c + c * tf.cast(self.signs < 0, tf.int32)
        order = tf.argsort(self.bins, stable=True)
        rows = tf.sparse.segment_sum(tf.concat([xt, -xt], 0), tf.gather(sources, order),
                                     tf.gather(self.bins, order), num_segments=self.rows)
        return [tf.transpose(tf.reshape(block, [m, d, -1]), [0, 2, 1])
                for block, (m, d) in zip(self._split(rows, 0), self.groups)]

    def _split(self, fused, axis):
        """The groups' blocks of a fused [rows, N] (axis 0) or [N, rows] (axis 1) matrix."""
        sizes = [m * d for m, d in self.groups]
        return [fused] if len(sizes) == 1 else tf.split(fused, sizes, axis)

    def adjoint(self, grads, axis):
        """Adjoint count sketch at the time-reversed bins: per group, its gradient with the sketch
        index on `axis` (the forward's `sketch_axis`) -> dx [N, c]."""
        gather = _adjoint_gather if in_xla_context() else _adjoint_gather_fused
        return gather(grads, self.reversed_bins, self.signs, tuple(self.groups), self.input_dim, axis)


def _adjoint_gather(grads, reversed_bins, signs, groups, c, axis):
    """sum_t s_t(i) grad_t[n, (-h_t(i)) mod d] for every location n and channel i: [N, c]."""
    start, terms = 0, []
    for (m, d), g, bins in zip(groups, grads, reversed_bins):
        if axis == 0:  # [m, N, d] -> [N, m, d]; fused into the gather
            g = tf.transpose(g, [1, 0, 2])
        picked = tf.gather(tf.reshape(g, [-1, m * d]), bins, axis=1) * signs[start:start + m * c]
        terms.append(tf.reduce_sum(tf.reshape(picked, [-1, m, c]), 1))
        start += m * c
    return tf.add_n(terms)


# Outside XLA, TF's gather along an inner axis copies element by element (~5x slower than XLA's):
# the transpose, gather, signs and sum over sketches compile to one loop.
_adjoint_gather_fused = tf.function(_adjoint_gather, jit_compile=True, reduce_retracing=True)


def count_sketch(x, hashes, signs, dims):
    """Count sketches C_t(x) (eq 3.8) of x [N, c] for every group: a list of [N, m_g, d_g] float32."""
    index = _SketchIndex(hashes, signs, dims)
    groups = index.sketches(tf.cast(x, tf.float32))
    return groups if index.sketch_axis() == 1 else [tf.transpose(g, [1, 0, 2]) for g in groups]


def _pooled_group(sketches, axis, batch, locations, wanted, dim):
    """Forward of one group (sketch index on `axis`): spectra, prefix products and
    mean_l TS_k for k in `wanted` [n, B, d]."""
    spectra = tf.unstack(tf.signal.rfft(sketches), axis=axis)  # m x [N, F], one rfft
    prefix = [spectra[0]]
    for t in range(1, wanted[-1]):
        prefix.append(prefix[-1] * spectra[t])  # P <- P o FFT(C_{t+1}(x)) (Algorithm 1, line 5)
    freqs = dim // 2 + 1
    pooled = tf.stack([tf.reduce_mean(tf.reshape(prefix[k - 1], [batch, locations, freqs]), 1)
                       for k in wanted], 0)
    return spectra, prefix, tf.signal.irfft(pooled, fft_length=[dim])


def _group_gradient(g, spectra, prefix, axis, batch, locations, wanted, dim):
    """Gradient (sketch index on `axis`) of one group's sketches at the time-reversed bins, for the
    gradient g [n, B, d] of its pooled orders (`_SketchIndex.adjoint` maps it to the input)."""
    big = tf.math.conj(tf.signal.rfft(g)) / tf.cast(locations, tf.complex64)  # G' [n, B, F]
    chain = _spectra_gradient if in_xla_context() else _spectra_gradient_fused
    d_spectra = chain(big, spectra, prefix, batch, tuple(wanted), axis)
    return tf.signal.irfft(d_spectra, fft_length=[dim])  # one irfft for all sketches


def _spectra_gradient(big, spectra, prefix, batch, wanted, axis):
    """dF'_t = conj(dF_t) of every sketch t, stacked on `axis`, from G' [n, B, F] of the orders.

    Works with conjugated quantities r' = conj(r): dF'_t = r'_t P_{t-1} and
    r'_{t-1} = [t - 1 wanted] G'_{t-1} + F_t r'_t need no conjugation of the big spectra, and
    irfft(conj(X))[n] = irfft(X)[-n mod d] is absorbed by gathering bin (-h) mod d.
    """
    freqs = tf.shape(big)[-1]
    shape = [batch, -1, freqs]  # [B, L, F] view of the [N, F] spectra
    per_order = {k: big[i][:, None, :] for i, k in enumerate(wanted)}  # [B, 1, F]
    d_spectra = [None] * len(spectra)
    r = None
    for t in range(len(spectra), 0, -1):  # 1-based sketch index
        if t in per_order:
            r = per_order[t] if r is None else r + per_order[t]
        if t > 1:
            d_spectrum = r * tf.reshape(prefix[t - 2], shape)
            r = r * tf.reshape(spectra[t - 1], shape)
        else:
            d_spectrum = tf.broadcast_to(r, tf.shape(tf.reshape(spectra[0], shape)))
        d_spectra[t - 1] = tf.reshape(d_spectrum, [-1, freqs])
    return tf.stack(d_spectra, axis)


# Outside XLA the chain above would be ~2 m full-size TF kernels, each a pass over memory; compiled,
# it is one fused loop that writes the stacked result once. Only gradient code is compiled: the
# forward pass (what an exported model serves) stays plain TF.
_spectra_gradient_fused = tf.function(_spectra_gradient, jit_compile=True, reduce_retracing=True)


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
        saved, outputs = [], []
        axis = index.sketch_axis()
        for sketches, d, w in zip(index.sketches(tf.reshape(x, [-1, c])), dims, wanted):
            spectra, prefix, out = _pooled_group(sketches, axis, batch, locations, w, d)
            saved.append((spectra, prefix))
            outputs.append(out)

        def grad(*upstream):
            grads = [_group_gradient(g, spectra, prefix, axis, batch, locations, w, d)
                     for g, (spectra, prefix), d, w in zip(upstream, saved, dims, wanted)]
            return tf.reshape(index.adjoint(grads, axis), tf.shape(x))

        return tuple(outputs), grad

    results = []
    for out in pooled(x):
        results.extend(tf.unstack(out, axis=0))
    return results


__all__ = ["draw_count_sketch_hashes", "count_sketch", "pooled_tensor_sketches"]
