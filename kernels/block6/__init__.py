"""One RWKV-6 block of a CPU decode step in C (block6_decode.c, launched by cpu.py); its reference is the PyTorch
path of model/rwkv6.py."""
