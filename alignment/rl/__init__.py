"""Pure RL and ranking math: tensors in, tensors out, each formula tested against hand computation."""
