"""Transport-independent real-time loops and the Triton client they talk through."""
