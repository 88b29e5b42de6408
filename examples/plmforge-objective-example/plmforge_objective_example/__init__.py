"""An example plmforge objective plugin: span-shuffle detection."""

from plmforge_objective_example.span_shuffle import SpanShuffleConfig, SpanShuffleDetection

__all__ = ["SpanShuffleConfig", "SpanShuffleDetection"]
