"""LungCAM explanations: class activation maps and how they are drawn."""
