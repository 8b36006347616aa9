"""babygpt: a small character-level GPT trained with PyTorch Lightning on classical Chinese ci."""

__version__ = "0.1.0"
