"""Blocked attention kernels for XLA:CPU: the `blocked` backend (see `attention.py` for the function).

Local layers run as banded query blocks, O(T * window) time and memory; global layers as an
online softmax over key blocks that skips the blocks no query of the block can see (other
documents of a packed row). Both have a hand-written backward pass that recomputes the scores,
so no T x T buffer exists in the forward or the backward pass.

XLA:CPU runs each operation over a whole array before the next starts, so a [rows, heads, T, keys]
buffer would make every softmax pass a trip to main memory. The kernels therefore loop over blocks
so that the scores of a block stay in cache: local layers over (row, query block) pairs, global
layers per row over key blocks and, inside, query blocks (each key/value block is sliced once; the
online-softmax state of the row is updated in place), with a mask only on the block pairs that
straddle a segment boundary. On other platforms the blocks are vectorized.

Shapes follow `model.py`'s key; Q is the queries of one block (`C` or `Cq` of them) and S the keys of
its window or key block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bcmb_jax.modeling.masks import NEG, segment_spans

LOCAL_BLOCKS_PER_STEP = 4  # local query blocks per loop step on CPU
GLOBAL_QUERY_BLOCK = 256  # queries per block of the global kernel (scores of a block: heads x 256 x key block)
RANGE_KEY_STEP = 512  # keys per step when a query block walks its own key range (rows of several documents)
RANGE_WORK_SHARE = 0.75  # a row walks per-query-block key ranges when they cost this share of its block pairs
f32 = jnp.float32


def blocked_attention(q_BNTK: jax.Array, k_BNTK: jax.Array, v_BNTK: jax.Array, seg_BT: jax.Array, *,
                      window: int | None, scale: float, local_chunk: int = 64, global_chunk: int = 1024):
    """Attention of heads-first q/k/v_BNTK; `local_chunk` query block of the local layers (>= window),
    `global_chunk` key block of the global ones."""
    q_BNTK = q_BNTK * jnp.asarray(scale, q_BNTK.dtype)
    T = q_BNTK.shape[2]
    if window is not None:
        if local_chunk < window:
            raise ValueError(f"local chunk {local_chunk} must be >= the half window {window}")
        return local_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, window, min(local_chunk, _round_up(T, 8)))
    k_block = min(global_chunk, _round_up(T, 8))
    return global_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, min(GLOBAL_QUERY_BLOCK, k_block), k_block)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m

# ---------------------------------------------------------------------------------------------
# Shared pieces of the blocked kernels


def _pad_axis(x, axis: int, before: int, after: int, fill=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, constant_values=fill)


def _block(x, b, start, size: int):
    """Row b, tokens [start, start + size) of a [B, N, T, ...] or [B, T] array, in one dynamic slice."""
    t_axis = 2 if x.ndim >= 3 else 1
    starts = [b] + [0] * (x.ndim - 1)
    starts[t_axis] = start
    sizes = list(x.shape)
    sizes[0], sizes[t_axis] = 1, size
    return jax.lax.dynamic_slice(x, starts, sizes)[0]


def _tied_zeros(shape, tie, fill: float = 0.0):
    """A constant array that XLA cannot compute before `tie` exists.

    Loop buffers initialised from plain constants depend on nothing, and XLA:CPU's scheduler may
    create them at the start of the program, so the buffers of every layer's loops would be live
    at once. `fill + 0 * tie` (not folded for floats) pins them to the data they are for.
    """
    return jnp.full(shape, fill, f32) + 0 * tie.astype(f32)


def _over_blocks(fn, n: int, tie, per_step: int = 1):
    """Stacked fn(0), ..., fn(n - 1) (a pytree of arrays with a leading axis n).

    On CPU a loop computes `per_step` blocks at a time (a cache-sized working set) into output
    buffers tied to `tie`; elsewhere the blocks are vectorized.
    """
    if jax.default_backend() != "cpu":
        return jax.vmap(fn)(jnp.arange(n))
    per_step = per_step if n % per_step == 0 else 1
    step = jax.vmap(fn) if per_step > 1 else (lambda idx: jax.tree.map(lambda x: x[None], fn(idx[0])))
    shapes = jax.eval_shape(step, jnp.zeros(per_step, jnp.int32))
    outs = jax.tree.map(lambda sd: _tied_zeros((n, *sd.shape[1:]), tie).astype(sd.dtype), shapes)

    def body(s, outs):
        res = step(s * per_step + jnp.arange(per_step))
        return jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, s * per_step, 0), outs, res)

    return jax.lax.fori_loop(0, n // per_step, body, outs)


def _unblock(x, B: int, n: int, T: int):
    """[B * n, N, C, ...] per-block results -> [B, N, T, ...] (dropping the padded tail)."""
    _, N, C = x.shape[:3]
    x = x.reshape(B, n, N, C, *x.shape[3:])
    x = jnp.moveaxis(x, 1, 2).reshape(B, N, n * C, *x.shape[4:])
    return x[:, :, :T]


def _scores_keys_first(q_NQK, k_NSK):
    return jnp.einsum("nsk,nqk->nsq", k_NSK, q_NQK, preferred_element_type=f32)


def _softmax_grads(s_NSQ, ok_SQ, lse_NQ, do_NQK, delta_NQ, v_NSK):
    """Recomputed probabilities and score gradients of one block, keys first: (p_NSQ, ds_NSQ).

    Keys first, dk and dv are plain GEMMs and only dq contracts a left operand's middle axis, the
    form XLA:CPU runs on a slower path (the backward of a block pair is ~25% faster than queries first).
    """
    p = jnp.exp((s_NSQ if ok_SQ is True else jnp.where(ok_SQ, s_NSQ, NEG)) - lse_NQ[:, None, :])
    dp = jnp.einsum("nsk,nqk->nsq", v_NSK, do_NQK, preferred_element_type=f32)
    return p, p * (dp - delta_NQ[:, None, :])


def _block_grads(p_NSQ, ds_NSQ, q_NQK, k_NSK, do_NQK):
    """dq, dk, dv of one block from its keys-first probabilities and score gradients."""
    ds_NSQ = ds_NSQ.astype(q_NQK.dtype)
    dq = jnp.einsum("nsq,nsk->nqk", ds_NSQ, k_NSK, preferred_element_type=f32)
    dk = jnp.einsum("nsq,nqk->nsk", ds_NSQ, q_NQK, preferred_element_type=f32)
    dv = jnp.einsum("nsq,nqk->nsk", p_NSQ.astype(do_NQK.dtype), do_NQK, preferred_element_type=f32)
    return dq, dk, dv


def _delta(do_BNTK, o_BNTK):
    return jnp.einsum("bntk,bntk->bnt", do_BNTK.astype(f32), o_BNTK.astype(f32))


# ---------------------------------------------------------------------------------------------
# Local layers: each query block of C tokens against its window of C + 2w keys.


def _local_setup(k, v, seg, w: int, C: int):
    B, N, T, K = k.shape
    nC = -(-T // C)
    tail = nC * C - T
    # Keys padded by w on both sides (segment -2 matches nothing): block i's window starts at i*C.
    kp, vp = (_pad_axis(x, 2, w, tail + w) for x in (k, v))
    segk = _pad_axis(seg, 1, w, tail + w, -2)
    segq = _pad_axis(seg, 1, 0, tail, -1)  # -1: padding added here; it matches only itself
    a = jnp.arange(C)[:, None]
    b = jnp.arange(C + 2 * w)[None, :]
    band_QS = jnp.abs(b - w - a) <= w  # key b of the window is token i*C - w + b; query a is i*C + a
    return nC, kp, vp, segq, segk, band_QS


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def local_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, window: int, chunk: int):
    """Banded attention (q pre-scaled): |i - j| <= window inside a segment; O(T * (chunk + 2 window))."""
    return _local_fwd(q_BNTK, k_BNTK, v_BNTK, seg_BT, window, chunk)[0]


def _local_fwd(q, k, v, seg, w, C):
    B, N, T, K = q.shape
    nC, S = -(-T // C), C + 2 * w
    Lk = max(nC * C, S)  # keys are padded only when T is not a multiple of C or shorter than a window
    qp = _pad_axis(q, 2, 0, nC * C - T)
    kp, vp = (_pad_axis(x, 2, 0, Lk - T) for x in (k, v))
    segq = _pad_axis(seg, 1, 0, nC * C - T, -1)
    segk = _pad_axis(seg, 1, 0, Lk - T, -2)
    a_QS = jnp.arange(C)[:, None] - jnp.arange(S)[None, :]

    def one(idx):
        b, i = idx // nC, idx % nC
        # Window of S keys from i*C - w, moved inside [0, Lk) at the edges (it still holds every key
        # within w of the block's queries); the band is then |key - query| <= w in row positions.
        start = jnp.clip(i * C - w, 0, Lk - S)
        q_NQK = _block(qp, b, i * C, C)
        k_NSK, v_NSK = _block(kp, b, start, S), _block(vp, b, start, S)
        band = jnp.abs(a_QS + (i * C - start)) <= w
        ok_QS = band & (_block(segq, b, i * C, C)[:, None] == _block(segk, b, start, S)[None, :])
        s = jnp.where(ok_QS, jnp.einsum("nqk,nsk->nqs", q_NQK, k_NSK, preferred_element_type=f32), NEG)
        m = s.max(-1)
        p = jnp.exp(s - m[..., None])
        l_NQ = p.sum(-1)
        o = jnp.einsum("nqs,nsk->nqk", p.astype(v.dtype), v_NSK, preferred_element_type=f32) / l_NQ[..., None]
        return o.astype(q.dtype), m + jnp.log(l_NQ)

    o, lse = _over_blocks(one, B * nC, q.reshape(-1)[0], LOCAL_BLOCKS_PER_STEP)
    return _unblock(o, B, nC, T), _unblock(lse, B, nC, T)


def _local_fwd_rule(q, k, v, seg, w, C):
    o, lse = _local_fwd(q, k, v, seg, w, C)
    return o, (q, k, v, seg, o, lse)


def _local_bwd_rule(w, C, res, do):
    q, k, v, seg, o, lse = res
    B, N, T, K = q.shape
    nC, kp, vp, segq, segk, band = _local_setup(k, v, seg, w, C)
    tail = nC * C - T
    qp, dop = _pad_axis(q, 2, 0, tail), _pad_axis(do.astype(v.dtype), 2, 0, tail)
    lsep, deltap = _pad_axis(lse, 2, 0, tail), _pad_axis(_delta(do, o), 2, 0, tail)
    S = C + 2 * w

    def one(idx):
        b, i = idx // nC, idx % nC
        q_NQK, do_NQK = _block(qp, b, i * C, C), _block(dop, b, i * C, C)
        k_NSK, v_NSK = _block(kp, b, i * C, S), _block(vp, b, i * C, S)
        ok_SQ = band.T & (_block(segk, b, i * C, S)[:, None] == _block(segq, b, i * C, C)[None, :])
        p, ds = _softmax_grads(_scores_keys_first(q_NQK, k_NSK), ok_SQ, _block(lsep, b, i * C, C), do_NQK,
                               _block(deltap, b, i * C, C), v_NSK)
        return _block_grads(p, ds, q_NQK, k_NSK, do_NQK)

    dq, dk_win, dv_win = _over_blocks(one, B * nC, do.reshape(-1)[0])

    def fold(x_win):
        # Window i covers padded key positions [i*C, i*C + C + 2w): add the overlapping windows back.
        x = x_win.reshape(B, nC, N, S, K)
        y = _tied_zeros((B, N, nC * C + 2 * w, K), x_win.reshape(-1)[0])
        for part in range(-(-S // C)):  # pieces of C keys (the last may be shorter)
            lo, hi = part * C, min(S, (part + 1) * C)
            piece = jnp.moveaxis(x[:, :, :, lo:hi], 1, 2)  # [B, N, nC, hi - lo, K]
            piece = _pad_axis(piece, 3, 0, C - (hi - lo)).reshape(B, N, nC * C, K)
            # flat index f of this piece is padded key position f + lo (lax.pad crops when negative)
            y = y + jax.lax.pad(piece, jnp.zeros((), f32), [(0, 0, 0), (0, 0, 0), (lo, 2 * w - lo, 0), (0, 0, 0)])
        return y[:, :, w:w + T]

    return (_unblock(dq, B, nC, T).astype(q.dtype), fold(dk_win).astype(k.dtype), fold(dv_win).astype(v.dtype),
            None)


local_attention.defvjp(_local_fwd_rule, _local_bwd_rule)


# ---------------------------------------------------------------------------------------------
# Global layers: online softmax over the key blocks a query block can see.


def _key_block_ranges(seg_BT, Cq: int, Ck: int, nQ: int):
    """[B, nQ] first and one-past-last key block the queries of each query block may attend to."""
    lo, hi = _query_block_ranges(seg_BT, Cq, nQ)
    return lo // Ck, (hi - 1) // Ck + 1


def _global_setup(q, k, v, seg, Cq, Ck):
    B, N, T, K = q.shape
    nQ, nK = -(-T // Cq), -(-T // Ck)
    qp = _pad_axis(q, 2, 0, nQ * Cq - T)
    kp, vp = (_pad_axis(x, 2, 0, nK * Ck - T) for x in (k, v))
    segq = _pad_axis(seg, 1, 0, nQ * Cq - T, -1)
    segk = _pad_axis(seg, 1, 0, nK * Ck - T, -2)
    lo, hi = _key_block_ranges(seg, Cq, Ck, nQ)
    j = jnp.arange(nK)
    visit = (lo[:, :, None] <= j) & (j < hi[:, :, None])  # [B, nQ, nK]
    # Block pairs inside a single segment need no mask (every pair of a fixed-length row).
    sq, sk = segq.reshape(B, nQ, Cq), segk.reshape(B, nK, Ck)
    q_lo, q_hi, k_lo, k_hi = sq.min(-1), sq.max(-1), sk.min(-1), sk.max(-1)
    one_segment = (q_lo == q_hi)[:, :, None] & (k_lo == k_hi)[:, None, :] & (q_lo[:, :, None] == k_lo[:, None, :])
    # 0: skip the pair, 1: attend without a mask, 2: attend with the segment mask
    case = jnp.where(visit, jnp.where(one_segment, 1, 2), 0)
    return nQ, nK, qp, kp, vp, segq, segk, case


def _online_softmax(state, s_NQS, v_NSK):
    """One key block into a query block's online-softmax state (running max m, sum l, unnormalised output)."""
    m, l_NQ, acc = state
    m_new = jnp.maximum(m, s_NQS.max(-1))
    p = jnp.exp(s_NQS - m_new[..., None])
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum("nqs,nsk->nqk", p.astype(v_NSK.dtype), v_NSK, preferred_element_type=f32)
    return m_new, l_NQ * corr + p.sum(-1), acc * corr[..., None] + pv


