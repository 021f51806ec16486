"""LungCAM explanations beyond the served Grad-CAM: library CAM methods, contrastive maps,
ROAD faithfulness and the Explain tab's views."""
