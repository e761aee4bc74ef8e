"""Looking into data and models: audit, explain, visualize, layer sweep.
"""
