"""RWKV-6 "Finch" (x060) language model over packed sequences (arXiv 2404.05892), faithful to RWKV-LM
(github.com/BlinkDL/RWKV-LM, RWKV-v5/src/model.py: RWKV_Tmix_x060, RWKV_CMix_x060) and to the `rwkv` pip
package's RWKV_x060 inference.

All blocks work on a packed batch: rows [T_total, C] holding B sequences one after another, described by
`Packing`. Every sequence carries its own recurrent state (`RecurrentState`), so packing never changes a
sequence's result. A decode step is the same code with every sequence one row long.

On the CPU with the WKV backend "c" (kernel=auto, float32), a decode step runs each block in one C call
(kernels/block6: the same computation, whose reference is the PyTorch code below), since there the dispatch of
~40 small ops per layer cost more than their arithmetic.

The language-model interface that VisualRWKV drives (model/language_model.py): `embed_tokens`, `new_state`,
`use_backend`, `cpu_layout_`, `block` (one layer, with a per-row carry between layers: none for RWKV-6) and
`logits`. The image scan is not done here: VisualRWKV reorders the rows around `block` (model/scan.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from visualrwkv_eval.kernels.block6 import cpu as block6_cpu

from .config import HEAD_SIZE_DIVISOR, RWKV6Config
from .language_model import RWKVLanguageModel
from .packing import Carry, Packing, token_shift
from .rowwise import bmm, linear, matmul

WKV = tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]  # (prefill, decode), kernels.get


@dataclass
class RecurrentState:
    """Per layer and sequence: token-shift inputs of both mixers (LayerNorm-ed) and the fp32 WKV state."""

    att_shift: torch.Tensor  # [L, B, C]  ln1 output of the last token
    wkv: torch.Tensor  # [L, B, H, N, N] fp32
    ffn_shift: torch.Tensor  # [L, B, C]  ln2 output of the last token

    @staticmethod
    def zeros(cfg: RWKV6Config, batch: int, dtype: torch.dtype, device: torch.device) -> RecurrentState:
        L, C, H, N = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size
        return RecurrentState(
            torch.zeros(L, batch, C, dtype=dtype, device=device),
            torch.zeros(L, batch, H, N, N, dtype=torch.float32, device=device),
            torch.zeros(L, batch, C, dtype=dtype, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[1]

    @property
    def bytes_per_sequence(self) -> int:
        """Memory the state of one sequence takes (also on a meta-device state)."""
        return sum(t[:, :1].nbytes for t in (self.att_shift, self.wkv, self.ffn_shift))

    def select(self, index: torch.Tensor | list[int]) -> RecurrentState:
        """The states of the sequences at `index`, as a new (copied) state."""
        index = torch.as_tensor(index, device=self.wkv.device)
        return RecurrentState(self.att_shift[:, index], self.wkv[:, index], self.ffn_shift[:, index])

    @staticmethod
    def cat(states: list[RecurrentState]) -> RecurrentState:
        return RecurrentState(
            *(torch.cat([getattr(s, f) for s in states], 1) for f in ("att_shift", "wkv", "ffn_shift"))
        )


class TimeMix(nn.Module):
    def __init__(self, cfg: RWKV6Config):
        super().__init__()
        C, A, H, N = cfg.n_embd, cfg.dim_att, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N
        for name in ("x", "w", "k", "v", "r", "g"):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.zeros(1, 1, C)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * cfg.d_mix))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, cfg.d_mix, C))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, A))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, cfg.d_decay))
        self.time_decay_w2 = nn.Parameter(torch.zeros(cfg.d_decay, A))
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))  # the bonus u, used raw
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.gate = nn.Linear(C, A, bias=False)
        self.output = nn.Linear(A, C, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=1e-5 * HEAD_SIZE_DIVISOR**2)

    def ddlerp(self, x: torch.Tensor, xx: torch.Tensor, rows: Packing) -> tuple[torch.Tensor, ...]:
        """Data-dependent lerp between each row and its predecessor: inputs for w, k, v, r, g."""
        T = x.shape[0]
        xxx = x + xx * self.time_maa_x.view(-1)
        m = torch.tanh(matmul(xxx, self.time_maa_w1, rows)).view(T, 5, -1).transpose(0, 1)  # [5, T, D_mix]
        m = bmm(m, self.time_maa_w2, rows)  # [5, T, C], in the order w, k, v, r, g
        maa = torch.cat((self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g))
        # x + xx * (maa + m), the five lerps as three ops, in place in m: no [5, T, C] temporaries (each a fresh
        # mmap and its page faults on CPU); the operands commute exactly, so the bits are the same
        return m.add_(maa).mul_(xx).add_(x).unbind(0)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, wkv: torch.Tensor, pack: Packing, kernel: WKV):
        """x [T, C] (ln1 output) -> [T, C]; updates `shift` [B, C] and `wkv` [B, H, N, N] in place. `kernel`:
        the (prefill, decode) WKV6 implementations (kernels.get)."""
        T, H, N = x.shape[0], self.n_head, self.head_size
        xw, xk, xv, xr, xg = self.ddlerp(x, token_shift(x, shift, pack) - x, pack)
        shift.copy_(pack.last_rows(x))
        r, k = linear(xr, self.receptance.weight, pack), linear(xk, self.key.weight, pack)
        v, g = linear(xv, self.value.weight, pack), F.silu(linear(xg, self.gate.weight, pack))
        # log-log decay, formed in the model dtype as the reference does; the kernel takes exp(-exp(w))
        lora = matmul(torch.tanh(matmul(xw, self.time_decay_w1, pack)), self.time_decay_w2, pack)
        w = self.time_decay.view(-1) + lora
        heads = (T, H, N)
        args = (r.view(heads), k.view(heads), v.view(heads), w.view(heads), self.time_faaaa, wkv)
        y = kernel[1](*args) if pack.decode else kernel[0](*args, pack.cu_seqlens)
        return linear(self.ln_x(y.view(T, H * N)) * g, self.output.weight, pack)


class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKV6Config):
        super().__init__()
        C, F_ = cfg.n_embd, cfg.dim_ffn
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, F_, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(F_, C, bias=False)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, pack: Packing) -> torch.Tensor:
        """x [T, C] (ln2 output) -> [T, C]; updates `shift` [B, C] in place."""
        xx = token_shift(x, shift, pack) - x
        shift.copy_(pack.last_rows(x))
        k = torch.relu(linear(x + xx * self.time_maa_k.view(-1), self.key.weight, pack)) ** 2
        r = torch.sigmoid(linear(x + xx * self.time_maa_r.view(-1), self.receptance.weight, pack))
        return r * linear(k, self.value.weight, pack)


class Block(nn.Module):
    def __init__(self, cfg: RWKV6Config, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self.ln0 = nn.LayerNorm(C) if layer_id == 0 else None  # applied to the whole sequence, image included
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att, self.ffn = TimeMix(cfg), ChannelMix(cfg)

    def forward(self, x: torch.Tensor, state: RecurrentState, layer: int, pack: Packing, kernel: WKV):
        if self.ln0 is not None:
            x = self.ln0(x)
        x = x + self.att(self.ln1(x), state.att_shift[layer], state.wkv[layer], pack, kernel)
        return x + self.ffn(self.ln2(x), state.ffn_shift[layer], pack)


class RWKV6(RWKVLanguageModel):
    wkv_op = "wkv6"  # the kernels registry's operation (kernels.get)
    state_type = RecurrentState

    def __init__(self, cfg: RWKV6Config):
        super().__init__(cfg, Block)
        # layer -> (its parameters, their storage pointers, the C decode's arguments or None); a load that may
        # replace the parameter objects starts it afresh
        self._fused: dict[int, tuple] = {}
        self.register_load_state_dict_post_hook(lambda module, _: module._fused.clear())

    def block(
        self, layer: int, x: torch.Tensor, state: RecurrentState, pack: Packing, carry: Carry = ()
    ) -> tuple[torch.Tensor, Carry]:
        """Rows [T, C] through layer `layer` -> (rows, carry). The carry holds per-row tensors [T, ...] that a
        layer hands to the next (RWKV-6: none); a scan reorders them with the rows."""
        block = self.blocks[layer]
        if pack.decode and self.backend == "c" and (fused := self._fused_block(layer)) is not None:
            x = block.ln0(x) if block.ln0 is not None else x.clone()  # the kernel updates x in place
            state_rows = (state.att_shift[layer], state.wkv[layer], state.ffn_shift[layer])
            if all(t.is_contiguous() for t in (x, *state_rows)):
                block6_cpu.block6_decode_c(x, *state_rows, *fused)
                return x, carry
        return block(x, state, layer, pack, self.wkv_kernel), carry

    def _fused_block(self, layer: int) -> tuple | None:
        """(weights, dims, eps, group-norm eps) for the C decode of block `layer` (kernels/block6), or None where
        it cannot serve (not float32 on the CPU, another layout, no build). The parameters are looked up once
        (a lookup by name costs ~5 us, too much per layer and step); their layout is checked again whenever their
        storage moves."""
        cached = self._fused.get(layer)
        if cached is None:
            block = self.blocks[layer]
            cached = ([block.get_parameter(name) for name in block6_cpu.WEIGHTS], None, None)
        weights, key = cached[0], tuple(w.data_ptr() for w in cached[0])
        if cached[1] != key:
            block, cfg = self.blocks[layer], self.config
            ok = block6_cpu.usable(weights) and block6_cpu.build_error() is None
            dims = (cfg.n_embd, cfg.dim_att, cfg.dim_ffn, cfg.n_head, cfg.head_size, cfg.d_mix, cfg.d_decay)
            fused = (weights, dims, block.ln1.eps, block.att.ln_x.eps) if ok else None
            self._fused[layer] = cached = (weights, key, fused)
        return cached[2]
