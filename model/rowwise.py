"""Matrix products whose result for a row never depends on the other rows of the call.

Why: a BLAS picks its kernel and blocking by the shape of the call, so row i of x @ W can differ in the last
bits between a call with 1 row and one with 8, enough to flip a greedy near-tie between batch sizes. Bitwise
batch invariance on CPU therefore needs products whose per-row reduction order is a function of the row
alone. On CUDA the products are single calls (cuBLAS also picks kernels by shape: there the invariance is not
bitwise, see the README).

What the BLAS does (torch 2.14 with MKL 2024.2, AVX-512, fp32; every row compared bitwise with the same row
computed in calls of other row counts and at other positions):
- x [M, K] @ W [K, N] with W row-major (the "NN" layout): every row count M from 2 to 128, at any position of
  the row in the call, gives the same bits, at 1 and at 2 threads, for every weight shape from 32 x 768 to the
  7B model's 14336 x 4096. M = 1 differs (MKL's GEMV kernel). Larger calls switch kernels again: at 2 threads
  a 2048 x 2048 product changes from M = 257 on, 2688 x 768 from 384, 7168 x 2048 from 1024; at 1 thread
  2048 x 2048 already differs between M = 2 and M = 256. torch.bmm behaves alike ({1}, {2..128}).
- x @ W.T with W [N, K] row-major (F.linear's layout) has one more class: M = 2..15 differ from M >= 16.
- Splitting the columns (N) into blocks keeps a row's bits in a GEMM, but not always in a GEMV, and costs a
  call per block; a batched GEMV (bmm over an expanded weight) matches the plain GEMV for some shapes only;
  MKL's packed GEMM (`_mkl_linear`) has more classes and a 1.3-5x larger weight copy; oneDNN's fp32 linear has
  the {1} / {2..640} classes of the NN layout. oneDNN bf16 (AVX512-BF16 here) was 2.5x faster than the fp32
  GEMV on a 1-row pass over the `small` weights (on a loaded machine), but it is not the fp32 model that the
  fidelity tests check.
- The thread count changes the bits for K >= 2048 (1 vs 2 threads): invariance holds at a fixed
  torch.get_num_threads(), as within one process.
- Speed (2 pinned cores of an idle Xeon, one pass over the 0.57 GB `small` weights): a 1-row GEMV 26 ms, a
  2-row GEMM 44 ms (MKL packs the weight for a GEMM); 8 rows 52 ms in one GEMM, 141 ms one row at a time.

Design (measured with `bench peer`, `bench batching` and the microbenchmarks in kernels/rowmm/): on CPU the
weights are kept in the NN layout (each [N, K] parameter stored as the transpose of a row-major [K, N] matrix, as
the official `rwkv` package converts them; `column_major_`). How a product groups its rows depends on what the
rows are (`rows`):
- a prefill over packed sequences (a `Packing`): a sequence longer than TILE rows is a call of its own, whose
  shape depends on that sequence alone, so MKL runs one full-size GEMM (640 rows at 313 GFLOP/s on 2 cores,
  where calls of 128 rows lost 14-19%); runs of shorter sequences share calls of 2 to TILE rows (a lone row
  padded to 2), the row counts that give every row the same bits.
- rows of different sequences (a decode step, the rows whose logits are read: `rows=True` or a decode
  `Packing`): the row kernel (kernels/rowmm), whose per-row sum order is fixed by construction, so it needs
  no measured class. Its C build reads the weights once per call for any row count. With the weights streamed
  from memory, as in decoding (2 cores, 2048 x 7168): 1 row 1.87 ms against MKL's GEMV 1.94 ms; 8 rows 3.1 ms
  against 10.6 ms for eight 1-row GEMVs (the fallback, kernels/rowmm/reference.py) and 3.8 ms for one GEMM.
- anything else (`rows=False`, e.g. the image projector): calls of 2 to TILE rows. Weights in another layout keep
  fixed zero-padded tiles of PAD_TILE rows, exact for any BLAS that is deterministic for a fixed shape.
`invariance_check` re-runs the row-count measurement on the machine at hand; the tests run it for the model's
shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from visualrwkv_eval.kernels.rowmm import cpu as rowmm_cpu
from visualrwkv_eval.kernels.rowmm import row_kernel, rowmm_torch

from .packing import Packing

TILE = 128  # most rows per BLAS call: every count in 2..TILE gives the same bits (see above)
MIN_ROWS = 2  # a 1-row call takes the GEMV kernel, whose bits differ: pad to 2
PAD_TILE = 16  # fixed tile for weights not in the NN layout


def _row_major(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1 and t.stride(-2) == t.shape[-1]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, rows - x.shape[-2]))


def _padded_tiles(fn: Callable[..., torch.Tensor], x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """fn over fixed tiles of PAD_TILE rows, the last one zero-padded: exact for any layout."""
    n = x.shape[-2]
    padded = _pad_rows(x, n + -n % PAD_TILE)
    return torch.cat([fn(tile, other) for tile in padded.split(PAD_TILE, dim=-2)], dim=-2)[..., :n, :]


def _tiles(fn: Callable[..., torch.Tensor], x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """fn over calls of MIN_ROWS..TILE rows (balanced, so that no call has 1 row unless x has)."""
    n = x.shape[-2]
    if n < MIN_ROWS:
        return fn(_pad_rows(x, MIN_ROWS), other)[..., :n, :]
    if n <= TILE:
        return fn(x, other)
    tiles = x.tensor_split(-(-n // TILE), dim=-2)
    if x.dim() > 2:
        return torch.cat([fn(tile, other) for tile in tiles], dim=-2)
    out, start = x.new_empty(n, other.shape[-1]), 0
    for tile in tiles:  # straight into the rows of the result: no concatenation
        fn(tile, other, out=out[start : start + tile.shape[0]])
        start += tile.shape[0]
    return out


def _alone(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Every row through the process's row kernel (kernels/rowmm): x [n, K] @ other [K, N], or a batch of products
    [G, n, K] @ [G, K, N]. Tensors the C kernel does not take (not fp32) go to the reference, so a given weight
    always gets the same kernel and a row's bits never depend on the batch."""
    kernel = row_kernel()
    if kernel is not rowmm_torch and not rowmm_cpu.supports(x, other):
        kernel = rowmm_torch
    return kernel(x, other)


