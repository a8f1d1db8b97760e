"""Fallback inference in the Open Inference Protocol (V2): the inference service (the tensor
codec is the shared core's :mod:`edgefleet.v2`, which the edge agent's local endpoint uses too)."""

from server.inference.service import InferenceService, Target

__all__ = ["InferenceService", "Target"]
