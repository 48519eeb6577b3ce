"""rtmedia: a real-time streaming media server for AI in front of NVIDIA Triton."""

__version__ = "0.1.0"
