"""lightning_mix.callbacks"""
