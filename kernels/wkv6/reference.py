"""WKV6 in plain PyTorch: the reference that every fast kernel is tested against.

Per head, with key index i, value index j and an fp32 state S [N, N] (the forward of RWKV-LM's wkv6 CUDA kernel,
github.com/BlinkDL/RWKV-LM, RWKV-v5/cuda/wkv6_cuda.cu, with the state carried in and out):
    y_t[j] = sum_i r_t[i] * (u[i] * k_t[i] * v_t[j] + S[i, j])
    S[i, j] <- exp(-exp(w_t[i])) * S[i, j] + k_t[i] * v_t[j]
w is the raw decay parameter (time_decay + LoRA, in the model dtype); the bonus u is used raw.
Both entry points update `state` in place and return y in the dtype of r.
"""

from __future__ import annotations

import torch

from .checks import check_wkv6_args

CHUNK = 64  # a power of two (the intra-chunk scores halve it)


def wkv6_decode_torch(
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """One step for B sequences: r, k, v, w [B, H, N]; u [H, N]; state [B, H, N, N] fp32."""
    check_wkv6_args(r, k, v, w, u, state, None, decode=True)
    r32, k32, v32 = r.float(), k.float(), v.float()
    kv = k32.unsqueeze(-1) * v32.unsqueeze(-2)  # [B, H, N, N]
    y = torch.einsum("bhi,bhij->bhj", r32, state + u.float().unsqueeze(-1) * kv)
    state.mul_(torch.exp(-torch.exp(w.float())).unsqueeze(-1)).add_(kv)
    return y.to(r.dtype)


def wkv6_prefill_torch(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed sequences: r, k, v, w [T_total, H, N]; state [B, H, N, N] fp32 (initial in, final out);
    cu_seqlens [B + 1] offsets of each sequence in the packed T axis (None: a single sequence)."""
    check_wkv6_args(r, k, v, w, u, state, cu_seqlens, decode=False)
    y = torch.empty_like(r)
    bounds = [0, r.shape[0]] if cu_seqlens is None else cu_seqlens.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        if e > s:
            y[s:e] = _chunked(r[s:e], k[s:e], v[s:e], w[s:e], u, state[b]).to(r.dtype)
    return y


def _chunked(r, k, v, w, u, S: torch.Tensor) -> torch.Tensor:
    """One sequence in chunked matrix form: a loop over chunks of CHUNK tokens, never over tokens.

    Every exponent is a sum of log-decays over a stretch of time, formed as a difference of float64
    cumulative sums and rounded to fp32 before its exp, so it is exact to fp32 even for decays near 0 or 1.
    """
    T, H, N = r.shape
    L, nc = CHUNK, -(-T // CHUNK)

    def chunks(x: torch.Tensor, dtype: torch.dtype, fill: float = 0.0) -> torch.Tensor:  # [T, H, N] -> [H, nc, L, N]
        out = torch.full((H, nc * L, N), fill, dtype=dtype, device=x.device)
        out[:, :T] = x.transpose(0, 1)  # one copy, contiguous: later reshapes stay views
        return out.view(H, nc, L, N)

    # Padding is exact: k = 0 adds nothing to the state, log-decay 0 (w = -inf) keeps it.
    r, k, v = chunks(r, torch.float32), chunks(k, torch.float32), chunks(v, torch.float32)
    log_decay = chunks(w, torch.float64, fill=float("-inf")).exp_().neg_()
    cum = log_decay.cumsum(2)  # through t, inclusive
    cum_before = cum - log_decay  # before t

    # Inside a chunk: y_t += sum_{s<t} (r_t . (k_s * decay from s+1 to t-1)) v_s
    attn = _intra_chunk(r, k, cum, cum_before)
    y = attn @ v + (r * u.float().view(H, 1, 1, N) * k).sum(-1, keepdim=True) * v

    # Across chunks: read the carried state, then fold the chunk into it.
    r_in = r * torch.exp(cum_before.float())
    k_out = k * torch.exp((cum[:, :, -1:] - cum).float())
    chunk_decay = torch.exp(cum[:, :, -1].float())  # [H, nc, N]
    for c in range(nc):
        y[:, c] += r_in[:, c] @ S
        S.mul_(chunk_decay[:, c].unsqueeze(-1)).add_(k_out[:, c].transpose(-1, -2) @ v[:, c])
    return y.permute(1, 2, 0, 3).reshape(nc * L, H, N)[:T]


def _intra_chunk(r, k, cum, cum_before) -> torch.Tensor:
    """[H, nc, L, L] scores r_t . (k_s * exp(cb_t - c_s)) for s < t (0 elsewhere), as matrix products.

    Halving: the pairs (t, s) with s in the first and t in the second half of a block of 2b rows share the
    boundary m = cb at the half: exp(cb_t - c_s) = exp(cb_t - m) * exp(m - c_s), both exponents <= 0, so no
    factor overflows and one that underflows belongs to a product below fp32's range anyway. Blocks of
    L/2, L/4, ..., 1 rows cover every s < t of an L-row chunk once: log2(L) exps per element instead of L,
    so chunks can be long (fewer steps of the loop across chunks) at any decay.
    """
    H, nc, L, N = r.shape
    attn = r.new_zeros(H, nc, L, L)
    b = L // 2
    while b >= 1:
        n = L // (2 * b)
        halves = (H, nc, n, 2, b, N)  # [.., pair block, half, row, N]
        cb, c = cum_before.reshape(halves), cum.reshape(halves)
        m = cb[:, :, :, 1, :1]  # cb at the first row of the second half
        q = r.reshape(halves)[:, :, :, 1] * torch.exp((cb[:, :, :, 1] - m).float())
        kk = k.reshape(halves)[:, :, :, 0] * torch.exp((m - c[:, :, :, 0]).float())
        blocks = attn.view(H, nc, n, 2, b, n, 2, b).diagonal(dim1=2, dim2=5)[:, :, 1, :, 0]  # [H, nc, b, b, n]
        blocks.copy_((q @ kk.transpose(-1, -2)).permute(0, 1, 3, 4, 2))
        b //= 2
    return attn
