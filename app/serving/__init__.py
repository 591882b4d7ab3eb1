"""Model lifecycle and inference."""
