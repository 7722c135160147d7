"""WKV7 in plain PyTorch: the reference that every fast kernel is tested against.

The RWKV-7 "Goose" time-mix recurrence (arXiv 2503.14456), per head, with an fp32 state S [N, N] indexed
[value i, key j] (as `cuda/wkv7_cuda.cu` of github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00, and the
`rwkv` pip package's `cuda/rwkv7.cu` keep it), for every token t:

    d_t = exp(-exp(w_t))                                   decay per key channel (w is the raw decay input)
    S_t = S_{t-1} (diag(d_t) + a_t b_t^T) + v_t k_t^T      the generalised delta rule (a = -kappa, b = kappa * a)
    y_t = S_t r_t                                          the state is read after the update

Both entry points update `state` in place and return y in the dtype of r; everything is computed in fp32.

Chunked prefill (`_chunk_terms`, derivation). Inside a chunk of L tokens that starts from the state S_0, write
g_t = d_1 * ... * d_t (elementwise, g_0 = 1) and x^(t,s) = x * g_t / g_s. By induction over t,

    S_t = S_0 diag(g_t) + sum_{s<=t} h_s (b_s^(t,s))^T + sum_{s<=t} v_s (k_s^(t,s))^T,   h_t = S_{t-1} a_t:

multiplying by diag(d_{t+1}) turns every g_t into g_{t+1}, the rank-one term adds h_{t+1} b_{t+1}^T, the input
adds v_{t+1} k_{t+1}^T. This is the WY representation of the product of the transitions diag(d) + a b^T
(flash-linear-attention's DPLR "chunk" form). Its vectors h_t solve a lower triangular system (the UT transform):

    h_t = S_0 (a_t * g_{t-1}) + sum_{s<t} h_s [a_t . b_s^(t-1,s)] + sum_{s<t} v_s [a_t . k_s^(t-1,s)]
    (I - A_b) H = A_dec S_0^T + A_k V,   so  H = W S_0^T + U  with  (I - A_b) [W | U] = [A_dec | A_k V]

and then, with R_b[t, s] = r_t . b_s^(t,s) and R_k[t, s] = r_t . k_s^(t,s) for s <= t,

    Y   = (R_dec + R_b W) S_0^T + (R_b U + R_k V)                          R_dec = r * g
    S_L = S_0 (diag(g_L) + W^T B_end) + (U^T B_end + V^T K_end)          B_end = b * g_L / g, K_end = k * g_L / g

The terms of every chunk are computed at once (for a group of chunk positions at a time, to bound memory), with
(I - A_b)^-1 by block inversion in matrix products (`_ut_inverse`); a loop over chunks (never over tokens) carries
the state, and the S_0 part of Y is one product after it. No cumulative decay is ever divided by: every ratio g_t / g_s is exp of a difference
of cumulative log-decays (float64 sums, rounded to fp32 before the exp) with an exponent <= 0, and the pairwise
scores are formed by halving (`_strict_scores`), so any decay in (0, 1] is exact to fp32 at any chunk length.
"""

from __future__ import annotations

import torch

from .checks import check_wkv7_args

CHUNK = 32  # a power of two (the pairwise scores halve it); 32 was the fastest of 16, 32, 64 on the CPU
GROUP_CHUNK_HEADS = 4096  # chunks x heads computed together: 64 MiB per [.., N, N] fp32 term at N = 64


def wkv7_decode_torch(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
) -> torch.Tensor:
    """One step for B sequences: r, w, k, v, a, b [B, H, N]; state [B, H, N, N] fp32 (value, key)."""
    check_wkv7_args(r, w, k, v, a, b, state, None, decode=True)
    r32, k32, v32, a32, b32 = (t.float() for t in (r, k, v, a, b))
    decay = torch.exp(-torch.exp(w.float()))
    sa = (state @ a32.unsqueeze(-1)).squeeze(-1)  # S a: [B, H, N] over values
    state.mul_(decay.unsqueeze(-2)).add_(sa.unsqueeze(-1) * b32.unsqueeze(-2)).add_(
        v32.unsqueeze(-1) * k32.unsqueeze(-2)
    )
    return (state @ r32.unsqueeze(-1)).squeeze(-1).to(r.dtype)


