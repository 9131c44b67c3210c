"""nanoLlama: the from-scratch byte-level Llama of the controlled memory study (plain PyTorch)."""
