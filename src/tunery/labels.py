"""Label conventions shared by the data pipeline, the losses and the training stages."""

# A label that is not learned (prompt, padding, an example's first token in a flat
# batch). -100 is what PyTorch's cross-entropy and transformers ignore by default.
IGNORE_INDEX = -100