def wkv7_prefill_torch(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    *,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """Packed sequences: r, w, k, v, a, b [T_total, H, N]; state [B, H, N, N] fp32 (initial in, final out);
    cu_seqlens [B + 1] offsets of each sequence in the packed T axis (None: a single sequence). `chunk` (a power
    of two) only changes the speed and the rounding."""
    check_wkv7_args(r, w, k, v, a, b, state, cu_seqlens, decode=False)
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"wkv7: chunk must be a power of two, got {chunk}")
    T, H, N = r.shape
    bounds = torch.tensor([0, T]) if cu_seqlens is None else cu_seqlens.cpu().to(torch.int64)
    layout = _ChunkLayout(bounds, chunk)
    y = torch.zeros(T + 1, H, N, dtype=torch.float32, device=r.device)  # row T: where the padding goes
    if layout.total == 0:
        return y[:T].to(r.dtype)
    src = layout.rows.to(r.device)
    # Padding is exact: log-decay 0 keeps the state, a = b = k = 0 adds nothing, so a padded chunk is identity.
    padded = [_padded(x) for x in (r, k, v, a, b, -torch.exp(w.float()))]
    order = layout.order.to(state.device)
    S = state[order].contiguous()  # [sequences with tokens, longest first, H, N, N]
    start = 0
    for group in _groups(layout.active, max(1, GROUP_CHUNK_HEADS // H)):
        rows = src[start : start + sum(group)]
        y[rows] = _chunk_group([x[:, rows].transpose(0, 1) for x in padded], S, group)
        start += sum(group)
    state[order] = S
    return y[:T].to(r.dtype)


def _padded(x: torch.Tensor) -> torch.Tensor:
    """[T, H, N] -> [H, T + 1, N] fp32 with a zero row at T, where the padding of the chunks points. Head-major, so
    that the chunks gathered from it are [H, chunks, L, N] with dense rows."""
    return torch.cat([x.transpose(0, 1).float(), x.new_zeros(x.shape[1], 1, x.shape[2], dtype=torch.float32)], 1)


def _groups(active: list[int], most: int) -> list[list[int]]:
    """Consecutive chunk positions (their counts of active sequences) cut into groups of at most `most` chunks
    (at least one position each): memory stays bounded at any length and batch size."""
    groups, current = [], []
    for n in active:
        if current and sum(current) + n > most:
            groups.append(current)
            current = []
        current.append(n)
    return [*groups, current]


def _chunk_group(chunks: list[torch.Tensor], S: torch.Tensor, active: list[int]) -> torch.Tensor:
    """y [chunks, L, H, N] of consecutive chunk positions (r, k, v, a, b, log-decay chunks [chunks, H, L, N], stored
    position-major, `active[j]` chunks at position j); S [sequences, H, N, N] is carried through them in place."""
    y_intra, q_eff, transition, increment = _chunk_terms(*chunks)
    initial = torch.empty_like(transition)  # the state each chunk starts from
    start = 0
    for n in active:  # chunk j of the n longest sequences, stored together
        c = slice(start, start + n)
        initial[c] = S[:n]
        S[:n] = torch.baddbmm(increment[c].flatten(0, 1), S[:n].flatten(0, 1), transition[c].flatten(0, 1)).view(
            S[:n].shape
        )
        start += n
    y_intra += q_eff @ initial.transpose(-1, -2)
    return y_intra.permute(0, 2, 1, 3)


class _ChunkLayout:
    """Where each chunk of L rows comes from. Sequences are cut into chunks (the last one padded) and ordered
    longest first; the chunks are stored position-major: chunk 0 of every sequence, then chunk 1 of those that
    have one, and so on, so that the state loop works on a leading slice of the states at every step."""

    def __init__(self, bounds: torch.Tensor, L: int):
        lengths = bounds[1:] - bounds[:-1]
        counts = (lengths + L - 1) // L  # chunks per sequence
        self.order = torch.argsort(counts, descending=True, stable=True)[: int((counts > 0).sum())]
        counts, starts, lengths = counts[self.order], bounds[:-1][self.order], lengths[self.order]
        self.total = int(counts.sum())
        most = int(counts[0]) if len(counts) else 0
        self.active = (counts.unsqueeze(0) > torch.arange(most).unsqueeze(1)).sum(1).tolist()
        seq = torch.repeat_interleave(torch.arange(len(counts)), counts)  # per chunk, sequence-major
        pos = torch.arange(self.total) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        by_position = torch.argsort(pos * len(counts) + seq)
        seq, pos = seq[by_position], pos[by_position]
        offset = pos.unsqueeze(1) * L + torch.arange(L)  # [chunks, L] offsets inside the sequence
        pad_row = bounds[-1]  # the extra zero row after the packed inputs
        self.rows = torch.where(offset < lengths[seq].unsqueeze(1), starts[seq].unsqueeze(1) + offset, pad_row)


def _chunk_terms(r, k, v, a, b, log_decay):
    """Per chunk (inputs [chunks, H, L, N] fp32): y_intra [.., L, N] (what the tokens of the chunk contribute),
    q_eff [.., L, N] (y = y_intra + q_eff S_0^T), transition [.., N, N] and increment [.., N, N]
    (S_L = S_0 transition + increment). Notation of the module docstring."""
    cum = log_decay.double().cumsum(-2)  # log g_t
    cum_before = cum - log_decay.double()  # log g_{t-1}
    cum_end = cum[..., -1:, :]
    # Scores for s < t, with the ratio g_{t-1} / g_s. Queries r * d_t turn it into g_t / g_s.
    queries = torch.stack([a, r * torch.exp(log_decay)])
    scores = _strict_scores(queries, torch.stack([b, k]), cum, cum_before)  # [2, 2, .., L, L]
    a_b, a_k = scores[0, 0], scores[0, 1]
    r_b = scores[1, 0] + torch.diag_embed((r * b).sum(-1))  # s <= t: the diagonal has ratio 1
    r_k = scores[1, 1] + torch.diag_embed((r * k).sum(-1))

    a_dec = a * torch.exp(cum_before.float())
    W, U = (_ut_inverse(a_b) @ torch.cat([a_dec, a_k @ v], -1)).split(r.shape[-1], -1)

    y_intra = r_b @ U + r_k @ v
    q_eff = r * torch.exp(cum.float()) + r_b @ W
    to_end = torch.exp((cum_end - cum).float())
    b_end, k_end = b * to_end, k * to_end
    transition = torch.diag_embed(torch.exp(cum_end[..., 0, :].float())) + W.transpose(-1, -2) @ b_end
    increment = U.transpose(-1, -2) @ b_end + v.transpose(-1, -2) @ k_end
    return y_intra, q_eff, transition, increment


def _ut_inverse(A: torch.Tensor) -> torch.Tensor:
    """(I - A)^-1 for strictly lower triangular A [.., L, L] (L a power of two), by blocks: the inverse of
    [[T11, 0], [T21, T22]] is [[X11, 0], [-X22 T21 X11, X22]] with X = T^-1. Diagonal blocks of 1, 2, 4, ... rows
    are merged pairwise, all of a size at once in matrix products (torch's batched triangular solve runs one small
    LAPACK call per matrix, several times slower here). The same recursion as a triangular solve, so as stable."""
    L = A.shape[-1]
    X = torch.eye(L, dtype=A.dtype, device=A.device).expand(A.shape).clone()
    size = 1
    while size < L:
        n = L // (2 * size)
        # The n diagonal blocks of 2 * size rows, as [.., n, 2 * size, 2 * size] views.
        x = X.view(*A.shape[:-2], n, 2 * size, n, 2 * size).diagonal(dim1=-4, dim2=-2).movedim(-1, -3)
        a = A.view(*A.shape[:-2], n, 2 * size, n, 2 * size).diagonal(dim1=-4, dim2=-2).movedim(-1, -3)
        # T21 = -A21, so X21 = X22 A21 X11.
        x[..., size:, :size] = x[..., size:, size:] @ a[..., size:, :size] @ x[..., :size, :size]
        size *= 2
    return X


def _strict_scores(q: torch.Tensor, kk: torch.Tensor, cum: torch.Tensor, cum_before: torch.Tensor) -> torch.Tensor:
    """q [P, *, L, N], kk [Q, *, L, N] -> [P, Q, *, L, L]: q_t . (kk_s * exp(cb_t - c_s)) for s < t, else 0.

    Halving: the pairs (t, s) with s in the first and t in the second half of a block of 2n rows share the
    boundary m = cb at the half: exp(cb_t - c_s) = exp(cb_t - m) * exp(m - c_s), both exponents <= 0, so no
    factor overflows, and one that underflows belongs to a product below fp32's range anyway. Blocks of
    L/2, L/4, ..., 1 rows cover every s < t once, with matrix products.
    """
    P, Q = q.shape[0], kk.shape[0]
    *batch, L, N = cum.shape
    out = q.new_zeros(P, Q, *batch, L, L)
    half = L // 2
    while half >= 1:
        n = L // (2 * half)
        split = (*batch, n, 2, half, N)  # [.., block, which half, row, N]
        cb, c = cum_before.reshape(split), cum.reshape(split)
        m = cb[..., 1, :1, :]  # cb at the first row of the second half
        qh = q.reshape(P, *split)[..., 1, :, :] * torch.exp((cb[..., 1, :, :] - m).float())
        kh = kk.reshape(Q, *split)[..., 0, :, :] * torch.exp((m - c[..., 0, :, :]).float())
        blocks = qh.unsqueeze(1) @ kh.unsqueeze(0).transpose(-1, -2)  # [P, Q, .., n, half, half]
        view = out.view(P, Q, *batch, n, 2, half, n, 2, half).diagonal(dim1=-6, dim2=-3)  # [.., 2, h, 2, h, n]
        view[..., 1, :, 0, :, :].copy_(blocks.movedim(-3, -1))
        half //= 2
    return out
