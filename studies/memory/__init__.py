"""The memory study (the paper's Section 5): the smallest nanoLlama that recalls its facts, in-tool vs in-weight."""
