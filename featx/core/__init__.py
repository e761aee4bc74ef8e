"""What every stage stands on: errors, messages and progress, settings, the cache's
names, files written atomically, hashes and versions.
"""
