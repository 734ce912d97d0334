"""The science: the paper's model, data, sparsity, circuits and metrics as plain PyTorch functions.

Nothing here imports Flower or any other layer of the package: every function is
testable on tensors alone.
"""
