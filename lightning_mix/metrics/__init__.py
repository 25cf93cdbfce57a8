"""lightning_mix.metrics"""
