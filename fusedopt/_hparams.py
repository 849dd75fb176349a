"""Columns of the per-device hyper-parameter table (mirror of csrc/hparams.h; keep in step).

Note [lr lives on the device]: every (optimizer, device) pair owns one float64 tensor of shape
[num_groups, NUM_COLS]. Kernels read row ``group_index[t]`` of it, so one launch serves every
group, a scheduler writes a whole column with one copy, and a captured CUDA graph sees the new
values on replay. ``param_group['lr']`` stays the readable, writable face of it.
"""
LR, WEIGHT_DECAY, BETA1, BETA2, EPS = range(5)
NUM_COLS = 5
MOMENTUM, DAMPENING = BETA1, BETA2   # SGD reuses the Adam beta columns
