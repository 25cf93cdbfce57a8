"""lightning_mix.mixins"""
