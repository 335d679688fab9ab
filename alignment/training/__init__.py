"""The supervised training loop shared by SFT and reward, and its batching helpers."""
