"""Training code (segmenter for now; the classifier's training moves here too)."""
