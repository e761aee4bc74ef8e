"""Images in: datasets (folders or manifests), the image reader, augmentation, the demo set.
"""
