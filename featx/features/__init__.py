"""Images to features: backbones and their runtimes, variants (augmented, 10-crop),
planning, the extraction runner (local and Ray) and the scikit-learn transformer.
"""