def _pair_switch(case, skip, plain, masked, carry):
    """Runs the branch of a block pair; when vectorized (no real branches) always the masked one."""
    if jax.default_backend() == "cpu":
        return jax.lax.switch(case, [skip, plain, masked], carry)
    return jax.lax.cond(case > 0, masked, skip, carry)




@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def global_attention(q_BNTK, k_BNTK, v_BNTK, seg_BT, q_block: int, k_block: int):
    """Full attention inside segments (q pre-scaled); O(T * block) memory in both passes.

    Per row: an outer loop over key blocks and an inner loop over query blocks, so each key/value
    block is sliced once and the online-softmax state of the row (m, l, acc) is updated in place.
    """
    return _global_fwd(q_BNTK, k_BNTK, v_BNTK, seg_BT, q_block, k_block)[0]


def _global_fwd(q, k, v, seg, Cq, Ck):
    B, N, T, K = q.shape
    nQ, nK, qp, kp, vp, segq, segk, case = _global_setup(q, k, v, seg, Cq, Ck)

    def row(b):
        def key_block(carry, j):
            k_NSK, v_NSK = _block(kp, b, j * Ck, Ck), _block(vp, b, j * Ck, Ck)
            segk_S = _block(segk, b, j * Ck, Ck)

            def query_block(carry, i):
                def attend(state, masked: bool):
                    s = jnp.einsum("nqk,nsk->nqs", _block(qp, b, i * Cq, Cq), k_NSK, preferred_element_type=f32)
                    if masked:
                        s = jnp.where(_block(segq, b, i * Cq, Cq)[:, None] == segk_S[None, :], s, NEG)
                    return _online_softmax(state, s, v_NSK)

                # The branches see only this query block's state; the row buffers are updated in place.
                state = tuple(jax.lax.dynamic_slice_in_dim(x, i * Cq, Cq, 1) for x in carry)
                state = _pair_switch(case[b, i, j], lambda st: st, functools.partial(attend, masked=False),
                                     functools.partial(attend, masked=True), state)
                return tuple(jax.lax.dynamic_update_slice_in_dim(x, y, i * Cq, 1) for x, y in zip(carry, state)), None

            return jax.lax.scan(query_block, carry, jnp.arange(nQ))[0], None

        Tq, tie = nQ * Cq, _block(qp, b, 0, 1)[0, 0, 0]
        init = (_tied_zeros((N, Tq), tie, NEG), _tied_zeros((N, Tq), tie), _tied_zeros((N, Tq, K), tie))
        (m, l_NQ, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nK))
        return (acc / l_NQ[..., None])[:, :T].astype(q.dtype), (m + jnp.log(l_NQ))[:, :T]

    if jax.default_backend() != "cpu":  # vectorized rows: both branches of a cond would run
        return _over_blocks(row, B, q.reshape(-1)[0])
    # A row of several documents walks, per query block, just the keys of its documents (its own range, in
    # steps of RANGE_KEY_STEP keys from the range's start); a row of one document keeps the block pairs.
    lo, hi = _query_block_ranges(seg, Cq, nQ)
    by_range = walks_ranges(lo, hi, case, Ck)
    ranged = functools.partial(_ranges_row, qp, k, v, segq, seg, lo, hi, Cq, T)
    tie = q.reshape(-1)[0]
    return jax.lax.cond(by_range.any(),  # rows of one document only: exactly the block-pair program
                        lambda: _over_blocks(lambda b: jax.lax.cond(by_range[b], ranged, row, b), B, tie),
                        lambda: _over_blocks(row, B, tie))


