"""Blocked attention of the global layers for XLA:CPU (the `blocked` backend; `banded.py` has the local
layers, `attention.py` the function), and the pieces both kernels share.

Global layers run as an online softmax over key blocks that skips the blocks no query of the block
can see (other documents of a packed row). The backward pass is written by hand and recomputes the
scores, so no T x T buffer exists in the forward or the backward pass.

XLA:CPU runs each operation over a whole array before the next starts, so a [rows, heads, T, keys]
buffer would make every softmax pass a trip to main memory. The kernel therefore loops, per row, over
key blocks and, inside, query blocks, so that the scores of a block stay in cache (each key/value block
is sliced once; the online-softmax state of the row is updated in place), with a mask only on the
block pairs that straddle a segment boundary. On other platforms the rows are vectorized.

Shapes follow `model.py`'s key; Q is the queries of one block (`Cq` of them) and S the keys of its key
block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bcmb_jax.modeling.masks import NEG, segment_spans

GLOBAL_QUERY_BLOCK = 256  # queries per block of the global kernel (scores of a block: heads x 256 x key block)
RANGE_KEY_STEP = 512  # keys per step when a query block walks its own key range (rows of several documents)
RANGE_WORK_SHARE = 0.75  # a row walks per-query-block key ranges when they cost this share of its block pairs
f32 = jnp.float32


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# ---------------------------------------------------------------------------------------------
# Shared pieces of the blocked kernels


def pad_axis(x, axis: int, before: int, after: int, fill=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, constant_values=fill)


def softmax_delta(do_BNTK, o_BNTK):
    """Per-query sum of dO * O, the term the softmax backward subtracts from dP (FlashAttention's D)."""
    return jnp.einsum("bntk,bntk->bnt", do_BNTK.astype(f32), o_BNTK.astype(f32))


def _block(x, b, start, size: int):
    """Row b, tokens [start, start + size) of a [B, N, T, ...] or [B, T] array, in one dynamic slice."""
    t_axis = 2 if x.ndim >= 3 else 1
    starts = [b] + [0] * (x.ndim - 1)
    starts[t_axis] = start
    sizes = list(x.shape)
    sizes[0], sizes[t_axis] = 1, size
    return jax.lax.dynamic_slice(x, starts, sizes)[0]


def tied_zeros(shape, tie, fill: float = 0.0):
    """A constant array that XLA cannot compute before `tie` exists.

    Loop buffers initialised from plain constants depend on nothing, and XLA:CPU's scheduler may
    create them at the start of the program, so the buffers of every layer's loops would be live
    at once. `fill + 0 * tie` (not folded for floats) pins them to the data they are for.
    """
    return jnp.full(shape, fill, f32) + 0 * tie.astype(f32)


def _over_blocks(fn, n: int, tie):
    """Stacked fn(0), ..., fn(n - 1) (a pytree of arrays with a leading axis n).

    On CPU a loop computes one block at a time (a cache-sized working set) into output buffers tied to
    `tie`; elsewhere the blocks are vectorized.
    """
    if jax.default_backend() != "cpu":
        return jax.vmap(fn)(jnp.arange(n))
    shapes = jax.eval_shape(fn, jnp.int32(0))
    outs = jax.tree.map(lambda sd: tied_zeros((n, *sd.shape), tie).astype(sd.dtype), shapes)

    def body(i, outs):
        return jax.tree.map(lambda o, r: jax.lax.dynamic_update_index_in_dim(o, r, i, 0), outs, fn(i))

    return jax.lax.fori_loop(0, n, body, outs)


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


# ---------------------------------------------------------------------------------------------
# Global layers: online softmax over the key blocks a query block can see.


def _key_block_ranges(seg_BT, Cq: int, Ck: int, nQ: int):
    """[B, nQ] first and one-past-last key block the queries of each query block may attend to."""
    lo, hi = _query_block_ranges(seg_BT, Cq, nQ)
    return lo // Ck, (hi - 1) // Ck + 1


def _global_setup(q, k, v, seg, Cq, Ck):
    B, N, T, K = q.shape
    nQ, nK = -(-T // Cq), -(-T // Ck)
    qp = pad_axis(q, 2, 0, nQ * Cq - T)
    kp, vp = (pad_axis(x, 2, 0, nK * Ck - T) for x in (k, v))
    segq = pad_axis(seg, 1, 0, nQ * Cq - T, -1)
    segk = pad_axis(seg, 1, 0, nK * Ck - T, -2)
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
        init = (tied_zeros((N, Tq), tie, NEG), tied_zeros((N, Tq), tie), tied_zeros((N, Tq, K), tie))
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
    lo = pad_axis(first, 1, 0, tail, T).reshape(B, nQ, Cq).min(-1)
    hi = pad_axis(last, 1, 0, tail, 0).reshape(B, nQ, Cq).max(-1) + 1
    return lo, hi


def _ranges_row(qp, k, v, segq, seg, lo, hi, Cq: int, T: int, b):
    """One row of the global forward pass, query block after query block, each walking only its key range."""
    N, Tq, K = qp.shape[1:]
    S = min(RANGE_KEY_STEP, round_up(T, 8))
    kp, vp = (pad_axis(x, 2, 0, S) for x in (k, v))  # a step that starts near the end never wraps or clamps
    segk = pad_axis(seg, 1, 0, S, -2)

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
        init = (tied_zeros((N, Cq), tie, NEG), tied_zeros((N, Cq), tie), tied_zeros((N, Cq, K), tie))
        m, l_NQ, acc = jax.lax.fori_loop(0, -(-(hi[b, i] - start) // S), step, init)
        o_buf, lse_buf = out
        return (jax.lax.dynamic_update_slice_in_dim(o_buf, (acc / l_NQ[..., None]).astype(qp.dtype), i * Cq, 1),
                jax.lax.dynamic_update_slice_in_dim(lse_buf, m + jnp.log(l_NQ), i * Cq, 1)), None

    tie = _block(qp, b, 0, 1)[0, 0, 0]
    init = (tied_zeros((N, Tq, K), tie).astype(qp.dtype), tied_zeros((N, Tq), tie))
    (o, lse), _ = jax.lax.scan(query_block, init, jnp.arange(Tq // Cq))
    return o[:, :T], lse[:, :T]


def _global_fwd_rule(q, k, v, seg, Cq, Ck):
    o, lse = _global_fwd(q, k, v, seg, Cq, Ck)
    return o, (q, k, v, seg, o, lse)


def _global_bwd_rule(Cq, Ck, res, do):
    q, k, v, seg, o, lse = res
    B, N, T, K = q.shape
    nQ, nK, qp, kp, vp, segq, segk, case = _global_setup(q, k, v, seg, Cq, Ck)
    dop = pad_axis(do.astype(v.dtype), 2, 0, nQ * Cq - T)
    lsep, deltap = (pad_axis(x, 2, 0, nQ * Cq - T) for x in (lse, softmax_delta(do, o)))

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

            zero = tied_zeros((N, Ck, K), tie)
            (dq, dk, dv), _ = jax.lax.scan(query_block, (dq, zero, zero), jnp.arange(nQ))
            return (dq, jax.lax.dynamic_update_slice_in_dim(dk_all, dk, j * Ck, 1),
                    jax.lax.dynamic_update_slice_in_dim(dv_all, dv, j * Ck, 1)), None

        tie = _block(dop, b, 0, 1)[0, 0, 0]
        init = (tied_zeros((N, nQ * Cq, K), tie), tied_zeros((N, nK * Ck, K), tie), tied_zeros((N, nK * Ck, K), tie))
        (dq, dk, dv), _ = jax.lax.scan(key_block, init, jnp.arange(nK))
        return dq[:, :T], dk[:, :T], dv[:, :T]

    dq, dk, dv = _over_blocks(row, B, do.reshape(-1)[0])
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


global_attention.defvjp(_global_fwd_rule, _global_bwd_rule)

