"""nanogpt4: the GPT-4 technical report's system, end to end, at laptop scale."""
__version__ = "0.1.0"
