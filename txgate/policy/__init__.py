"""
Policy: deciding what happens to a transaction at each checkpoint.
"""