def _by_sequence(fn: Callable[..., torch.Tensor], x: torch.Tensor, other: torch.Tensor, lengths: list[int]):
    """Each sequence longer than TILE rows in a call of its own, runs of shorter ones in shared tiles."""
    out = x.new_empty(*x.shape[:-1], other.shape[-1])
    start = run = 0  # run: first row of the current run of short sequences
    for n in [*lengths, None]:
        if n is not None and n <= TILE:
            start += n
            continue
        if start > run:
            out[..., run:start, :] = _tiles(fn, x[..., run:start, :], other)
        if n is not None:
            fn(x[..., start : start + n, :], other, out=out[..., start : start + n, :])
            start += n
        run = start
    return out


def _rowwise(fn: Callable[..., torch.Tensor], x: torch.Tensor, other: torch.Tensor, rows: Packing | bool):
    if x.device.type != "cpu":
        return fn(x, other)
    alone = rows is True or (isinstance(rows, Packing) and rows.decode)
    if alone:
        return _alone(x, other)
    if not _row_major(other):
        return _padded_tiles(fn, x, other)
    if isinstance(rows, Packing):
        return _by_sequence(fn, x, other, rows.lengths)
    return _tiles(fn, x, other)


def matmul(x: torch.Tensor, weight_t: torch.Tensor, rows: Packing | bool = False) -> torch.Tensor:
    """x [..., K] @ weight_t [K, N] -> [..., N]; every leading index is a row. `rows` says what the rows are
    (see the module docstring): a Packing (its sequences), True (rows of different sequences, each alone) or
    False (rows that may share calls)."""
    if x.dim() == 2:
        return _rowwise(torch.mm, x, weight_t, rows)
    flat = x.reshape(-1, x.shape[-1])
    return _rowwise(torch.mm, flat, weight_t, rows).view(*x.shape[:-1], weight_t.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, rows: Packing | bool = False) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T -> [..., N]; fast on CPU when `weight` is column-major (`column_major_`)."""
    return matmul(x, weight.t(), rows)


def bmm(x: torch.Tensor, other: torch.Tensor, rows: Packing | bool = False) -> torch.Tensor:
    """x [G, n, K] @ other [G, K, N] -> [G, n, N]; `rows` as in `matmul`, for the n rows."""
    return _rowwise(torch.bmm, x, other, rows)


@torch.no_grad()
def column_major_(weights: Iterable[torch.Tensor]) -> None:
    """Store each [N, K] CPU weight as the transpose of a row-major [K, N] matrix (values unchanged); the
    copy is made in the weight's own mode (an inference tensor stays one, a normal tensor stays normal)."""
    for w in weights:
        if w.device.type == "cpu" and w.is_contiguous() and w.shape[0] > 1:
            with torch.inference_mode(w.is_inference()):
                w.data = w.data.t().contiguous().t()


def invariance_check(k: int, n: int, rows: int = TILE + 70, seed: int = 0) -> list[str]:
    """Every row of every call `matmul` makes, for x [m, k] and a [k, n] weight with m in 1..rows, against
    the same row alone: the list of mismatches (empty when rows never depend on each other)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(k, n, generator=gen) / k**0.5
    x = torch.randn(rows, k, generator=gen)
    alone = torch.cat([matmul(x[i : i + 1], w) for i in range(rows)])
    bad = []
    for m in range(2, rows + 1):
        for off in {0, rows - m}:
            if not torch.equal(matmul(x[off : off + m], w), alone[off : off + m]):
                bad.append(f"{m} rows at offset {off}")
    return bad
