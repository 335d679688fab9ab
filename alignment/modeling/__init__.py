"""Loading models, the stage-output contract, attention for packed rows, generation and reward scoring."""
