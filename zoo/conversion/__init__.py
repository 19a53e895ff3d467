"""The conversion side: the only part of `zoo` that imports torch (through `torch_first`)."""
