"""R-LLM bench: does a frozen LLM layer, inserted with residuals into a ViT, help on MedMNIST?"""

__version__ = "0.1.0"
