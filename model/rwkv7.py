"""RWKV-7 "Goose" (x070) language model over packed sequences (arXiv 2503.14456), as VisualRWKV-7 runs it
(github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/src/model.py, RWKV_Tmix_x070 / RWKV_CMix_x070 / Block)
and as the official `rwkv` pip package (0.8.32, RWKV_x070) computes it.

Like model/rwkv6.py, every block works on packed rows [T_total, C] holding B sequences one after another
(`Packing`), each sequence with its own recurrent state; a decode step is the same code with one row per
sequence. What RWKV-7 adds between layers is the value residual: layer 0's value of each row (`v_first`) is
carried to every later layer of the same row, which mixes it into its own value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import HEAD_SIZE_DIVISOR, X070_UNUSED_KEYS, RWKV7Config
from .language_model import RWKVLanguageModel
from .packing import Carry, Packing, token_shift
from .rowwise import linear, matmul
from .rwkv6 import WKV, RecurrentState

LERPS = ("r", "w", "k", "v", "a", "g")  # token-shift mixes of the time-mix inputs, in this order
DECAY_OFFSET = 0.5  # w = -softplus(-z) - 0.5 bounds the decay exp(-exp(w)) to (exp(-exp(-0.5)), 1) ~ (0.545, 1)


class TimeMix7(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        C, A, H, N = cfg.n_embd, cfg.dim_att, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N
        for name in LERPS:
            setattr(self, f"x_{name}", nn.Parameter(torch.zeros(1, 1, C)))
        loras = {"w": cfg.d_decay, "a": cfg.d_aaa, "v": cfg.d_mv}
        if layer_id == 0:
            del loras["v"]  # layer 0's value is v_first itself
        for name, rank in loras.items():
            setattr(self, f"{name}0", nn.Parameter(torch.zeros(1, 1, A)))
            setattr(self, f"{name}1", nn.Parameter(torch.zeros(C, rank)))
            setattr(self, f"{name}2", nn.Parameter(torch.zeros(rank, A)))
        self.g1, self.g2 = nn.Parameter(torch.zeros(C, cfg.d_gate)), nn.Parameter(torch.zeros(cfg.d_gate, A))
        self.k_k, self.k_a = nn.Parameter(torch.zeros(1, 1, A)), nn.Parameter(torch.zeros(1, 1, A))
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=1e-5 * HEAD_SIZE_DIVISOR**2)  # 64e-5, as the reference

    def lerps(self, x: torch.Tensor, xx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x + (x_prev - x) * x_? for r, w, k, v, a, g, as one broadcast op (same values as six)."""
        mix = torch.cat([getattr(self, f"x_{name}") for name in LERPS])  # [6, 1, C]
        return (x + xx * mix).unbind(0)

    def lora(self, x: torch.Tensor, name: str, rows: Packing, inner: Callable | None = None) -> torch.Tensor:
        """(x @ ?1) @ ?2, with `inner` applied between the two factors."""
        h = matmul(x, getattr(self, f"{name}1"), rows)
        return matmul(h if inner is None else inner(h), getattr(self, f"{name}2"), rows)

    def forward(
        self,
        x: torch.Tensor,
        v_first: torch.Tensor | None,
        shift: torch.Tensor,
        wkv: torch.Tensor,
        pack: Packing,
        kernel: WKV,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, C] (ln1 output), v_first [T, A] (None in layer 0) -> (out [T, C], v_first [T, A]); updates
        `shift` [B, C] and `wkv` [B, H, N, N] in place. `kernel`: the (prefill, decode) WKV7 pair (kernels.get),
        which takes r, w, k, v, a, b [T, H, N] and does S <- S diag(exp(-exp(w))) + (S a) b^T + v k^T, y = S r."""
        T, H, N = x.shape[0], self.n_head, self.head_size
        xr, xw, xk, xv, xa, xg = self.lerps(x, token_shift(x, shift, pack) - x)
        shift.copy_(pack.last_rows(x))
        r, k, v = (linear(t, m.weight, pack) for t, m in ((xr, self.receptance), (xk, self.key), (xv, self.value)))
        # raw decay, bounded above by -0.5: the kernel takes d = exp(-exp(w))
        w = -F.softplus(-(self.w0.view(-1) + self.lora(xw, "w", pack, torch.tanh))) - DECAY_OFFSET
        if v_first is None:
            v_first = v
        else:  # value residual: mix in layer 0's value of the same row
            v = v + (v_first - v) * torch.sigmoid(self.v0.view(-1) + self.lora(xv, "v", pack))
        a = torch.sigmoid(self.a0.view(-1) + self.lora(xa, "a", pack))  # in-context learning rate
        g = self.lora(xg, "g", pack, torch.sigmoid)
        kappa = F.normalize((k * self.k_k.view(-1)).view(T, H, N), dim=-1, p=2.0)  # removal key, unit per head
        k = k * (1 + (a - 1) * self.k_a.view(-1))  # the key actually written (kappa is from k before this)
        heads = (T, H, N)
        args = (r.view(heads), w.view(heads), k.view(heads), v.view(heads), -kappa, kappa * a.view(heads), wkv)
        y = kernel[1](*args) if pack.decode else kernel[0](*args, pack.cu_seqlens)
        y = self.ln_x(y.reshape(T, H * N))
        bonus = (r * k * self.r_k.view(-1)).view(heads).sum(-1, keepdim=True) * v.view(heads)
        return linear((y + bonus.view(T, H * N)) * g, self.output.weight, pack), v_first


class ChannelMix7(nn.Module):
    def __init__(self, cfg: RWKV7Config):
        super().__init__()
        C = cfg.n_embd
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, pack: Packing) -> torch.Tensor:
        """x [T, C] (ln2 output) -> [T, C]: W_v relu(W_k x_k)^2, no receptance gate; updates `shift` in place."""
        xx = token_shift(x, shift, pack) - x
        shift.copy_(pack.last_rows(x))
        k = torch.relu(linear(x + xx * self.x_k.view(-1), self.key.weight, pack)) ** 2
        return linear(k, self.value.weight, pack)


class Block7(nn.Module):
    def __init__(self, cfg: RWKV7Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self.ln0 = nn.LayerNorm(C) if layer_id == 0 else None  # every row of block 0, image rows included
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att, self.ffn = TimeMix7(cfg, layer_id), ChannelMix7(cfg)

    def forward(
        self,
        x: torch.Tensor,
        v_first: torch.Tensor | None,
        state: RecurrentState,
        layer: int,
        pack: Packing,
        kernel: WKV,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [T, C] and the carried v_first [T, A] (None before layer 0) -> (rows, v_first)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        out, v_first = self.att(self.ln1(x), v_first, state.att_shift[layer], state.wkv[layer], pack, kernel)
        x = x + out
        return x + self.ffn(self.ln2(x), state.ffn_shift[layer], pack), v_first


def _drop_unused_keys(module, state_dict, prefix, *_) -> None:
    for key in X070_UNUSED_KEYS:
        state_dict.pop(prefix + key, None)


class RWKV7(RWKVLanguageModel):
    wkv_op = "wkv7"  # the kernels registry's operation (kernels.get)
    # the same state layout as RWKV-6's: token-shift inputs of both mixers, the fp32 WKV state S[h, i, j] with
    # i = value index, j = key index
    state_type = RecurrentState

    def __init__(self, cfg: RWKV7Config):
        super().__init__(cfg, Block7)
        # layer 0's value-residual LoRA, present unused in newer RWKV-LM files: dropped by every load_state_dict
        self.register_load_state_dict_pre_hook(_drop_unused_keys)

    @staticmethod
    def from_weights(weights: dict[str, torch.Tensor], config: RWKV7Config | None = None) -> RWKV7:
        """The model over existing tensors (assigned, not copied: a memory-mapped file stays mapped). Keys as
        RWKV-LM saves them, or a VisualRWKV-7 state dict, whose `rwkv.*` keys are taken. Layer 0's value-residual
        LoRA, which newer RWKV-LM files carry unused, is dropped (`load_state_dict` does, see __init__)."""
        if "rwkv.emb.weight" in weights:
            weights = {k[len("rwkv.") :]: v for k, v in weights.items() if k.startswith("rwkv.")}
        config = config or RWKV7Config.from_weights(weights)
        with torch.device("meta"):
            model = RWKV7(config)
        model.load_state_dict(weights, strict=True, assign=True)
        return model.eval()

    def block(
        self, layer: int, x: torch.Tensor, state: RecurrentState, pack: Packing, carry: Carry = ()
    ) -> tuple[torch.Tensor, Carry]:
        """Rows [T, C] through layer `layer` -> (rows, carry). The carry is (v_first,): layer 0's value of each
        row [T, A], which every later layer mixes into its own (empty before layer 0); a scan that reorders
        the rows reorders it with them."""
        x, v_first = self.blocks[layer](x, carry[0] if carry else None, state, layer, pack, self.wkv_kernel)
        return x, (v_first,)
