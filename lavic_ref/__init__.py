"""LaViC reference model on LLaVA-NeXT: describe -> distill -> embed -> fine-tune -> recommend.

Heavy libraries are imported inside the modules that need them; importing this package is cheap.
"""

DEFAULT_BASE = "llava-hf/llava-v1.6-mistral-7b-hf"
