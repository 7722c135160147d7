"""VisualRWKV-Eval: VisualRWKV-6 for lmms-eval. The model lives in visualrwkv_eval.model, the WKV kernels in
visualrwkv_eval.kernels, task YAMLs and data generators in visualrwkv_eval.tasks; this package holds the
lmms-eval adapter and the command line."""

__version__ = "0.1.0"
