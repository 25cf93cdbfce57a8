"""lightning_mix.averaging"""