def walks_ranges(lo, hi, case, Ck: int):
    """[B] whether each row's query blocks walk their own key ranges: when those cost at most
    RANGE_WORK_SHARE of the row's block pairs (rows of several documents; not a row of one)."""
    range_work = (-(-(hi - lo) // RANGE_KEY_STEP) * RANGE_KEY_STEP).sum(-1)
    return range_work <= RANGE_WORK_SHARE * (case > 0).sum((1, 2)) * Ck


def _query_block_ranges(seg_BT, Cq: int, nQ: int):
    """[B, nQ] first and one-past-last key (a token index) the queries of each query block may attend to."""
    B, T = seg_BT.shape
    first, last = segment_spans(seg_BT)
    tail = nQ * Cq - T
    lo = _pad_axis(first, 1, 0, tail, T).reshape(B, nQ, Cq).min(-1)
    hi = _pad_axis(last, 1, 0, tail, 0).reshape(B, nQ, Cq).max(-1) + 1
    return lo, hi


def _ranges_row(qp, k, v, segq, seg, lo, hi, Cq: int, T: int, b):
    """One row of the global forward pass, query block after query block, each walking only its key range."""
    N, Tq, K = qp.shape[1:]
    S = min(RANGE_KEY_STEP, _round_up(T, 8))
    kp, vp = (_pad_axis(x, 2, 0, S) for x in (k, v))  # a step that starts near the end never wraps or clamps
    segk = _pad_axis(seg, 1, 0, S, -2)

    def query_block(out, i):
        q_NQK, segq_Q = _block(qp, b, i * Cq, Cq), _block(segq, b, i * Cq, Cq)
        start = lo[b, i]

        def step(j, state):
            at = start + j * S
            k_NSK, v_NSK = _block(kp, b, at, S), _block(vp, b, at, S)
            s = jnp.einsum("nqk,nsk->nqs", q_NQK, k_NSK, preferred_element_type=f32)
            s = jnp.where(segq_Q[:, None] == _block(segk, b, at, S)[None, :], s, NEG)
            return _online_softmax(state, s, v_NSK)

        tie = q_NQK[0, 0, 0]
        init = (_tied_zeros((N, Cq), tie, NEG), _tied_zeros((N, Cq), tie), _tied_zeros((N, Cq, K), tie))
        m, l_NQ, acc = jax.lax.fori_loop(0, -(-(hi[b, i] - start) // S), step, init)
        o_buf, lse_buf = out
        return (jax.lax.dynamic_update_slice_in_dim(o_buf, (acc / l_NQ[..., None]).astype(qp.dtype), i * Cq, 1),
                jax.lax.dynamic_update_slice_in_dim(lse_buf, m + jnp.log(l_NQ), i * Cq, 1)), None

    tie = _block(qp, b, 0, 1)[0, 0, 0]
    init = (_tied_zeros((N, Tq, K), tie).astype(qp.dtype), _tied_zeros((N, Tq), tie))
    (o, lse), _ = jax.lax.scan(query_block, init, jnp.arange(Tq // Cq))
    return o[:, :T], lse[:, :T]


def _global_fwd_rule(q, k, v, seg, Cq, Ck):
    o, lse = _global_fwd(q, k, v, seg, Cq, Ck)
    return o, (q, k, v, seg, o, lse)


def _global_bwd_rule(Cq, Ck, res, do):
    q, k, v, seg, o, lse = res
    B, N, T, K = q.shape
    nQ, nK, qp, kp, vp, segq, segk, case = _global_setup(q, k, v, seg, Cq, Ck)
    dop = _pad_axis(do.astype(v.dtype), 2, 0, nQ * Cq - T)
    lsep, deltap = (_pad_axis(x, 2, 0, nQ * Cq - T) for x in (lse, _delta(do, o)))

    def row(b):
        def key_block(carry, j):
            dq, dk_all, dv_all = carry
            k_NSK, v_NSK = _block(kp, b, j * Ck, Ck), _block(vp, b, j * Ck, Ck)
            segk_S = _block(segk, b, j * Ck, Ck)

            def query_block(carry, i):
                def attend(state, masked: bool):
                    dq_i, dk, dv = state
                    q_NQK, do_NQK = _block(qp, b, i * Cq, Cq), _block(dop, b, i * Cq, Cq)
                    ok_SQ = segk_S[:, None] == _block(segq, b, i * Cq, Cq)[None, :] if masked else True
                    p, ds = _softmax_grads(_scores_keys_first(q_NQK, k_NSK), ok_SQ, _block(lsep, b, i * Cq, Cq),
                                           do_NQK, _block(deltap, b, i * Cq, Cq), v_NSK)
                    dq_b, dk_b, dv_b = _block_grads(p, ds, q_NQK, k_NSK, do_NQK)
                    return dq_i + dq_b, dk + dk_b, dv + dv_b

                dq, dk, dv = carry
                state = (jax.lax.dynamic_slice_in_dim(dq, i * Cq, Cq, 1), dk, dv)
                dq_i, dk, dv = _pair_switch(case[b, i, j], lambda st: st, functools.partial(attend, masked=False),
                                            functools.partial(attend, masked=True), state)
                return (jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * Cq, 1), dk, dv), None

            zero = _tied_zeros((N, Ck, K), tie)
            (dq, dk, dv), _ = jax.lax.scan(query_block, (dq, zero, zero), jnp.arange(nQ))
            return (dq, jax.lax.dynamic_update_slice_in_dim(dk_all, dk, j * Ck, 1),
                    jax.lax.dynamic_update_slice_in_dim(dv_all, dv, j * Ck, 1)), None

        tie = _block(dop, b, 0, 1)[0, 0, 0]
        init = (_tied_zeros((N, nQ * Cq, K), tie), _tied_zeros((N, nK * Ck, K), tie), _tied_zeros((N, nK * Ck, K), tie))
        (dq, dk, dv), _ = jax.lax.scan(key_block, init, jnp.arange(nK))
        return dq[:, :T], dk[:, :T], dv[:, :T]

    dq, dk, dv = _over_blocks(row, B, do.reshape(-1)[0])
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


global_attention.defvjp(_global_fwd_rule, _global_bwd_rule)

