"""Image bytes to digits."""
