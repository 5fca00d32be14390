"""dmfnet: encrypted and malicious traffic classification with the deep multimodal fusion model DMF."""

__version__ = "0.1.0"
