"""Pure RL and ranking math: tensors in, tensors out, each formula tested against hand computation.

Conventions of every module here:

- ``B`` is the batch (rollouts), ``T`` the response length, ``V`` the vocabulary.
- ``response_mask`` / ``mask`` is ``(B, T)``, bool or 0/1, and marks the *valid* response tokens: every token up to and
  including the first EOS (see :func:`~alignment.rl.logprobs.first_eos_mask`). Masked positions (padding, post-EOS)
  never enter a loss or a statistic: values there are replaced with 0 through ``torch.where`` *before* any arithmetic,
  so even ``inf``/``nan`` at a masked position changes neither the result nor the gradient.
- Everything is computed in fp32: bf16 log-probabilities lose the small differences that ratios and KL are made of.
"""
