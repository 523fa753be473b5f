"""The node: where components answer, how to restart them, and how to tell they are healthy."""
