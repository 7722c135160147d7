"""An independent, deliberately naive VisualRWKV-6 in float64, written for the tests from the
paper (arXiv 2406.13362), RWKV-6 (arXiv 2404.05892) and the reference repository (github.com/howard-hou/VisualRWKV,
VisualRWKV-v6/v6.0/src/model.py).

It evaluates like the reference evaluate.py: the whole sequence is re-run for every new token, with the
image scan applied by flipping / transposing the patch rows around each block, and no recurrent state.
"""

import math

import torch
import torch.nn.functional as F

from visualrwkv_eval.model.tokenizer import STOP_TOKEN


def layer_norm(x, sd, name, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def shifted(x):
    return torch.cat([torch.zeros_like(x[:1]), x[:-1]])


def time_mix(x, sd, p):
    T, C = x.shape
    H, N = sd[f"{p}time_faaaa"].shape
    xx = shifted(x) - x
    xxx = x + xx * sd[f"{p}time_maa_x"][0, 0]
    lora = torch.tanh(xxx @ sd[f"{p}time_maa_w1"]).view(T, 5, -1)
    mw, mk, mv, mr, mg = (lora[:, i] @ sd[f"{p}time_maa_w2"][i] for i in range(5))
    xw = x + xx * (sd[f"{p}time_maa_w"][0, 0] + mw)
    xk = x + xx * (sd[f"{p}time_maa_k"][0, 0] + mk)
    xv = x + xx * (sd[f"{p}time_maa_v"][0, 0] + mv)
    xr = x + xx * (sd[f"{p}time_maa_r"][0, 0] + mr)
    xg = x + xx * (sd[f"{p}time_maa_g"][0, 0] + mg)
    r = (xr @ sd[f"{p}receptance.weight"].T).view(T, H, N)
    k = (xk @ sd[f"{p}key.weight"].T).view(T, H, N)
    v = (xv @ sd[f"{p}value.weight"].T).view(T, H, N)
    g = F.silu(xg @ sd[f"{p}gate.weight"].T)
    w = sd[f"{p}time_decay"][0, 0] + torch.tanh(xw @ sd[f"{p}time_decay_w1"]) @ sd[f"{p}time_decay_w2"]
    decay = torch.exp(-torch.exp(w)).view(T, H, N)
    u = sd[f"{p}time_faaaa"]
    S = torch.zeros(H, N, N, dtype=x.dtype)
    ys = []
    for t in range(T):
        kv = k[t][:, :, None] * v[t][:, None, :]
        ys.append(torch.einsum("hi,hij->hj", r[t], u[:, :, None] * kv + S))
        S = decay[t][:, :, None] * S + kv
    y = torch.stack(ys)  # [T, H, N]
    mean, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
    y = ((y - mean) / torch.sqrt(var + 64e-5)).reshape(T, C) * sd[f"{p}ln_x.weight"] + sd[f"{p}ln_x.bias"]
    return (y * g) @ sd[f"{p}output.weight"].T


def channel_mix(x, sd, p):
    xx = shifted(x) - x
    k = torch.relu((x + xx * sd[f"{p}time_maa_k"][0, 0]) @ sd[f"{p}key.weight"].T) ** 2
    r = torch.sigmoid((x + xx * sd[f"{p}time_maa_r"][0, 0]) @ sd[f"{p}receptance.weight"].T)
    return r * (k @ sd[f"{p}value.weight"].T)


def scan_in(x, s, P, layer, scan):
    """Reorder the P patch rows starting at s as the given scan reads them in this layer (bidirectional:
    VisualRWKV-v6/v6.0/src/model.py, bidirectional_forward; the others: VisualRWKV-v5/v5.1/src/model.py)."""
    g = math.isqrt(P)
    x = x.clone()
    if scan == "multidirectional" and layer % 4 in (2, 3):
        x[s : s + P] = x[s : s + P].view(g, g, -1).transpose(0, 1).reshape(P, -1)
    if scan in ("bidirectional", "multidirectional") and layer % 2 == 1:
        x[s : s + P] = x[s : s + P].flip(0)
    return x


def scan_out(x, s, P, layer, scan):
    g = math.isqrt(P)
    x = x.clone()
    if scan in ("bidirectional", "multidirectional") and layer % 2 == 1:
        x[s : s + P] = x[s : s + P].flip(0)
    if scan == "multidirectional" and layer % 4 in (2, 3):
        x[s : s + P] = x[s : s + P].view(g, g, -1).transpose(0, 1).reshape(P, -1)
    return x


def forward_last(sd, x, img_start, P, scan):
    """Logits of the last row after a full forward of embedding rows x [T, C]."""
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    x = layer_norm(x, sd, "blocks.0.ln0")
    for i in range(n_layer):
        p = f"blocks.{i}."
        if img_start is not None:
            x = scan_in(x, img_start, P, i, scan)
        x = x + time_mix(layer_norm(x, sd, f"{p}ln1"), sd, f"{p}att.")
        x = x + channel_mix(layer_norm(x, sd, f"{p}ln2"), sd, f"{p}ffn.")
        if img_start is not None:
            x = scan_out(x, img_start, P, i, scan)
    return layer_norm(x[-1], sd, "ln_out") @ sd["head.weight"].T


def generate(sd, before, image_rows, after, P, scan, max_new_tokens, stop=STOP_TOKEN):
    """Greedy tokens, re-running the whole sequence for every new token (the reference protocol)."""
    emb = sd["emb.weight"]
    out = []
    for _ in range(max_new_tokens):
        rows = [emb[before], image_rows, emb[after + out]]
        logits = forward_last(sd, torch.cat(rows), len(before), P, scan)
        token = int(logits.argmax())
        if token == stop:
            break
        out.append(token)
    return out
