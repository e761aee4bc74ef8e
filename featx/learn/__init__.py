"""Features to classifiers: learners, classification runs, ensembles of pipelines,
fine-tuning for comparison, saved models, prediction and tracking.
"""
