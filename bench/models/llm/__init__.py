"""Layers cut out of a pretrained LLM (the booster's FL): source, checkpoint reading, and the block itself."""

from bench.models.llm.block import LLMBlock, block_key, check_block, load_llm_block
from bench.models.families import SUPPORTED
from bench.models.llm.source import MINILM, llm_hidden_size, minilm_dir

__all__ = ["LLMBlock", "MINILM", "SUPPORTED", "block_key", "check_block", "llm_hidden_size", "load_llm_block",
           "minilm_dir"]
