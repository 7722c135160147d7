"""CUDA-graph replay of a step whose shapes repeat (a decode step at a fixed batch size), as an option: one graph
launch replaces the step's many kernel launches and their host overhead. The WKV decode launch does no
host-device copy and no synchronisation, so the model's whole decode step can be captured."""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedStep:
    """`fn(*inputs) -> Tensor` captured once and replayed: calls copy their arguments into the captured input
    buffers, replay, and return the captured output tensor (overwritten by the next call: clone it to keep it).

    `fn` must have run eagerly once on inputs of these shapes first (kernels compiled, memory pools warm); capture
    itself runs nothing, so state that `fn` updates in place changes only at replays.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], *example_inputs: torch.Tensor):
        self.inputs = tuple(t.clone() for t in example_inputs)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for static, t in zip(self.inputs, inputs, strict=True):
            static.copy_(t)
        self.graph.replay()
        return self.output
