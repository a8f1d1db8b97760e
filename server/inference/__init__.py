"""Fallback inference in the Open Inference Protocol (V2): tensor codec and inference service."""

from server.inference.codec import decode_input, encode_outputs
from server.inference.service import InferenceService, Target

__all__ = ["InferenceService", "Target", "decode_input", "encode_outputs"]
