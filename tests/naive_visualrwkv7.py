"""A naive float64 VisualRWKV-7, written for the tests apart from the plugin: how the reference evaluates.

github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/model.py (RWKV_Tmix_x070, RWKV_CMix_x070, Block,
RWKV.forward with its left pads, MLPWithContextGating, preparing_embedding, generate) and arXiv 2503.14456
(RWKV-7). For every new token the whole sequence is run again from a zero state, after p = (16 - T % 16) % 16 rows
of emb(261); the recurrence is a plain loop over tokens; nothing is kept between steps. Everything here is its
own code: lerps, LoRAs, GroupNorm, the WKV7 update, the projector and the image-row placement.
"""

from __future__ import annotations

import torch

PAD, MULTIPLE, STOP = 261, 16, 261
IMAGE_ID = 65535  # the reference's placeholder id, one per image row
D = torch.float64


def f64(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(D) for k, v in sd.items()}


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def softplus(x):
    return torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)


def time_mix(p: dict, x: torch.Tensor, v_first, layer: int, heads: int):
    """x [T, C] (ln1 output) -> (out [T, C], v_first [T, C]) with a per-token loop over the state."""
    T, C = x.shape
    N = C // heads
    prev = torch.cat([torch.zeros(1, C, dtype=D), x[:-1]])
    dx = prev - x
    mixed = {n: x + dx * p[f"x_{n}"].reshape(C) for n in "rwkvag"}
    r = mixed["r"] @ p["receptance.weight"].T
    k = mixed["k"] @ p["key.weight"].T
    v = mixed["v"] @ p["value.weight"].T
    z = p["w0"].reshape(C) + torch.tanh(mixed["w"] @ p["w1"]) @ p["w2"]
    w = -softplus(-z) - 0.5
    if layer == 0:
        v_first = v
    else:
        v = v + (v_first - v) * sigmoid(p["v0"].reshape(C) + (mixed["v"] @ p["v1"]) @ p["v2"])
    a = sigmoid(p["a0"].reshape(C) + (mixed["a"] @ p["a1"]) @ p["a2"])
    g = sigmoid(mixed["g"] @ p["g1"]) @ p["g2"]
    kk = (k * p["k_k"].reshape(C)).reshape(T, heads, N)
    kk = kk / kk.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    k = k * (1 + (a - 1) * p["k_a"].reshape(C))
    decay = torch.exp(-torch.exp(w))
    rh, kh, vh, ah, dh = (t.reshape(T, heads, N) for t in (r, k, v, a, decay))
    y = torch.zeros(T, heads, N, dtype=D)
    for h in range(heads):
        S = torch.zeros(N, N, dtype=D)  # S[i, j]: value i, key j
        for t in range(T):
            removal, write = -kk[t, h], kk[t, h] * ah[t, h]
            S = S * dh[t, h][None, :] + torch.outer(S @ removal, write) + torch.outer(vh[t, h], kh[t, h])
            y[t, h] = S @ rh[t, h]
    # GroupNorm: one group per head, eps 1e-5 * 8^2
    mu = y.mean(-1, keepdim=True)
    var = ((y - mu) ** 2).mean(-1, keepdim=True)
    y = ((y - mu) / torch.sqrt(var + 64e-5)).reshape(T, C) * p["ln_x.weight"] + p["ln_x.bias"]
    bonus = (rh * kh * p["r_k"].reshape(heads, N)).sum(-1, keepdim=True) * vh
    return ((y + bonus.reshape(T, C)) * g) @ p["output.weight"].T, v_first


def channel_mix(p: dict, x: torch.Tensor) -> torch.Tensor:
    prev = torch.cat([torch.zeros(1, x.shape[1], dtype=D), x[:-1]])
    k = torch.relu((x + (prev - x) * p["x_k"].reshape(-1)) @ p["key.weight"].T) ** 2
    return k @ p["value.weight"].T


def lm_logits(lm: dict, rows: torch.Tensor) -> torch.Tensor:
    """The x070 language model (unprefixed float64 weights) on embedding rows [T, C] -> last-row logits [V]."""
    n_layer = 1 + max(int(k.split(".")[1]) for k in lm if k.startswith("blocks."))
    heads = lm["blocks.0.att.r_k"].shape[0]
    x = layer_norm(rows, lm["blocks.0.ln0.weight"], lm["blocks.0.ln0.bias"])
    v_first = None
    for i in range(n_layer):
        att = {k[len(f"blocks.{i}.att.") :]: v for k, v in lm.items() if k.startswith(f"blocks.{i}.att.")}
        ffn = {k[len(f"blocks.{i}.ffn.") :]: v for k, v in lm.items() if k.startswith(f"blocks.{i}.ffn.")}
        out, v_first = time_mix(
            att, layer_norm(x, lm[f"blocks.{i}.ln1.weight"], lm[f"blocks.{i}.ln1.bias"]), v_first, i, heads
        )
        x = x + out
        x = x + channel_mix(ffn, layer_norm(x, lm[f"blocks.{i}.ln2.weight"], lm[f"blocks.{i}.ln2.bias"]))
    return layer_norm(x[-1], lm["ln_out.weight"], lm["ln_out.bias"]) @ lm["head.weight"].T


def project(proj: dict, feats: torch.Tensor) -> torch.Tensor:
    """The context-gated projector LN(W_o (f * sigmoid(W_g f))) (or proj.weight alone): [n, D] -> [n, C]."""
    if "weight" in proj:
        return feats @ proj["weight"].T
    gated = feats * sigmoid(feats @ proj["gate.weight"].T)
    return layer_norm(gated @ proj["o_proj.weight"].T, proj["ln_v.weight"], proj["ln_v.bias"])


def prompt_rows(lm: dict, proj: dict, ids: list[int], feats: list[torch.Tensor]) -> torch.Tensor:
    """emb(ids) with the k-th 65535 placeholder row replaced by the k-th projected image row, row-major over
    the images in order (the reference's boolean-mask assignment)."""
    rows = lm["emb.weight"][torch.tensor(ids)].clone()
    if feats:
        image = project(proj, torch.cat([f.detach().to(D) for f in feats]))
        mask = torch.tensor(ids) == IMAGE_ID
        assert int(mask.sum()) == image.shape[0], "placeholders and image rows differ"
        rows[mask] = image
    return rows


def padded_logits(lm: dict, rows: torch.Tensor) -> torch.Tensor:
    """Last-row logits of `rows` after the reference's left pads for its length."""
    p = (MULTIPLE - rows.shape[0] % MULTIPLE) % MULTIPLE
    pads = lm["emb.weight"][PAD].expand(p, -1)
    return lm_logits(lm, torch.cat([pads, rows]))


def greedy(sd: dict, ids: list[int], feats: list[torch.Tensor], max_new_tokens: int) -> list[int]:
    """The reference's generate: full padded re-run per token, argmax, stop at 261 (not returned)."""
    sd = f64(sd)
    lm = {k[5:]: v for k, v in sd.items() if k.startswith("rwkv.")}
    proj = {k[5:]: v for k, v in sd.items() if k.startswith("proj.")}
    rows = prompt_rows(lm, proj, ids, feats)
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(padded_logits(lm, rows).argmax())
        if token == STOP:
            break
        out.append(token)
        rows = torch.cat([rows, lm["emb.weight"][token][None]])
    return out
