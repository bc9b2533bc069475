"""Measure other libraries' generation loops on greenprof's meter.

* :mod:`greenprof.integrations.transformers`: ``EnergyStreamer``, a streamer for Hugging Face
  ``model.generate(..., streamer=...)`` that marks prefill and every generated token.

Nothing here is imported by ``import greenprof``; each module imports its library lazily.
"""
